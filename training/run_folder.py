"""
A run's folder, out_dir: train.py makes it the run's for the run's whole life (a lock; a new run never silently
replaces another), starts its log, and ends by printing where the run is and the commands that go on from it.
"""

import json
import os
import shlex
import tempfile
from contextlib import contextmanager

from configurator import ConfigError, parse
from data.files import write_atomically
from training.plot import read_log

try:
    import fcntl
except ImportError:  # Windows: runs go unlocked, so two runs in one out_dir are not caught there
    fcntl = None


@contextmanager
def claimed(s, rank=0):
    """Make out_dir this run's for its whole life, before any work: it must be writable, no other live run may use
    it (a lock the OS drops when the process dies, however it dies), and a new run must not silently replace the
    run it holds. Only rank 0 writes to out_dir; an evaluation-only run writes nothing. A run that fails before it
    writes anything leaves no folder it made behind."""
    if s["eval_only"] or rank != 0:
        yield
        return
    out_dir = s["out_dir"]
    lock_path = os.path.join(out_dir, ".lock")
    made, lock_made = not os.path.exists(out_dir), not os.path.exists(lock_path)
    try:
        os.makedirs(out_dir, exist_ok=True)
        before = set(os.listdir(out_dir))
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"probe")
        lock = open(lock_path, "a")
    except OSError as e:
        raise ConfigError(f"cannot write to out_dir {out_dir} ({e.strerror}): choose another --out_dir or make it "
                          f"writable") from None
    try:
        with lock:
            hold(lock, out_dir)
            refuse_another_run(s)
            remove_unfinished_writes(out_dir)
            yield
    except BaseException:
        if lock_made and set(os.listdir(out_dir)) == before | {".lock"}:  # nothing written: leave it as it was
            os.remove(lock_path)
            if made:
                os.rmdir(out_dir)
        raise


def hold(lock, out_dir):
    if fcntl is None:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"another run is using out_dir {out_dir} (it holds {lock.name}): wait for it to finish, "
                          f"or choose another --out_dir") from None
    except OSError:  # a filesystem without locks (some network mounts): the run goes unlocked
        pass


def refuse_another_run(s):
    out_dir = s["out_dir"]
    log = os.path.join(out_dir, "log.jsonl")
    holds_a_run = os.path.exists(os.path.join(out_dir, "ckpt.pt")) or (os.path.isfile(log) and
                                                                      os.path.getsize(log) > 0)
    if holds_a_run and s["init_from"] != "resume" and not s["overwrite"]:
        raise ConfigError(f"out_dir {out_dir} already holds a run (ckpt.pt, log.jsonl): continue it with "
                          f"--init_from=resume, choose another --out_dir, or pass --overwrite to replace it")


def remove_unfinished_writes(out_dir):
    """The lock is ours, so these are a killed run's temporary files."""
    for name in os.listdir(out_dir):
        if name.startswith(("ckpt.pt.", "log.jsonl.")) and name.endswith(".tmp"):
            os.remove(os.path.join(out_dir, name))


def start_log(out_dir, resuming, iter_num, last_record):
    """A new run starts an empty log, without the checkpoint of the run it replaces. A resumed run keeps the
    records before its checkpoint plus the checkpoint's own: a kill after the checkpoint landed and before its
    line did, or an older version's log that ran ahead of its checkpoint, leaves no evaluation missing or
    logged twice."""
    records = []
    if resuming:
        records = [r for r in read_log(out_dir) if r["iter"] <= iter_num]
        if last_record is not None:
            records = [r for r in records if r["iter"] < iter_num] + [last_record]
    elif os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        os.remove(os.path.join(out_dir, "ckpt.pt"))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    write_atomically(os.path.join(out_dir, "log.jsonl"), lambda f: f.write(lines.encode()))


def append_log(out_dir, record):
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def interrupted(s, defaults):
    """What a run stopped by Ctrl-C says: the checkpoint it leaves and the command that resumes it."""
    path = os.path.join(s["out_dir"], "ckpt.pt")
    if s["eval_only"] or not os.path.exists(path):
        return "interrupted: nothing was saved; run the same command again to start over"
    return (f"interrupted: the last checkpoint is {path}; resume it with: "
            f"{resume_command(s, defaults, int(os.environ.get('WORLD_SIZE', 1)))}")


def resume_command(s, defaults, world):
    launcher = f"torchrun --standalone --nproc_per_node={world}" if world > 1 else "python"
    resume = [f"--{k}={setting_text(v)}" for k, v in changed_settings(s, defaults).items()
              if k not in ("init_from", "overwrite")]
    return f"{launcher} train.py " + " ".join(map(shlex.quote, resume + ["--init_from=resume"]))


def how_to_continue(s, defaults, iter_num, world):
    """Where the checkpoint is, and the commands that sample from it and resume it."""
    out_dir = s["out_dir"]
    return (f"checkpoint: {os.path.join(out_dir, 'ckpt.pt')} (iteration {iter_num}), curves: "
            f"{os.path.join(out_dir, 'loss.png')}\n"
            f"sample from it: python sample.py {shlex.quote(f'--out_dir={out_dir}')}\n"
            f"resume it (raise --max_iters to train further): {resume_command(s, defaults, world)}")


def changed_settings(s, defaults):
    """The settings of a run that differ from the defaults: what the command line changed."""
    return {k: v for k, v in s.items() if k in defaults and v != defaults[k]}


def run_title(s, defaults):
    """The settings a run changed, out_dir aside: the title of its plot."""
    return " ".join(f"{k}={v}" for k, v in changed_settings(s, defaults).items() if k != "out_dir")


def setting_text(value):
    """value as --key=value text that the configurator reads back as the same value."""
    return str(value) if parse(str(value)) == value and type(parse(str(value))) is type(value) else repr(value)
