"""Nothing a user does loses a run: out_dir is never silently replaced or shared, a full disk keeps the last
checkpoint, a kill at any moment resumes to the same weights and a log with each evaluation once, and bad input
stops with one line naming the problem and the fix."""

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import sample
import train
from configurator import ConfigError
from test_train import TINY, comparable, run
from training import checkpoint as ckpt, devices
from training.plot import read_log

ROOT = os.path.dirname(os.path.abspath(train.__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread in every process, so their floats agree bit for bit


def files_of(out_dir):
    return {name: (out_dir / name).read_bytes() for name in ("ckpt.pt", "log.jsonl")}


# --- 1. a new run never silently replaces the run in its out_dir ------------------------------------------------
def test_a_new_run_refuses_an_out_dir_that_holds_a_run(corpus, tmp_path):
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    before = files_of(tmp_path)
    with pytest.raises(ConfigError, match=f"{tmp_path} already holds a run.*--init_from=resume.*--out_dir.*"
                                          f"--overwrite"):
        run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    with pytest.raises(ConfigError, match="already holds a run"):  # tuning a checkpoint into its own folder
        run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2", f"--init_from={tmp_path / 'ckpt.pt'}")
    assert files_of(tmp_path) == before


def test_overwrite_replaces_the_run_and_its_whole_log(corpus, tmp_path):
    run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2")
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2", "--learning_rate=3e-3", "--overwrite")
    assert [r["iter"] for r in read_log(tmp_path)] == [0, 2]
    checkpoint = ckpt.load(str(tmp_path / "ckpt.pt"))
    assert checkpoint["iter_num"] == 2 and checkpoint["config"]["learning_rate"] == 3e-3
    # Tuning a checkpoint into its own folder replaces it only after reading it.
    run(corpus, tmp_path, "--max_iters=0", f"--init_from={tmp_path / 'ckpt.pt'}", "--overwrite")
    assert [r["val_loss"] for r in read_log(tmp_path)] == [checkpoint["log_record"]["val_loss"]]


# --- 2. one run at a time in an out_dir -------------------------------------------------------------------------
def test_a_second_run_in_a_locked_out_dir_is_refused(corpus, tmp_path):
    fcntl = pytest.importorskip("fcntl")  # without it (Windows) runs go unlocked
    with open(tmp_path / ".lock", "a") as other_run:  # what a live run in this folder holds
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=f"another run is using out_dir {tmp_path}"):
            run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    assert not (tmp_path / "log.jsonl").exists()
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")  # the lock went with the other run
    run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2", "--init_from=resume")  # and with the first of ours


# --- 3. an unwritable out_dir or a full disk ---------------------------------------------------------------------
def test_an_unwritable_out_dir_is_refused_before_any_work(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "Trainer", None)  # nothing may be built for a run that cannot save
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="cannot write to out_dir .*a_file/run"):
        run(corpus, tmp_path / "a_file" / "run", "--max_iters=2")


def fail_the_second_save(monkeypatch, error, torch_wraps_it):
    """Patch torch.save so that the run's second checkpoint writes half its bytes, then raises `error`, or, where
    torch_wraps_it, the RuntimeError torch.save raises with `error` as its context (what its zip writer does when the
    file under it fails, seen here for a full disk and for Ctrl-C). Returns the iterations saved."""
    real_save, saves = torch.save, []

    def save(state, f):
        saves.append(state["iter_num"])
        if len(saves) < 2:
            return real_save(state, f)
        f.write(b"half a checkpoint")
        try:
            raise error
        except BaseException:
            if torch_wraps_it:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            raise

    monkeypatch.setattr(torch, "save", save)
    return saves


@pytest.mark.parametrize("torch_wraps_it", [False, True])
def test_a_save_that_fails_half_way_keeps_the_previous_checkpoint_and_stops(corpus, tmp_path, monkeypatch,
                                                                           torch_wraps_it):
    saves = fail_the_second_save(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), torch_wraps_it)
    with pytest.raises(OSError, match=f"^cannot write the checkpoint to {tmp_path / 'ckpt.pt'}: no space left on "
                                      f"device; the previous checkpoint is kept"):
        run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2")
    assert saves == [0, 2]
    assert ckpt.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 0
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt.pt", "log.jsonl", "loss.png"]  # no temporary file
    assert [r["iter"] for r in read_log(tmp_path)] == [0]


# --- 4. the log holds each evaluation once, however the run was killed -------------------------------------------
class Killed(BaseException):
    """A kill -9 stand-in: nothing in train.py catches it, and nothing after it runs."""


@pytest.mark.parametrize("module, killed_in", [(ckpt, "save"), (train, "plot_log")])
def test_a_kill_between_checkpoint_and_log_line_leaves_each_evaluation_logged_once(corpus, tmp_path, monkeypatch,
                                                                                    module, killed_in):
    args = ["--eval_interval=2", "--max_iters=8"]
    run(corpus, tmp_path / "straight", *args)
    real, calls = getattr(module, killed_in), []

    def die_at_iteration_4(*a, **k):
        calls.append(1)
        result = real(*a, **k)
        if len(calls) == 3:  # the writes of iteration 4
            raise Killed
        return result

    monkeypatch.setattr(module, killed_in, die_at_iteration_4)
    with pytest.raises(Killed):
        run(corpus, tmp_path / "killed", *args)
    monkeypatch.undo()
    run(corpus, tmp_path / "killed", *args, "--init_from=resume")
    straight, resumed = (read_log(tmp_path / d) for d in ("straight", "killed"))
    assert [r["iter"] for r in resumed] == [0, 2, 4, 6, 8]
    assert [comparable(r) for r in resumed] == [comparable(r) for r in straight]


def test_sigkill_at_random_moments_resumes_to_the_weights_of_an_uninterrupted_run(corpus, tmp_path):
    args = [*TINY, f"--dataset={corpus}", "--dropout=0.1", "--max_iters=12", "--eval_interval=2",
            "--gradient_accumulation_steps=2"]

    def start(out_dir, *extra):  # stderr to a file: a full pipe would block the process
        with open(tmp_path / "stderr.txt", "w") as stderr:
            return subprocess.Popen([sys.executable, "train.py", *args, f"--out_dir={out_dir}", *extra], cwd=ROOT,
                                    env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)

    def logged(out_dir):
        path = out_dir / "log.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    straight = start(tmp_path / "straight")
    assert straight.wait() == 0, (tmp_path / "stderr.txt").read_text()
    out, rng, interrupted = tmp_path / "killed", random.Random(0), []
    for _ in range(3):
        proc = start(out, *(["--init_from=resume"] if (out / "ckpt.pt").exists() else []))
        # Kill at a random moment after this process has made progress, so that the runs together finish.
        seen = logged(out)
        while proc.poll() is None and logged(out) <= seen:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        interrupted.append(proc.poll() is None)
        proc.kill()
        proc.wait()
    proc = start(out, "--init_from=resume")
    assert proc.wait() == 0, (tmp_path / "stderr.txt").read_text()
    assert any(interrupted)
    a, b = (ckpt.load(str(tmp_path / d / "ckpt.pt")) for d in ("straight", "killed"))
    assert a["iter_num"] == b["iter_num"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [comparable(r) for r in read_log(out)] == [comparable(r) for r in read_log(tmp_path /
                                                                                                   "straight")]
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]  # killed writes were cleaned up


# --- 8. bad input: one line naming the problem and the fix -------------------------------------------------------
@pytest.mark.parametrize("source, message", [
    ("n_layer = 2\nn_head = (2\n", r"bad.py, line 2: '\(' was never closed"),
    ("n_layer = 2\nn_head = 2 / 0\n", "bad.py, line 2: ZeroDivisionError: division by zero"),
])
def test_a_broken_config_file_is_named_with_its_line(tmp_path, source, message):
    (tmp_path / "bad.py").write_text(source)
    with pytest.raises(ConfigError, match=message):
        train.settings_from([str(tmp_path / "bad.py")])


def test_errors_reach_the_user_as_one_line_without_a_traceback(tmp_path):
    (tmp_path / "bad.py").write_text("n_layer = 2\nn_head = (2\n")
    result = subprocess.run([sys.executable, "train.py", str(tmp_path / "bad.py")], cwd=ROOT, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"error: config file {tmp_path / 'bad.py'}, line 2: '(' was never closed: fix the file " \
                            f"(plain Python assignments)\n"


@pytest.mark.parametrize("args, message", [
    (["--beta1=1.5"], r"beta1 must be in \[0, 1\)"),
    (["--warmup_iters=-5"], "warmup_iters must be at least 0"),
    (["--min_lr=1e-2", "--learning_rate=1e-3"], "min_lr .* must not exceed learning_rate"),
])
def test_impossible_optimizer_settings_are_refused(args, message):
    with pytest.raises(ConfigError, match=message):
        train.settings_from([train.PLAIN_CONFIG, *args])


def test_min_lr_above_learning_rate_is_fine_without_the_decay_that_reads_it():
    train.settings_from([train.PLAIN_CONFIG, "--min_lr=1e-2", "--learning_rate=1e-3", "--decay_lr=False"])


def test_a_device_that_is_not_there_is_refused_by_name(corpus, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown device 'bogus': use auto, cpu"):
        run(corpus, tmp_path, "--device=bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' is not on this machine.*--device=cpu"):
        devices.pick_device("cuda")
    assert devices.pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.pick_device("cuda", local_rank=1) == "cuda:1"  # one GPU per DDP process, not all on the first
    with pytest.raises(ValueError, match="device 'cuda:2' is not on this machine \\(2 cuda device"):
        devices.pick_device("cuda:2")


@pytest.mark.parametrize("change", ["--batch_size=8", "--gradient_accumulation_steps=2", "--seed=7"])
def test_resuming_with_other_batches_or_seed_is_refused(corpus, tmp_path, change):
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    key = change[2:].split("=")[0]
    with pytest.raises(ConfigError, match=f"cannot resume.*{key}: checkpoint"):
        run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2", "--init_from=resume", change)


def test_sample_says_when_it_cuts_a_long_prompt(corpus, tmp_path, capsys):
    run(corpus, tmp_path, "--max_iters=0")
    sample.main([f"--out_dir={tmp_path}", "--start=" + "the lazy dog " * 3, "--num_samples=1",
                 "--max_new_tokens=2", "--device=cpu"])
    assert "the prompt has 39 tokens, more than the model reads (block_size 16); it is cut to its last 15" in \
        capsys.readouterr().err


# --- 9. stopping by hand, and files from someone else ------------------------------------------------------------
def test_ctrl_c_says_in_one_line_where_the_checkpoint_is_and_how_to_resume_it(corpus, tmp_path):
    out_dir = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        # Ctrl-C as at a terminal: a shell that ran these tests in the background ignores SIGINT, and so would the
        # child, which Python then gives no KeyboardInterrupt
        proc = subprocess.Popen([sys.executable, "train.py", *TINY, f"--dataset={corpus}", f"--out_dir={out_dir}",
                                 "--max_iters=100000", "--eval_interval=5"], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None and not ((out_dir / "log.jsonl").exists() and
                                           (out_dir / "log.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    printed = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in printed
    last = printed.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith(f"interrupted: the last checkpoint is {out_dir / 'ckpt.pt'}; resume it with: python "
                           f"train.py ")
    resume = last.split("resume it with: python train.py ", 1)[1].split()
    train.main([*resume, "--max_iters=12"])
    assert read_log(out_dir)[-1]["iter"] == 12


def test_a_crafted_checkpoint_runs_nothing_when_opened(tmp_path):
    marker = tmp_path / "marker"

    class Payload:  # what a pickle can make torch.load call: here, a shell command that writes the marker
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": {}, "config": {}, "payload": Payload()}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"holds a Python object \(posix.system\).*it is not loaded"):
        sample.main([f"--out_dir={tmp_path}"])
    assert not marker.exists()


def test_ctrl_c_while_a_checkpoint_is_written_is_ctrl_c_and_keeps_the_previous_one(corpus, tmp_path, monkeypatch):
    fail_the_second_save(monkeypatch, KeyboardInterrupt(), torch_wraps_it=True)
    with pytest.raises(KeyboardInterrupt, match=f"interrupted: the last checkpoint is {tmp_path / 'ckpt.pt'}"):
        run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2")
    assert ckpt.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 0
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt.pt", "log.jsonl", "loss.png"]  # no temporary file
