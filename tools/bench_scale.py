"""
The numpy-only half of `python -m tools.bench --ngram_scale`: synthetic corpora with GPT-2's vocabulary, the n-gram
build that runs in a fresh process, and the measurement of a fresh process's memory from /proc.

The build's peak memory is what the benchmark reports, so the process that builds imports this file and nothing
heavier: numpy and data/ngrams.py take about 25 MB, where importing tools/bench.py (torch) would add about 190 MB.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from data import ngrams

ROOT = Path(__file__).resolve().parents[1]  # the repository
SCALE_DIR = ROOT / "data" / "_bench"  # git-ignored
GPT2_EOT = 50256
NGRAM_R, NGRAM_SEED = 8, 0  # of every n-gram build the benchmarks time


def build_targets(folder, tokens, n, boundary_token, memory_mb, workers):
    """The compact n-gram targets of tokens in folder (data/ngrams.py), built unless already there: the one call
    of the build in the benchmarks."""
    return ngrams.load_or_build(folder, tokens, n, NGRAM_R, NGRAM_SEED, boundary_token, memory_mb, workers)


def synthetic_corpus(n_tokens, chunk=1 << 22):
    """SCALE_DIR/zipf_<n>/train.bin: Zipf(1.1) ids over GPT-2's vocabulary, documents of about 1000 tokens ended by
    EOT, written chunk by chunk (never whole in memory), once."""
    folder = SCALE_DIR / f"zipf_{n_tokens}"
    path = folder / "train.bin"
    if path.is_file() and path.stat().st_size == 2 * n_tokens:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_tokens)
    with open(path, "wb") as f:
        for start in range(0, n_tokens, chunk):
            size = min(chunk, n_tokens - start)
            tokens = (rng.zipf(1.1, size) - 1) % GPT2_EOT
            tokens[rng.random(size) < 1e-3] = GPT2_EOT
            f.write(tokens.astype(np.uint16).tobytes())
    return folder


def build_at_scale(folder, memory_mb, workers):
    """Build the n = 3 targets of folder/train.bin afresh: seconds, contexts and partitions. Run by run_measured.
    The build runs once and is timed here, not by bench.time_arms: at 200M tokens it takes minutes, and this
    process must not import torch."""
    for built in Path(folder).glob("ngram_n3*"):
        shutil.rmtree(built)
    tokens = np.memmap(Path(folder) / "train.bin", np.uint16, mode="r")
    t0 = time.perf_counter()
    arrays = build_targets(folder, tokens, 3, GPT2_EOT, memory_mb, workers)
    return dict(seconds=time.perf_counter() - t0, contexts=len(arrays["context_keys"]),
                partitions=ngrams.plan(len(tokens) - 1, memory_mb, workers, NGRAM_R)[0])


def run_measured(function, *args):
    """Call function ('module.name', a module-level function returning a JSON-able dict) with args in a fresh
    Python; its result, and the peaks of its processes' summed PSS and anonymous memory (bytes), sampled every
    50 ms. PSS counts a page shared by the processes (the build's workers) once."""
    module = function.rsplit(".", 1)[0]
    call = f"import json, {module}; print(json.dumps({function}(*{list(args)!r})))"
    process = subprocess.Popen([sys.executable, "-c", call], cwd=ROOT, stdout=subprocess.PIPE,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    peaks = {"pss": 0, "anonymous": 0}

    def sample():
        while process.poll() is None:
            used = {"pss": 0, "anonymous": 0}
            for pid in process_tree(process.pid):
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        fields = dict(line.split()[:2] for line in f if line[0].isupper())
                except (OSError, ValueError):  # the process ended between listing and reading
                    continue
                used["pss"] += int(fields.get("Pss:", 0)) * 1024
                used["anonymous"] += int(fields.get("Anonymous:", 0)) * 1024
            peaks.update({k: max(peaks[k], used[k]) for k in peaks})
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{function}{tuple(args)} failed in its process with exit code {process.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), peaks


def process_tree(pid):
    """pid and its descendants (Linux /proc)."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            with open(f"/proc/{tree[i]}/task/{tree[i]}/children") as f:
                tree += [int(child) for child in f.read().split()]
        except OSError:
            pass
        i += 1
    return tree
