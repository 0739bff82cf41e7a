"""
The plain training process against nanoGPT's, whole process against whole process, on this machine's CPU:

    python -m tools.bench --nanogpt=PATH    # PATH: an unmodified checkout of github.com/karpathy/nanoGPT

nanoGPT runs from a temporary copy of the checkout's scripts and config/, so the checkout is left as it was. Its
data/shakespeare_char/ (train.bin, val.bin, meta.pkl in nanoGPT's format) is written from this repository's own
tiny Shakespeare, whose split and ids are those of nanoGPT's prepare.py. Both processes train the same model on the
same schedule with the same evaluations (COMMON): nanoGPT with config/train_shakespeare_char.py, this repository
with config/plain.py. They run in alternating rounds; each is timed from its start to its exit, and its peak memory
is its processes' summed high-water resident set (VmHWM, sampled from /proc). Threads follow the environment
(OMP_NUM_THREADS), the same for both.
"""

import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from data.dataset import load_meta
from data.prepare import ensure_prepared
from tools.bench_scale import process_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CPU settings, which both scripts take as --key=value. nanoGPT's config file sets the rest the same as
# this repository's defaults (learning rate 1e-3, warmup 100, min_lr 1e-4, beta2 0.99); eval_interval 250 is its.
COMMON = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
          "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=600", "--lr_decay_iters=600",
          "--dropout=0.0", "--eval_interval=250"]


def write_shakespeare_char(folder):
    """nanoGPT's data/shakespeare_char/ in folder: the same uint16 ids in train.bin and val.bin (no separator
    tokens: each split is one document) and meta.pkl with vocab_size, itos and stoi."""
    data_dir = ensure_prepared("shakespeare_char")
    meta = load_meta(data_dir)
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "val"):
        shutil.copyfile(os.path.join(data_dir, f"{split}.bin"), os.path.join(folder, f"{split}.bin"))
    stoi = meta["stoi"]
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": meta["vocab_size"], "itos": {i: ch for ch, i in stoi.items()}, "stoi": stoi}, f)


def copy_checkout(checkout, work):
    """nanoGPT's scripts and config files in work, where its relative paths (data/, out-*/) then point."""
    if not os.path.isfile(os.path.join(checkout, "train.py")):
        raise ValueError(f"{checkout} has no train.py: --nanogpt takes the path of a nanoGPT checkout")
    for name in os.listdir(checkout):
        if name.endswith(".py"):
            shutil.copyfile(os.path.join(checkout, name), os.path.join(work, name))
    shutil.copytree(os.path.join(checkout, "config"), os.path.join(work, "config"))


def run_measured(argv, cwd):
    """(seconds, peak resident bytes, stdout) of a process from its start to its exit; a failure stops the
    benchmark with the end of its output. The peak is the sum over the process and its children of each one's
    high-water resident set (VmHWM), read from /proc every 20 ms. Not the rusage of wait4: a child's ru_maxrss
    starts from the resident set of the parent it was forked from, this benchmark's own."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peaks = {}
        while process.poll() is None:
            for pid in process_tree(process.pid):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        peaks[pid] = int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024
                except (OSError, StopIteration):  # the process ended between listing and reading, or is a zombie
                    continue
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
    if process.returncode:
        raise OSError(f"{' '.join(argv)} failed in {cwd}:\n{text[-2000:]}")
    return seconds, sum(peaks.values()), text


def compare(arms, rounds):
    """{name: (median seconds, median peak bytes, last stdout)} of arms (name -> (argv, cwd)), run in alternating
    rounds, so that a passing load on the machine hits every arm alike."""
    runs = {name: [] for name in arms}
    for _ in range(rounds):
        for name, (argv, cwd) in arms.items():
            runs[name].append(run_measured(argv, cwd))
    return {name: (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results),
                   results[-1][2]) for name, results in runs.items()}


def last_val_losses(nanogpt_out, log_path):
    """{iteration: (nanoGPT's val loss, this repository's)} at the evaluations both logged."""
    theirs = {int(it): float(v) for it, v in re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)",
                                                       nanogpt_out)}
    with open(log_path) as f:
        ours = {r["iter"]: r["val_loss"] for r in map(json.loads, f)}
    return {it: (theirs[it], ours[it]) for it in sorted(theirs.keys() & ours.keys())}


def main(checkout, rounds):
    with tempfile.TemporaryDirectory() as work:
        copy_checkout(checkout, work)
        write_shakespeare_char(os.path.join(work, "data", "shakespeare_char"))
        out_dir = os.path.join(work, "out-plain")
        arms = {"nanoGPT": ([sys.executable, "train.py", "config/train_shakespeare_char.py", *COMMON], work),
                "train.py": ([sys.executable, "train.py", "config/plain.py", *COMMON, f"--out_dir={out_dir}",
                              "--overwrite=True"], ROOT)}
        results = compare(arms, rounds)
        losses = last_val_losses(results["nanoGPT"][2], os.path.join(out_dir, "log.jsonl"))
    (theirs, their_peak, _), (ours, our_peak, _) = results["nanoGPT"], results["train.py"]
    print(f"whole training process against nanoGPT's (4 layers, 128 wide, batch 12 x 64, 600 iterations, CPU, "
          f"float32, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; median of {rounds} alternating "
          f"rounds)")
    print("| process | wall s | peak MiB |\n|---|---|---|")
    for name, (seconds, peak, _) in results.items():
        print(f"| {name} | {seconds:.1f} | {peak / 2**20:.0f} |")
    print(f"train.py / nanoGPT: wall x{ours / theirs:.3f} (target: at most 0.95), peak memory "
          f"x{our_peak / their_peak:.3f} (target: at most 1)")
    print("val loss (nanoGPT's, this repository's; their evaluation batches differ): "
          + ", ".join(f"iteration {it}: {a:.4f}, {b:.4f}" for it, (a, b) in losses.items()))
    return 0
