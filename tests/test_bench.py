"""tools/bench.py's parts that run on a CPU: its one-line errors, the alternating timing helper, the fresh-process build
of the scale benchmark, and the GPU check's refusal without CUDA, its table, the checks that can run on a CPU, and that
each check can fail."""

import functools
import os
import pickle
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from data.write import write_dataset
from model import CausalSelfAttention, KVCache
from tools import bench, bench_gpu, bench_nanogpt, bench_scale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine with one


def run_bench(*args):
    return subprocess.run([sys.executable, "-m", "tools.bench", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True)


def test_bench_gpu_without_cuda_says_so_in_one_line_and_succeeds():
    result = run_bench("--gpu")
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["no CUDA GPU on this machine: `python -m tools.bench --gpu` checks the CUDA "
                                          "paths and needs one; nothing run"]


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
    result, peaks = bench_scale.run_measured("tools.bench_scale.build_at_scale", str(tmp_path), 500, 1)
    assert result["partitions"] == 1 and 0 < result["contexts"] <= len(tokens)
    assert (tmp_path / "ngram_n3_r8_seed0" / "top_ids.npy").is_file()
    assert 0 < peaks["pss"] < 150 * 2**20  # importing torch alone takes about 210 MB


# --- the GPU check's table, and the checks that also run on a CPU ---------------------------------------------
def sentences(n, seed):
    """Documents of sentences: the planner's labels need sentences and more recurring words than LSA's dimensions."""
    rng = random.Random(seed)
    words = [a + b + c for a in "bdfklmst" for b in "aeiou" for c in "nprt"]
    return [" ".join(" ".join(rng.choices(words, k=rng.randint(3, 7))).capitalize() + "."
                     for _ in range(rng.randint(3, 6))) for _ in range(n)]


@pytest.fixture
def tiny(tmp_path_factory, tmp_path, monkeypatch):
    """bench_gpu at a tiny shape on a tiny corpus of sentences, writing into tmp_path."""
    corpus = tmp_path_factory.mktemp("sentences")
    write_dataset(corpus, {"train": sentences(80, 0), "val": sentences(10, 1)}, "char", "sentences", "the test")
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "GPT2_SHAPE", dict(n_layer=2, n_head=2, n_embd=16, block_size=16))
    monkeypatch.setattr(bench_gpu, "SMALL", ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=32",
                                             "--batch_size=4", "--eval_iters=2", "--ngram_n=3", "--ngram_r=4",
                                             "--plan_k=4", "--plan_context=3", "--warmup_iters=2",
                                             "--learning_rate=3e-3", f"--dataset={corpus}"])
    return corpus


def run_one(check, limit=60):
    return bench_gpu.run_checks([("check", check, limit)], "cpu")[0]


def test_every_check_gets_its_line_and_a_failing_one_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))

    def passes(device):
        print("the check's own output")
        return f"measured on {device}"

    def fails(device):
        raise RuntimeError("CUDA out of memory\nthe rest of a long message")

    def cannot_run(device):
        raise bench_gpu.NotRun("needs two GPUs")

    checks = [("first", passes, 60), ("breaks", fails, 60),
              ("missed aim", lambda d: bench_gpu.expect(False, "too slow"), 60), ("ddp", cannot_run, 60),
              ("slow", passes, 0), ("last", passes, 60)]
    assert bench_gpu.run_checks(checks, "cpu") == ["ok", "FAILED", "FAILED", "not run", "FAILED", "ok"]
    header, *lines = capsys.readouterr().out.splitlines()
    assert (tmp_path / "table.txt").read_text().splitlines() == [header, *lines]
    assert header.split() == ["check", "time", "what", "it", "measured", "result"]
    assert [line.split()[0] for line in lines] == ["first", "breaks", "missed", "ddp", "slow", "last"]
    assert lines[0].endswith("measured on cpu  ok") and lines[5].endswith("  ok")
    assert "RuntimeError: CUDA out of memory (log: " in lines[1] and lines[1].endswith("FAILED")
    assert "  too slow (log: " in lines[2] and lines[2].endswith("FAILED")
    assert lines[3].endswith("needs two GPUs  not run")
    assert lines[4].endswith("measured on cpu; over its 0 s limit  FAILED")
    assert "the check's own output" in (tmp_path / "first.log").read_text()
    assert "the rest of a long message" in (tmp_path / "breaks.log").read_text()  # the traceback


def test_once_the_budget_is_spent_the_remaining_checks_are_not_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    checks = [(name, lambda device: time.sleep(0.01) or "done", 60) for name in ("first", "second")]
    assert bench_gpu.run_checks(checks, "cpu", budget=0.005) == ["ok", "not run"]
    assert "the 0.005 s budget is spent  not run" in capsys.readouterr().out


def test_the_checks_that_need_no_gpu_pass_on_a_cpu_at_a_tiny_shape(tiny, capsys):
    # the time limits are the GPU's: a test is never timed, so each check runs without one
    checks = [(name, check, float("inf")) for name, check, _ in bench_gpu.CHECKS
              if check in (bench_gpu.check_attention, bench_gpu.check_float16, bench_gpu.check_resume,
                           bench_gpu.check_sampling)]
    assert len(checks) == 4
    assert bench_gpu.run_checks(checks, "cpu") == ["ok"] * 4, capsys.readouterr().out


def test_timed_steps_train_fresh_batches_at_the_scheduled_learning_rate(tiny, monkeypatch):
    trainer = bench_gpu.make_trainer("cpu", *bench_gpu.SMALL, "--warmup_iters=100", "--compile=False")
    seen, batch_at = [], trainer.batch_at

    def recording(split, ix):
        seen.append((tuple(ix.tolist()), trainer.optimizer.param_groups[0]["lr"]))
        return batch_at(split, ix)

    monkeypatch.setattr(trainer, "batch_at", recording)
    monkeypatch.setattr(bench, "time_arms", lambda arms, **timing: [arms["a"]() for _ in range(5)])
    bench_gpu.step_seconds({"a": trainer})
    assert len({batch for batch, _ in seen}) == 5
    assert [lr for _, lr in seen] == [trainer.lr_at(i) for i in range(5)] and seen[0][1] < seen[4][1]


@pytest.mark.parametrize("model", list(bench_gpu.SAMPLERS))
def test_the_sampling_check_fails_when_the_kv_cache_is_wrong(tiny, monkeypatch, capsys, model):
    monkeypatch.setattr(bench_gpu, "SAMPLERS", {model: bench_gpu.SAMPLERS[model]})
    monkeypatch.setattr(KVCache, "append", lambda self, layer, k, v: (k, v))  # forgets every earlier token
    assert run_one(bench_gpu.check_sampling) == "FAILED"
    assert f"{model}: with the KV cache the texts part from those without at token" in capsys.readouterr().out


def test_the_compile_check_passes_only_when_inductor_compiles_every_graph():
    linear = torch.nn.Linear(4, 4)
    assert bench_gpu.compiled(lambda: torch.compile(linear)(torch.ones(2, 4))).shape == (2, 4)
    with pytest.raises(bench_gpu.CheckFailed, match="Inductor compiled 0 of the 0 graph"):
        bench_gpu.compiled(lambda: linear(torch.ones(2, 4)))  # not compiled at all
    with pytest.raises(bench_gpu.CheckFailed, match="Inductor compiled 0 of the 1 graph"):
        bench_gpu.compiled(lambda: torch.compile(linear, backend="eager")(torch.ones(2, 4)))  # captured, run eagerly


def test_the_compile_check_fails_at_a_graph_break():
    def breaks(x):
        print("a graph break")
        return x + 1

    with pytest.raises(bench_gpu.CheckFailed, match="1 graph break"):
        bench_gpu.compiled(lambda: torch.compile(breaks)(torch.ones(2)))


def test_the_attention_check_fails_when_the_fused_kernel_does_not_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "GPT2_SHAPE", dict(n_layer=2, n_head=2, n_embd=16, block_size=16))
    with sdpa_kernel(SDPBackend.MATH):  # the flag still says flash; SDPA's math fallback runs instead
        assert run_one(bench_gpu.check_attention) == "FAILED"
    assert "flash=True ran no fused attention kernel" in capsys.readouterr().out


def test_the_attention_check_fails_when_the_readable_attention_computes_something_else(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(bench_gpu, "OUT", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "GPT2_SHAPE", dict(n_layer=2, n_head=2, n_embd=16, block_size=16))
    monkeypatch.setattr(CausalSelfAttention, "manual_attention", lambda self, q, k, v, causal: v)  # no attention
    assert run_one(bench_gpu.check_attention) == "FAILED"
    assert "the logits differ by" in capsys.readouterr().out


def test_the_main_job_tolerance_is_four_stored_seed_to_seed_sd():  # the main job: n-gram + planner
    loss, sd = bench_gpu.cpu_main_job_loss(1337)
    assert loss == pytest.approx(1.7184, abs=1e-4) and sd == pytest.approx(0.0058, abs=1e-4)


def test_prepare_builds_the_caches_and_lists_the_folders_to_copy(tiny, monkeypatch, capsys):
    monkeypatch.setattr(bench_gpu, "PREPARE", [bench_gpu.SMALL])
    assert bench_gpu.prepare() == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert any(line.split()[0] == os.path.relpath(tiny) for line in listed)
    assert any(name.startswith("ngram_n3_r4") for name in os.listdir(tiny))


# --- the whole process against nanoGPT's (--nanogpt) ------------------------------------------------------------
STAND_IN = """import sys, time
hold = bytearray(int(sys.argv[1]) * 2**20)  # resident: every page written
hold[::4096] = b"x" * len(hold[::4096])
time.sleep(float(sys.argv[2]))
print("step 250: train loss 2.5000, val loss 2.6000")
"""


def test_compare_alternates_the_processes_and_reports_median_wall_time_and_peak_memory(tmp_path):
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    order = tmp_path / "order"

    def arm(name, megabytes, seconds):  # appends its name when it starts, so the order of the runs shows
        return ([sys.executable, "-c", f"open({str(order)!r}, 'a').write({name!r}); import runpy, sys; "
                 f"sys.argv = ['stand_in.py', '{megabytes}', '{seconds}']; runpy.run_path('stand_in.py')"], tmp_path)

    # each holds its memory 0.2 s at least, so that the 20 ms sampling sees its peak on a loaded machine too
    results = bench_nanogpt.compare({"a": arm("a", 20, 0.2), "b": arm("b", 120, 0.7)}, rounds=3)
    assert order.read_text() == "ababab"
    (a_seconds, a_peak, a_out), (b_seconds, b_peak, _) = results["a"], results["b"]
    assert b_seconds - a_seconds > 0.4
    assert 90 * 2**20 < b_peak - a_peak < 110 * 2**20 and a_peak < 60 * 2**20  # one interpreter each, and their bytes
    assert bench_nanogpt.last_val_losses(a_out, write_log(tmp_path)) == {250: (2.6, 2.4)}


def write_log(folder):
    path = folder / "log.jsonl"
    path.write_text('{"iter": 0, "val_loss": 4.1}\n{"iter": 250, "val_loss": 2.4}\n')
    return path


def test_a_failing_process_stops_the_comparison_with_the_end_of_its_output(tmp_path):
    with pytest.raises(OSError, match="no such data"):
        bench_nanogpt.run_measured([sys.executable, "-c", "import sys; sys.exit('no such data')"], tmp_path)


def test_nanogpt_data_is_its_prepare_scripts_format(tmp_path, monkeypatch, corpus):
    monkeypatch.setattr(bench_nanogpt, "ensure_prepared", lambda name: corpus)
    bench_nanogpt.write_shakespeare_char(tmp_path)
    with open(tmp_path / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    text = "the quick brown fox jumps over the lazy dog. " * 200
    assert "".join(meta["itos"][int(i)] for i in train) == text[:7000]  # as nanoGPT's prepare.py encodes it
    assert meta["stoi"] == {ch: i for i, ch in enumerate(sorted(set(text)))} and meta["vocab_size"] == len(meta["stoi"])


def test_a_path_that_is_no_nanogpt_checkout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no train.py"):
        bench_nanogpt.copy_checkout(str(tmp_path), str(tmp_path / "work"))
