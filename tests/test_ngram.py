"""Tests of the n-gram soft targets (ngram.py) on small synthetic corpora made here. The method is tested on the
readable in-memory build (ngram.build_targets); tests/test_ngrams.py checks the out-of-core build equal to it."""

import errno
import mmap
import os
import sys
import tempfile
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ngram
from data import ngrams
from lm import LanguageModel
from model import GPT, GPTConfig

VOCAB, EOT = 10, 9


def zipf_corpus(seed, size=3000, boundary_rate=0.03):
    """Zipf-distributed tokens 0..8 with a little order (a token often repeats its predecessor's successor),
    cut into documents by EOT = 9."""
    rng = np.random.default_rng(seed)
    tokens = (rng.zipf(1.6, size) - 1) % (VOCAB - 1)
    echo = rng.random(size) < 0.3
    tokens[1:][echo[1:]] = (tokens[:-1][echo[1:]] + 1) % (VOCAB - 1)
    tokens[rng.random(size) < boundary_rate] = EOT
    return tokens


def brute_force_counts(tokens, n, boundary_token):
    """{context: Counter(next token)} by looking at every position."""
    counts = defaultdict(Counter)
    for i in range(n - 2, len(tokens) - 1):
        context = tuple(int(t) for t in tokens[i - n + 2:i + 1])
        if boundary_token not in context:
            counts[context][int(tokens[i + 1])] += 1
    return counts


def y_all_table(tokens, n, boundary_token=EOT):
    """The dense y_all of every position (rows), and which positions have an in-document context."""
    counts = brute_force_counts(tokens, n, boundary_token)
    y = np.zeros((len(tokens) - 1, VOCAB))
    has_context = np.zeros(len(tokens) - 1, bool)
    for i in range(n - 2, len(tokens) - 1):
        context = tuple(int(t) for t in tokens[i - n + 2:i + 1])
        if context in counts:
            total = sum(counts[context].values())
            for v, c in counts[context].items():
                y[i, v] = c / total
            has_context[i] = True
    return y, has_context


def stored_targets(tokens, n, r, seed=0, boundary_token=None, mode="compact"):
    """ngram.load_targets on a dataset folder of its own: the targets train.py reads."""
    with tempfile.TemporaryDirectory() as data_dir:
        return ngram.load_targets(mode, data_dir, tokens, n, r, seed, boundary_token)


def readable_targets(tokens, n, r, seed=0, boundary_token=None, mode="compact"):
    """The targets of ngram.build_targets, the readable in-memory build, without files."""
    arrays = ngram.build_targets(tokens, n, r, seed, boundary_token)
    if mode == "all":
        return ngram.ExactTargets(tokens, *(arrays[k] for k in ("row_context", "ptr", "next_ids", "counts")))
    return ngram.CompactTargets(*(arrays[k] for k in ("row_context", "tail_ids", "top_ids", "top_probs", "tail_probs")))


def out_of_core(monkeypatch):
    """Make ngram.load_targets take every corpus for one too large for its memory bound: data/ngrams.py builds it."""
    monkeypatch.setattr(ngram, "BUILD_BYTES_PER_TOKEN", 2**40)


def compact_targets(tokens, n, r, seed=0, boundary_token=None):
    """The compact target of every position (ids, probs), shape (len(tokens) - 1, r + 1): row i predicts
    tokens[i + 1]."""
    return readable_targets(tokens, n, r, seed, boundary_token)(np.arange(len(tokens) - 1))


def distribution_of(counts, bits, context):
    """y_all of one context (a tuple of n-1 ids) read from the counts: {next token: probability}."""
    key = 0
    for token in context:
        key = (key << bits) | int(token)
    k = int(np.searchsorted(counts["context_keys"], np.uint64(key)))
    assert int(counts["context_keys"][k]) == key, f"context {context} was not counted"
    span = slice(counts["ptr"][k], counts["ptr"][k + 1])
    total = counts["counts"][span].sum()
    return {int(v): c / total for v, c in zip(counts["next_ids"][span], counts["counts"][span])}


def dense(ids, probs):
    """(rows, k) sparse targets -> (rows, VOCAB) distributions."""
    out = np.zeros((len(ids), VOCAB))
    np.add.at(out, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()), probs.ravel())
    return out


@pytest.mark.parametrize("n", [2, 3, 4])
def test_counts_match_brute_force(n):
    tokens = zipf_corpus(0)
    expected = brute_force_counts(tokens, n, EOT)
    counts = ngram.build_targets(tokens, n, 1, 0, EOT)
    assert len(counts["ptr"]) - 1 == len(expected)
    assert counts["counts"].sum() == sum(sum(c.values()) for c in expected.values())
    for context, counter in expected.items():
        total = sum(counter.values())
        assert distribution_of(counts, int(tokens.max()).bit_length(), context) == pytest.approx(
            {v: c / total for v, c in counter.items()}, rel=1e-12)


def test_compact_average_over_a_context_is_y_all_exactly_when_the_tail_divides_the_head():
    # Context 0 -> 5 (x6), 6, 7: with r = 1, S = {5}, the 6 in-S occurrences borrow the 2 tail tokens 3 times each.
    # Context 1 -> 2 (x4), 3 (x2), 4, 5 with r = 2: 6 in-S occurrences, tail of 2.
    followers = {0: [5] * 6 + [6, 7], 1: [2] * 4 + [3] * 2 + [4, 5]}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pairs = [(c, v) for c, vs in followers.items() for v in vs]
        rng.shuffle(pairs)
        tokens = np.array([t for pair in pairs for t in (*pair, EOT)])
        for context, r in ((0, 1), (1, 2)):
            ids, probs = compact_targets(tokens, 2, r, seed=seed, boundary_token=EOT)
            rows = np.flatnonzero(tokens[:-1] == context)
            y = np.bincount(followers[context], minlength=VOCAB) / len(followers[context])
            assert dense(ids[rows], probs[rows]).mean(axis=0) == pytest.approx(y, abs=1e-6)


def test_compact_targets_are_unbiased():
    # Averaged over seeds and over a context's occurrences, the compact target is y_all. Putting the leftover
    # mass on the observed token instead would be off by (1 - m) * y_all[v] on the top tokens, about 0.1 here.
    tokens = zipf_corpus(1, size=2000)
    y, has_context = y_all_table(tokens, 3)
    average = np.zeros_like(y)
    seeds = 200
    for seed in range(seeds):
        targets = readable_targets(tokens, 3, 2, seed=seed, boundary_token=EOT)
        average += dense(*targets(np.arange(len(tokens) - 1))) / seeds
    for k in range(1, len(targets.top_ids)):
        rows = np.asarray(targets.row_context) == k
        assert average[rows].mean(axis=0) == pytest.approx(y[rows][0], abs=0.02)
    assert np.abs(average[has_context] - y[has_context]).max() > 0.05  # one draw per position: not y_all itself


def test_top_r_entries_are_y_all_top_r():
    tokens, r = zipf_corpus(2), 3
    y, has_context = y_all_table(tokens, 3)
    ids, probs = compact_targets(tokens, 3, r, boundary_token=EOT)
    for i in np.flatnonzero(has_context):
        top = sorted(np.flatnonzero(y[i]), key=lambda v: (-y[i, v], v))[:r]  # ties to the smaller id
        kept = probs[i, :r] > 0
        assert ids[i, :r][kept].tolist() == top
        assert probs[i, :r][kept] == pytest.approx(y[i, top], rel=1e-6)


def test_r_at_least_the_support_gives_y_all():
    tokens = zipf_corpus(3)
    y, has_context = y_all_table(tokens, 3)
    ids, probs = compact_targets(tokens, 3, VOCAB, boundary_token=EOT)
    assert dense(ids, probs)[has_context] == pytest.approx(y[has_context], abs=1e-6)


def test_rows_are_distributions_and_fall_back_to_one_hot_without_an_in_document_context():
    tokens, n = zipf_corpus(4), 3
    _, has_context = y_all_table(tokens, n)
    ids, probs = compact_targets(tokens, n, 2, boundary_token=EOT)
    assert ids.shape == probs.shape == (len(tokens) - 1, 3)
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(tokens) - 1), abs=1e-6)
    after_boundary = np.zeros(len(tokens) - 1, bool)
    for back in range(n - 1):
        after_boundary[back:] |= tokens[:len(tokens) - 1 - back] == EOT
    assert np.array_equal(~has_context[n - 2:], after_boundary[n - 2:])
    one_hot = np.eye(VOCAB)[tokens[1:]]
    assert np.array_equal(dense(ids, probs)[~has_context], one_hot[~has_context])
    assert not np.array_equal(dense(ids, probs)[has_context], one_hot[has_context])
    # Predicting the boundary itself from inside a document is an ordinary soft target.
    assert has_context[tokens[1:] == EOT].any()


def test_compact_target_variance_is_below_the_one_hot_target_variance():
    tokens, r = zipf_corpus(5, size=20000), 3
    y, has_context = y_all_table(tokens, 3)
    ids, probs = compact_targets(tokens, 3, r, boundary_token=EOT)
    compact = ((dense(ids, probs) - y) ** 2).sum(axis=1)[has_context].mean()
    one_hot = ((np.eye(VOCAB)[tokens[1:]] - y) ** 2).sum(axis=1)[has_context].mean()
    # The spec's formula (1 - m)^2 - |y_tail|^2 per position, with S the top r of each position's y_all.
    y_sorted = -np.sort(-y[has_context], axis=1)
    formula = ((1 - y_sorted[:, :r].sum(axis=1)) ** 2 - (y_sorted[:, r:] ** 2).sum(axis=1)).mean()
    assert compact < 0.5 * one_hot
    assert compact == pytest.approx(formula, rel=0.05)


def test_exact_targets_are_y_all_per_position():
    tokens = zipf_corpus(6)
    y, has_context = y_all_table(tokens, 3)
    rows = np.arange(len(tokens) - 1)
    ids, probs = readable_targets(tokens, 3, 1, boundary_token=EOT, mode="all")(rows)
    assert dense(ids, probs)[has_context] == pytest.approx(y[has_context], abs=1e-6)
    assert np.array_equal(dense(ids, probs)[~has_context], np.eye(VOCAB)[tokens[1:]][~has_context])


def test_sparse_loss_and_its_gradient_equal_the_dense_soft_cross_entropy():
    tokens, alpha = zipf_corpus(7), 0.3
    rows = np.arange(40, 88).reshape(4, 12)
    ids, probs = readable_targets(tokens, 3, 1, boundary_token=EOT, mode="all")(rows)
    y = torch.from_numpy(tokens[rows + 1])
    logits = torch.randn(4, 12, VOCAB, requires_grad=True)
    loss, stats = ngram.soft_target_loss(logits, y, torch.from_numpy(ids), torch.from_numpy(probs), alpha)
    y_all = torch.from_numpy(dense(ids.reshape(48, -1), probs.reshape(48, -1))).float().view(4, 12, -1)
    target = (1 - alpha) * F.one_hot(y, VOCAB) + alpha * y_all
    expected = -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["ce"], F.cross_entropy(logits.view(48, -1), y.view(-1)))
    torch.testing.assert_close(stats["ngram_ce"], -(y_all * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean())
    grad, = torch.autograd.grad(loss, logits)
    expected_grad, = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


def test_alpha_zero_gives_the_plain_loss_and_gradient():
    tokens = zipf_corpus(8)
    rows = np.arange(100, 132).reshape(2, 16)
    ids, probs = compact_targets(tokens, 3, 2, boundary_token=EOT)
    x, y = torch.from_numpy(tokens[rows]), torch.from_numpy(tokens[rows + 1])
    extra = {"ngram_ids": torch.from_numpy(ids[rows]).long(), "ngram_probs": torch.from_numpy(probs[rows])}
    results = []
    for settings, batch_extra in (({}, {}), ({"ngram_mode": "compact", "ngram_alpha": 0.0}, extra)):
        torch.manual_seed(0)
        model = LanguageModel.from_settings(
            GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16)), settings).train()
        loss, _ = model(x, y, batch_extra)
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters()]))
    (plain, plain_grads), (soft, soft_grads) = results
    # Equal up to float rounding: the n-gram loss sums the same terms in another order.
    torch.testing.assert_close(soft, plain, rtol=1e-6, atol=0)
    for a, b in zip(plain_grads, soft_grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tokens, n, r, message", [
    (np.arange(10), 1, 2, "n must be at least 2"),
    (np.arange(10), 3, 0, "r must be at least 1"),
    (np.array([1, 70000, 3]), 2, 2, "does not fit the uint16"),
    (np.array([], np.uint16), 2, 2, "at least 2 tokens"),
    (np.array([-1, 2, 3]), 2, 2, "non-negative"),
    (np.array([1, 60000, 3]), 5, 2, "use n <= 4"),
])
def test_bad_input_is_refused_with_a_clear_error(tokens, n, r, message):
    with pytest.raises(ValueError, match=message):
        stored_targets(tokens, n, r)


@pytest.mark.parametrize("n, r", [(2, 1), (3, 8), (3, 32)])
def test_the_readable_builds_peak_memory_is_under_what_load_targets_assumes(n, r):
    """Every position a context of its own (50000 ids), the build's worst case: load_targets's rule builds in memory
    only what fits memory_mb at BUILD_BYTES_PER_TOKEN + BUILD_BYTES_PER_TOP_TOKEN * r a token."""
    tokens = np.random.default_rng(0).integers(0, 50000, 200000).astype(np.uint16)
    tracemalloc.start()
    ngram.build_targets(tokens, n, r, 0, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < len(tokens) * (ngram.BUILD_BYTES_PER_TOKEN + ngram.BUILD_BYTES_PER_TOP_TOKEN * r)


def test_load_targets_builds_in_memory_exactly_what_fits_its_memory_bound(monkeypatch):
    chosen = []

    def record(*args, build_in_memory, **kwargs):
        chosen.append(build_in_memory)
        return dict.fromkeys(("row_context", "tail_ids", "top_ids", "top_probs", "tail_probs"))
    monkeypatch.setattr(ngrams, "load_or_build", record)
    r, memory_mb = 8, 2000
    per_token = ngram.BUILD_BYTES_PER_TOKEN + ngram.BUILD_BYTES_PER_TOP_TOKEN * r
    fits = (memory_mb - ngrams.PROCESS_MB) * 2**20 // per_token
    for length in (1_003_854, fits, fits + 1):  # shakespeare_char's train split; the largest that fits; one more
        ngram.load_targets("compact", "unused", np.broadcast_to(np.uint16(0), length), 5, r, 0, None, memory_mb)
    assert chosen == [ngram.build_targets, ngram.build_targets, None]


def memory_mapped(array):
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, memoryview) and isinstance(array.obj, mmap.mmap)


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path, monkeypatch):
    tokens = zipf_corpus(9).astype(np.uint16)
    first = ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, EOT)
    assert (tmp_path / "ngram_n3" / "header.json").exists()
    assert (tmp_path / "ngram_n3_r2_seed0" / "header.json").exists()
    assert memory_mapped(first.tail_ids) and memory_mapped(first.top_ids)  # read as needed, not loaded
    rows = np.arange(len(tokens) - 1)

    def no_build(*args):
        raise AssertionError("a valid cache was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(ngram, "build_targets", no_build)
        m.setattr(ngrams, "build", no_build)
        for a, b in zip(first(rows), ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, EOT)(rows)):
            assert np.array_equal(a, b)
        ngram.load_targets("all", tmp_path, tokens, 3, 2, 0, EOT)  # the exact targets read the same counts
        with pytest.raises(AssertionError, match="rebuilt"):  # other boundary token: same folder names, stale
            ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, None)
    changed = tokens.copy()
    changed[:100] = changed[100:200]
    rebuilt = ngram.load_targets("compact", tmp_path, changed, 3, 2, 0, EOT)
    expected = readable_targets(changed, 3, 2, 0, EOT)(rows)
    for a, b in zip(rebuilt(rows), expected):
        assert np.array_equal(a, b)
    (tmp_path / "ngram_n3_r2_seed0" / "tail_ids.npy").write_bytes(b"truncated")
    for a, b in zip(ngram.load_targets("compact", tmp_path, changed, 3, 2, 0, EOT)(rows), expected):
        assert np.array_equal(a, b)


def damage_tail_probs_missing(folder):
    (folder / "tail_probs.npy").unlink()


def overwrite_top(name, values):
    """Overwrite the data of folder/<name>.npy in place, keeping its size and its .npy header."""
    def damage(folder):
        array = np.load(folder / name, mmap_mode="r+")
        array[...] = values(array)
        array.flush()
    return damage


@pytest.mark.parametrize("damage", [
    damage_tail_probs_missing,  # main: KeyError: 'tail_probs' on every run
    overwrite_top("top_ids.npy", lambda a: np.random.default_rng(0).integers(0, 2**16, a.shape)),  # main: IndexError
    overwrite_top("top_probs.npy", lambda a: np.random.default_rng(0).random(a.shape)),  # main: wrong targets
    overwrite_top("top_probs.npy", lambda a: 0),  # main: trains silently on wrong targets
], ids=["tail_probs missing", "top_ids random", "top_probs random", "top_probs zeroed"])
def test_a_damaged_cache_is_rebuilt_to_the_right_targets(tmp_path, capsys, damage):
    tokens = zipf_corpus(10).astype(np.uint16)
    rows = np.arange(len(tokens) - 1)
    expected = readable_targets(tokens, 3, 2, 0, EOT)(rows)
    ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, EOT)
    damage(tmp_path / "ngram_n3_r2_seed0")
    capsys.readouterr()
    rebuilt = ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, EOT)
    assert f"rebuilding {tmp_path / 'ngram_n3_r2_seed0'}: " in capsys.readouterr().out
    for a, b in zip(rebuilt(rows), expected):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("build", ["in memory", "out of core"])
def test_a_build_that_fills_the_disk_stops_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, build):
    def short_write(*args):
        raise OSError("35996 requested and 14336 written")  # what ndarray.tofile says when the disk fills

    def full_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if build == "in memory":
        monkeypatch.setattr(np, "save", full_disk)
    else:
        out_of_core(monkeypatch)
        monkeypatch.setattr(ngrams, "gather", short_write)
    tokens = zipf_corpus(11).astype(np.uint16)
    with pytest.raises(OSError, match=f"^no space left on the disk of {tmp_path} \\(.* free, up to .* needed\\): "
                                      f"free space on that disk, then run again$"):
        ngram.load_targets("compact", tmp_path, tokens, 3, 2, 0, EOT)
    assert list(tmp_path.iterdir()) == []


def test_train_py_gathers_each_positions_target(tmp_path, monkeypatch):
    # x[b, t] is stream position ix[b] + t, so its target must be y_all of (x[b, t-1], x[b, t]).
    import train
    from data import prepare
    from training.trainer import Trainer
    from data.write import write_dataset
    monkeypatch.setattr(prepare, "DATA_ROOT", tmp_path)
    text = "".join(np.random.default_rng(0).choice(list("abcab c"), 3000))
    write_dataset(tmp_path / "shakespeare_char", {"train": [text], "val": [text[:500]]}, "char",
                         "shakespeare_char", "test")
    settings = train.settings_from([train.PLAIN_CONFIG])
    settings.update(ngram_mode="all", ngram_n=3, block_size=16, n_layer=1, n_head=1, n_embd=8, device="cpu")
    trainer = Trainer(settings)
    x, y, extra = trainer.get_batch("train", torch.Generator().manual_seed(0), 4)
    tokens = np.array(trainer.tokens["train"])
    counts = brute_force_counts(tokens, 3, None)
    targets = dense(extra["ngram_ids"].flatten(0, 1).numpy(), extra["ngram_probs"].flatten(0, 1).numpy())
    for (b, t), target in zip(np.ndindex(*x.shape), targets):
        if t > 0:
            counter = counts[(int(x[b, t - 1]), int(x[b, t]))]
            y_all = np.bincount(list(counter), weights=list(counter.values()), minlength=VOCAB)[:VOCAB]
            assert target[:len(y_all)] == pytest.approx(y_all / y_all.sum(), abs=1e-6)
            assert y_all[int(y[b, t])] > 0
    _, _, val_extra = trainer.get_batch("val", torch.Generator().manual_seed(0), 4)
    assert val_extra == {}
