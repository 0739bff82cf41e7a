"""bench.py's parts that run on a CPU: its one-line errors, the alternating timing helper, the fresh-process build of
the scale benchmark, and the GPU check's refusal without CUDA, its table and the checks that can run on a CPU."""

import functools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import bench
import bench_gpu
import bench_scale
import train
from model import CausalSelfAttention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine with one


def run_bench(*args):
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


def test_bench_gpu_without_cuda_says_so_in_one_line_and_succeeds():
    result = run_bench("--gpu")
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["no CUDA GPU on this machine: `python bench.py --gpu` checks the CUDA paths "
                                          "and needs one; nothing run"]


@pytest.mark.parametrize("arg, message", [("--bogus", "error: expected --key=value, got '--bogus'"),
                                          ("--bogus=1", "error: unknown setting 'bogus'"),
                                          ("--steps=many", "error: setting 'steps' (from '--steps=many') must be of "
                                                           "type int")])
def test_a_bad_setting_is_one_error_line_and_a_failure(arg, message):
    result = run_bench(arg)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_time_arms_warms_up_then_alternates_the_arms_and_keeps_the_median_round(monkeypatch):
    now, calls = [0.0], []
    durations = {"a": iter([100, 1, 1, 4, 6, 2, 2]), "b": iter([100, 3, 3, 3, 3, 9, 9])}  # warm-up, then 3 rounds

    def arm(name):
        calls.append(name)
        now[0] += next(durations[name])

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    seconds = bench.time_arms({"a": functools.partial(arm, "a"), "b": functools.partial(arm, "b")}, repeats=2,
                              warmup=1, rounds=3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    # a's rounds: 1, 5 and 2 s per call; b's: 3, 3 and 9. Their minima would be 1 and 3, their means 2.67 and 5.
    assert seconds == {"a": 2, "b": 3}


def test_the_scale_build_runs_in_a_fresh_process_without_torch(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, 300_000).astype(np.uint16)
    tokens[::500] = bench_scale.GPT2_EOT
    tokens.tofile(tmp_path / "train.bin")
    result, peaks = bench_scale.run_measured("bench_scale.build_at_scale", str(tmp_path), 500, 1)
    assert result["partitions"] == 1 and 0 < result["contexts"] <= len(tokens)
    assert (tmp_path / "ngram_n3_r8_seed0" / "top_ids.npy").is_file()
    assert 0 < peaks["pss"] < 150 * 2**20  # importing torch alone takes about 210 MB


# --- the GPU check's table, and the checks that also run on a CPU ---------------------------------------------
def test_every_check_gets_its_line_and_a_failing_one_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))

    def passes(device):
        print("the check's own output")
        return f"measured on {device}"

    def fails(device):
        raise RuntimeError("CUDA out of memory\nthe rest of a long message")

    def cannot_run(device):
        raise bench_gpu.NotRun("needs two GPUs")

    checks = [("first", passes), ("breaks", fails), ("missed aim", lambda d: bench_gpu.expect(False, "too slow")),
              ("ddp", cannot_run), ("last", passes)]
    assert bench_gpu.run_checks(checks, "cpu") == ["ok", "FAILED", "FAILED", "not run", "ok"]
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["check", "time", "what", "it", "measured", "result"]
    assert [line.split()[0] for line in lines] == ["first", "breaks", "missed", "ddp", "last"]
    assert lines[0].endswith("measured on cpu  ok") and lines[4].endswith("  ok")
    assert "RuntimeError: CUDA out of memory (log: " in lines[1] and lines[1].endswith("FAILED")
    assert "  too slow (log: " in lines[2] and lines[2].endswith("FAILED")
    assert lines[3].endswith("needs two GPUs  not run")
    assert "the check's own output" in (tmp_path / "first.log").read_text()
    assert "the rest of a long message" in (tmp_path / "breaks.log").read_text()  # the traceback


def test_the_checks_that_need_no_gpu_pass_on_a_cpu_at_a_tiny_shape(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "GPT2_SHAPE", dict(n_layer=2, n_head=2, n_embd=16, block_size=16))
    monkeypatch.setattr(bench_gpu, "SMALL", [train.PLAIN_CONFIG, "--n_layer=2", "--n_head=2", "--n_embd=16",
                                             "--block_size=16", "--batch_size=4", "--eval_iters=2",
                                             f"--dataset={corpus}"])
    checks = [(name, check) for name, check in bench_gpu.CHECKS
              if check in (bench_gpu.check_attention, bench_gpu.check_float16, bench_gpu.check_resume,
                           bench_gpu.check_sampling)]
    assert len(checks) == 4
    assert bench_gpu.run_checks(checks, "cpu") == ["ok"] * 4, capsys.readouterr().out


def test_the_attention_check_fails_when_the_readable_attention_computes_something_else(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "GPT2_SHAPE", dict(n_layer=2, n_head=2, n_embd=16, block_size=16))
    monkeypatch.setattr(CausalSelfAttention, "manual_attention", lambda self, q, k, v, causal: v)  # no attention
    assert bench_gpu.run_checks([("attention", bench_gpu.check_attention)], "cpu") == ["FAILED"]
    assert "the logits differ by" in capsys.readouterr().out
