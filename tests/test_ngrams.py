"""Tests of the out-of-core n-gram build (data/ngrams.py): it must equal ngram.py's readable in-memory build
(ngram.build_targets) bit for bit, whatever the number of partitions, chunks and workers, and write the same files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ngram
from data import ngrams
from test_ngram import EOT, out_of_core, readable_targets, zipf_corpus

COUNT_FILES = ("row_context", "context_keys", "ptr", "next_ids", "counts")
TARGET_FILES = ("tail_ids", "top_ids", "top_probs", "tail_probs")


def partitioned_build(tmp_path, tokens, n, r, seed, boundary_token, partitions, chunk, workers=1):
    """Build with a forced number of partitions and chunk size; every file, loaded."""
    bits = max(1, int(tokens.max()).bit_length())
    plan = ngrams.Plan(partitions, chunk, workers, worker_pairs=-(-len(tokens) // partitions))
    ngrams.build(tokens, ngrams.Spec(n, r, seed, boundary_token, bits), plan, tmp_path / "counts",
                 tmp_path / "targets")
    return {path.stem: np.load(path) for path in sorted(tmp_path.glob("*/*.npy"))}


def gpt2_like_corpus(seed, size=20000):
    """Zipf tokens over 3000 ids with EOT = 2999 between documents: many contexts, most of them rare."""
    rng = np.random.default_rng(seed)
    tokens = np.minimum(rng.zipf(1.2, size) - 1, 2998)
    tokens[rng.random(size) < 0.01] = 2999
    return tokens.astype(np.uint16)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("boundary_token", [EOT, None])
def test_partitioned_build_equals_the_in_memory_build_bit_for_bit(tmp_path, n, boundary_token):
    for seed, (partitions, chunk) in enumerate([(1, 10**6), (9, 101), (60, 37)]):
        tokens = zipf_corpus(seed, size=3000)
        expected = ngram.build_targets(tokens, n, 3, seed, boundary_token)
        built = partitioned_build(tmp_path / str(seed), tokens, n, 3, seed, boundary_token, partitions, chunk)
        assert sorted(built) == sorted(expected) == sorted(COUNT_FILES + TARGET_FILES)
        for name, array in expected.items():
            assert built[name].dtype == array.dtype and np.array_equal(built[name], array), name


def test_many_partitions_of_a_large_vocabulary_in_worker_processes_equal_the_in_memory_build(tmp_path):
    tokens = gpt2_like_corpus(0)
    reference = ngram.build_targets(tokens, 3, 8, 1337, 2999)
    built = partitioned_build(tmp_path, tokens, 3, 8, 1337, 2999, partitions=25, chunk=4001, workers=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["counts", "targets"]  # the partitions are gone
    for name, array in reference.items():
        assert built[name].dtype == array.dtype and np.array_equal(built[name], array), name


def test_tail_occurrences_with_equal_random_keys_are_dealt_in_position_order_by_both_builds(tmp_path):
    """Seed 25's draws 456 and 1406 are equal: two tail occurrences of context 0 (next tokens 2 and 3) that the sort by
    random key leaves in position order, the stable sort both builds make; another order deals other tokens."""
    seed = 25
    draws = np.random.default_rng(seed).integers(0, 2**32, 3000, dtype=np.uint64)
    assert draws[456] == draws[1406]
    following = np.where(np.random.default_rng(0).random(3000) < 0.2, 2 + np.arange(3000) % 2, 1)  # S = {1}
    following[[456, 1406]] = 2, 3
    tokens = np.stack((np.zeros(3000, np.int64), following), axis=1).ravel()  # 0 x 0 x ...: context 0 draws 3000
    reference = ngram.build_targets(tokens, 2, 1, seed, None)
    built = partitioned_build(tmp_path, tokens, 2, 1, seed, None, partitions=1, chunk=10**6)
    for name, array in reference.items():
        assert np.array_equal(built[name], array), name


def test_a_chunk_without_any_context_and_empty_partitions_change_nothing(tmp_path):
    tokens = zipf_corpus(7, size=3000)
    tokens[1000:1400] = EOT  # the chunks of positions 1000..1399 have no in-document context
    reference = ngram.build_targets(tokens, 3, 2, 7, EOT)
    built = partitioned_build(tmp_path, tokens, 3, 2, 7, EOT, partitions=40, chunk=100, workers=2)
    for name, array in reference.items():
        assert np.array_equal(built[name], array), name


@pytest.mark.parametrize("size, high, distinct", [(0, 1, 1), (1, 1, 1), (5000, 2**40, 5000), (5000, 2**64 - 1, 5000),
                                                  (70000, 2**64 - 1, 70000), (20000, 3, 4), (70000, 2**64 - 1, 50)])
def test_sort_with_order_is_a_stable_argsort(size, high, distinct):
    """Key ranges that leave room for the index, that need buckets to free bits for it, and that fall back to
    np.argsort (70000 keys over all 64 bits); with many equal keys, whose order must be kept."""
    rng = np.random.default_rng(size)
    keys = rng.choice(rng.integers(0, high, distinct, dtype=np.uint64, endpoint=True), size)
    expected = np.argsort(keys, kind="stable")
    sorted_keys, order = ngrams.sort_with_order(keys.copy())
    assert np.array_equal(order, expected) and np.array_equal(sorted_keys, keys[expected])


def test_the_draws_of_any_stretch_continue_one_stream():
    stream = np.random.default_rng(1337).integers(0, 2**32, 10000, dtype=np.uint64).astype(np.uint32)
    for first, count in [(0, 10000), (1, 7), (2, 0), (4095, 3000), (9998, 2)]:
        assert np.array_equal(ngrams.draws(1337, first, count), stream[first:first + count])


def test_the_partition_lookup_agrees_with_a_search_of_the_splitters():
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 2**32, 100000, dtype=np.uint64)
    keys[:50000] >>= np.uint64(20)  # many keys in the first few top-16-bit buckets
    splitters = np.unique(np.concatenate([rng.choice(keys, 20), np.arange(5, 2**12, 2**9, dtype=np.uint64)]))
    found = ngrams.partition_of(keys, splitters, ngrams.partition_lookup(splitters, 32))
    assert np.array_equal(found, np.searchsorted(splitters, keys, side="right"))


def test_the_partitions_cut_the_contexts_into_ranges_of_about_equal_size():
    tokens = gpt2_like_corpus(1)
    bits = 12
    splitters = ngrams.partition_splitters(tokens, 3, bits, 2999, 8)
    has_context, context_key, _ = ngrams.chunk_keys(tokens, 0, len(tokens) - 1, 3, bits, 2999)
    sizes = np.bincount(np.searchsorted(splitters, context_key[has_context], side="right"))
    assert len(sizes) == 8 and sizes.max() < 1.5 * has_context.sum() / 8


def test_a_context_too_frequent_for_its_partition_is_reported_and_counted_exactly(tmp_path, capsys):
    tokens = np.where(np.random.default_rng(0).random(4000) < 0.9, 3, zipf_corpus(6, size=4000))  # mostly 3, 3, 3
    reference = ngram.build_targets(tokens, 3, 2, 0, EOT)
    built = partitioned_build(tmp_path, tokens, 3, 2, 0, EOT, partitions=10, chunk=500)
    assert "may use more memory than ngram_memory_mb" in capsys.readouterr().out
    for name, array in reference.items():
        assert np.array_equal(built[name], array), name
    partitioned_build(tmp_path / "balanced", zipf_corpus(6, size=4000), 3, 2, 0, EOT, partitions=10, chunk=500)
    assert "ngram_memory_mb" not in capsys.readouterr().out


def test_the_partition_count_grows_as_the_memory_bound_shrinks():
    positions = 9 * 10**9  # OpenWebText in GPT-2 tokens
    bounds = [700, 500, 400, 300, 250]  # below about 750 MB, memory sets the partitions' size
    partitions = [ngrams.plan(positions, memory_mb, 2, 8).partitions for memory_mb in bounds]
    assert partitions == sorted(partitions) and len(set(partitions)) == len(partitions)
    for memory_mb, count in zip(bounds, partitions):
        pairs_in_memory = 2 * -(-positions // count)  # two workers, each on a partition
        assert pairs_in_memory * (ngrams.BYTES_PER_PAIR + 8 * ngrams.BYTES_PER_PAIR_PER_TOP_TOKEN) < memory_mb * 2**20
    assert ngrams.plan(positions, 64000, 2, 8).partitions == -(-positions // ngrams.STEP_SIZE)
    assert ngrams.plan(10**6, 2000, 2, 8).partitions == 1
    with pytest.raises(ValueError, match="raise it to at least"):
        ngrams.plan(10**6, 100, 2, 8)


def test_memory_mapped_targets_give_the_same_loss_as_the_in_memory_ones(tmp_path, monkeypatch):
    out_of_core(monkeypatch)
    tokens = zipf_corpus(3, size=5000).astype(np.uint16)
    rows = np.arange(200, 200 + 4 * 32).reshape(4, 32)
    logits = torch.randn(4, 32, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.from_numpy(tokens[rows + 1].astype(np.int64))
    losses = []
    for build in (lambda: ngram.load_targets("compact", tmp_path, tokens, 4, 3, 5, EOT),
                  lambda: readable_targets(tokens, 4, 3, 5, EOT)):
        ids, probs = build()(rows)
        losses.append(ngram.soft_target_loss(logits, targets, torch.from_numpy(ids), torch.from_numpy(probs), 0.5))
    (mapped, mapped_parts), (in_memory, in_memory_parts) = losses
    assert torch.equal(mapped, in_memory)
    assert all(torch.equal(mapped_parts[k], in_memory_parts[k]) for k in mapped_parts)


@pytest.mark.parametrize("boundary_token", [EOT, None])
def test_exact_targets_from_the_stored_counts_equal_the_in_memory_count(tmp_path, monkeypatch, boundary_token):
    out_of_core(monkeypatch)
    tokens = zipf_corpus(4, size=4000)
    rows = np.arange(3997).reshape(-1, 7)
    stored = ngram.load_targets("all", tmp_path, tokens, 3, 2, 0, boundary_token)(rows)
    reference = readable_targets(tokens, 3, 2, 0, boundary_token, mode="all")(rows)
    for a, b in zip(stored, reference):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_either_build_writes_the_same_cache_files(tmp_path, monkeypatch, capsys):
    """load_targets builds this corpus in memory, or out of core when told it is too large: the same files, headers
    (what they were built from, each file's size and crc32) included, so either build's cache is the other's."""
    tokens = zipf_corpus(12, size=5000).astype(np.uint16)
    ngram.load_targets("compact", tmp_path / "in_memory", tokens, 4, 3, 0, EOT)
    with monkeypatch.context() as m:
        out_of_core(m)
        ngram.load_targets("compact", tmp_path / "out_of_core", tokens, 4, 3, 0, EOT)
    printed = capsys.readouterr().out
    assert "r = 3, in memory)" in printed and "r = 3, out of core)" in printed
    for folder in ("ngram_n4", "ngram_n4_r3_seed0"):
        files = sorted(path.name for path in (tmp_path / "in_memory" / folder).iterdir())
        assert files == sorted(path.name for path in (tmp_path / "out_of_core" / folder).iterdir())
        for name in files:
            assert (tmp_path / "in_memory" / folder / name).read_bytes() == \
                (tmp_path / "out_of_core" / folder / name).read_bytes(), f"{folder}/{name}"


def test_a_killed_builds_work_folder_is_removed_by_the_next_build(tmp_path):
    dead, alive = tmp_path / ".ngram_build.999999999.0a1b2c3d.tmp", tmp_path / f".ngram_build.{1}.0a1b2c3d.tmp"
    for work in (dead, alive):
        (work / "partitions").mkdir(parents=True)
    ngram.load_targets("compact", tmp_path, zipf_corpus(5), 3, 2, 0, EOT)
    assert not dead.exists() and alive.exists()  # pid 999999999 cannot exist; pid 1 always does


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_build_stopped_half_way_prints_no_worker_traceback(tmp_path, stop):
    """Ctrl-C or kill -9 in the middle of a build with worker processes: no worker prints a traceback, and Ctrl-C
    leaves no work folder behind (a killed build's is removed by the next one)."""
    tokens = gpt2_like_corpus(0, size=3_000_000)
    tokens.tofile(tmp_path / "train.bin")
    code = ("import numpy as np\nfrom data import ngrams\ntokens = np.memmap('train.bin', np.uint16, mode='r')\n"
            "try:\n    ngrams.load_or_build('.', tokens, 3, 8, 0, 2999, 300, 2)\n"
            "except KeyboardInterrupt:\n    print('stopped')\n")  # as train.py stops: the main process's own line
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=stderr, stdout=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        while proc.poll() is None and not list(tmp_path.glob(".ngram_build.*/partitions/*")):
            time.sleep(0.01)
        proc.send_signal(stop)
        proc.wait(timeout=60)
    time.sleep(1)  # long enough for an orphaned worker to have printed
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    if stop == signal.SIGINT:
        assert not list(tmp_path.glob(".ngram_build.*"))
