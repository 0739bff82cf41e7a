"""
N-gram soft targets: train on the corpus's next-token distribution of each context, not only on the one token
that happened to follow (Sathe & Sarawagi, "Efficient Training of Language Models with Compact and Consistent
Next Token Distributions", Findings of ACL 2024).

The usual loss supervises position i with the observed next token NT = x_{i+1}. The same short context
c = (x_{i-n+2}, ..., x_i) of n-1 tokens recurs across the corpus followed by many different tokens; their
empirical distribution over the train split,

    y_all[v] = C(c, v) / C(c),

is a richer target with less variance from one mini-batch to the next.

AllNTs (exact): loss = (1 - alpha) * CE(onehot(NT), p) + alpha * CE(y_all, p), with CE(y, p) = -sum_v y[v] log p[v].
  It is label smoothing whose smoothing distribution is the n-gram distribution. Every position needs the whole
  support of its context, which is large for frequent contexts, so it is built per batch and costs time.

CoCoNTs (compact, consistent): the same loss with y_all replaced by a target of r + 1 entries, computed once and
  cached beside the dataset. Let S be the r most frequent next tokens of c (ties to the smaller id) and m their
  mass. The target of an occurrence of c is

      y_S + (1 - m) * onehot(t),

  where t is the observed next token when it is outside S, and otherwise the next token of an occurrence of c
  whose next token is outside S. Averaged over the occurrences of c it equals y_all: the tail slot then carries
  the tail tokens in their corpus proportions. Its per-position variance E|target - y_all|^2 is
  (1 - m)^2 - |y_tail|^2 instead of NT's 1 - |y_all|^2. (Putting the leftover mass on the observed token even when
  it is in S would be biased towards S.) The loss is r + 2 gathers after one log-softmax.

A context lies inside one document (no boundary token in it); a position without one keeps the one-hot target.
Statistics come from the train split only, and validation is always scored with plain cross-entropy. Counting them
is data preparation, done once: build_targets below counts in memory, and writes the counts and the compact targets
to files beside the dataset that training memory-maps. A corpus too large for that memory bound is counted out of
core by data/ngrams.py instead, into the same files, bit for bit. The decisions where the paper is silent, and why:
docs/ngram.md.
"""

import numpy as np
import torch
from torch.nn import functional as F

from data import ngrams

MODES = ("off", "all", "compact")


def settings_problems(s):
    """What is wrong with the n-gram settings of train.py, each naming the setting and the fix."""
    problems = []
    if s["ngram_mode"] not in MODES:
        problems.append(f"ngram_mode must be 'off', 'all' or 'compact', got {s['ngram_mode']!r}")
    if s["ngram_n"] < 2 or s["ngram_r"] < 1 or not 0.0 <= s["ngram_alpha"] <= 1.0:
        problems.append(f"ngram_n must be at least 2, ngram_r at least 1 and ngram_alpha in [0, 1], got "
                        f"{s['ngram_n']}, {s['ngram_r']} and {s['ngram_alpha']}")
    if s["ngram_workers"] < 1 or s["ngram_memory_mb"] < ngrams.least_memory_mb(s["ngram_workers"]):
        problems.append(f"ngram_workers must be at least 1 and ngram_memory_mb at least "
                        f"{ngrams.least_memory_mb(max(1, s['ngram_workers']))} for them, got {s['ngram_workers']} "
                        f"and {s['ngram_memory_mb']}: raise ngram_memory_mb or lower ngram_workers")
    if s["ngram_mode"] != "off" and s["label_smoothing"] > 0:
        problems.append("label_smoothing and ngram_mode are two soft targets for the same loss: switch one off")
    return problems


# --- the build: count the train split, deal the tail tokens ------------------------------------------------------
# build_targets's peak bytes per token (numpy's, measured with tracemalloc) when every position has a context of its
# own, its worst case, with a margin of 5%: a fixed part and one per top token kept
BUILD_BYTES_PER_TOKEN, BUILD_BYTES_PER_TOP_TOKEN = 220, 6


def build_targets(tokens, n, r, seed, boundary_token):
    """The counts and the compact targets of a train split ({name: array}, the files data/ngrams.py's docstring
    lists), in memory. tokens were checked by data/ngrams.py (ids of at most 16 bits, n of them fit 64 bits)."""
    tokens = np.asarray(tokens).astype(np.uint64)
    bits = max(1, int(tokens.max()).bit_length())
    # Position i predicts tokens[i + 1] from its context x_{i-n+2} ... x_i, packed into one integer (oldest token in
    # the high bits, so that contexts sort in the order of their tokens); the context must lie inside one document.
    positions = np.arange(n - 2, len(tokens) - 1)
    context_key = np.zeros(len(positions), np.uint64)
    inside = np.ones(len(positions), bool)
    for back in range(n - 2, -1, -1):
        context_key = (context_key << np.uint64(bits)) | tokens[positions - back]
        if boundary_token is not None:
            inside &= tokens[positions - back] != boundary_token
    positions, context_key = positions[inside], context_key[inside]
    pair_key = (context_key << np.uint64(bits)) | tokens[positions + 1]

    # C(c, v): sorted, each (context, next token) pair's occurrences are one run, each context's pairs one run
    order = np.argsort(pair_key)
    pair_key = pair_key[order]
    pair_start = ngrams.run_starts(pair_key)
    pair_counts = np.diff(pair_start, append=len(pair_key))
    occurrence_pair = np.repeat(np.arange(len(pair_start)), pair_counts)  # in id order, as the pairs are now
    next_ids = (pair_key[pair_start] & np.uint64((1 << bits) - 1)).astype(np.uint16)
    pair_context_key = pair_key[pair_start] >> np.uint64(bits)
    ptr = ngrams.run_starts(pair_context_key)
    degree = np.diff(ptr, append=len(pair_start))
    pair_context = np.repeat(np.arange(len(ptr)), degree)
    # Each context's next tokens most frequent first, ties to the smaller id (they are in id order, the sort stable).
    by_frequency = np.argsort(pair_context * (pair_counts.max(initial=0) + 1) - pair_counts, kind="stable")
    next_ids, pair_counts = next_ids[by_frequency], pair_counts[by_frequency]
    rank = np.arange(len(by_frequency)) - ptr[pair_context]  # each pair's place in its context's list
    pair_in_s = np.empty(len(rank), bool)  # is the pair's next token among its context's top r? (in id order)
    pair_in_s[by_frequency] = rank < r
    context = np.full(len(tokens) - 1, -1)  # of each position; -1: none
    context[positions[order]] = pair_context[occurrence_pair]
    in_s = np.zeros(len(tokens) - 1, bool)  # of each position
    in_s[positions[order]] = pair_in_s[occurrence_pair]

    # y_S: the first r of each context's list, with p = C(c, v) / C(c); the tail's mass 1 - m is what they leave.
    top = np.flatnonzero(rank < r)
    cell = (pair_context[top] + 1) * r + rank[top]  # row k + 1 of the tables is context k's; row 0 the one-hot row
    top_ids = np.zeros((len(ptr) + 1, r), np.uint16)
    top_ids.reshape(-1)[cell] = next_ids[top]
    totals = np.add.reduceat(pair_counts, ptr) if len(ptr) else np.zeros(0, np.int64)
    top_probs = np.zeros((len(ptr) + 1, r), np.float32)
    top_probs.reshape(-1)[cell] = pair_counts[top] / totals[pair_context[top]]
    tail_counts = totals - (np.add.reduceat(np.where(rank < r, pair_counts, 0), ptr) if len(ptr) else 0)

    # The tail token t of each occurrence: one random key per occurrence of a context with a tail, drawn in position
    # order from one stream (data/ngrams.py draws the same stream in pieces); sorted by (context, in S, key), each
    # such context's tail occurrences come first, shuffled, then its in-S ones.
    next_tokens = tokens[1:].astype(np.uint16)
    tail_ids = next_tokens.copy()
    dealt = np.flatnonzero(context >= 0)
    dealt = dealt[tail_counts[context[dealt]] > 0]
    key = np.random.default_rng(seed).integers(0, 2**32, len(dealt), dtype=np.uint64)
    key |= (context[dealt].astype(np.uint64) << np.uint64(33)) | (in_s[dealt].astype(np.uint64) << np.uint64(32))
    dealt = dealt[np.argsort(key, kind="stable")]
    # exercise: ngram-tail
    c = context[dealt]
    first = np.searchsorted(c, c)  # where each one's context begins
    in_s_rank = np.arange(len(dealt)) - first - tail_counts[c]  # 0, 1, ... over a context's in-S occurrences
    # y_S + (1 - m) * onehot(t): outside S, t is the observed token; the in-S occurrences take the tail occurrences'
    # tokens round-robin, so that each of the (1 - m) C(c) tail occurrences is t for 1 / (1 - m) of c's occurrences
    # (exactly, or on average over seeds), and the mean target over them is y_S + (1 - m) y_tail / (1 - m) = y_all.
    source = dealt[first + in_s_rank % tail_counts[c]]
    tail_ids[dealt[in_s_rank >= 0]] = next_tokens[source[in_s_rank >= 0]]
    # end exercise
    return dict(row_context=(context + 1).astype(np.int32), context_keys=pair_context_key[ptr],
                ptr=np.append(ptr, len(pair_counts)), next_ids=next_ids, counts=pair_counts, tail_ids=tail_ids,
                top_ids=top_ids, top_probs=top_probs,
                tail_probs=np.append(1.0, tail_counts / totals).astype(np.float32))


# --- AllNTs: the exact target, gathered per batch -------------------------------------------------------------
class ExactTargets:
    """y_all for any positions, as (ids, probs) padded to the widest support among them (padding has prob 0), from
    the stored counts (build_targets): row_context[i] is position i's context + 1 (0: none), and context k's next
    tokens are next_ids[ptr[k]:ptr[k + 1]] with their counts, most frequent first."""

    def __init__(self, tokens, row_context, ptr, next_ids, counts):
        self.tokens, self.row_context = tokens, row_context
        self.ptr, self.next_ids, self.counts = ptr, next_ids, counts

    def __call__(self, rows):
        context = self.row_context[rows].astype(np.int64) - 1
        has_context = context >= 0
        context = np.where(has_context, context, 0)
        start = self.ptr[context]
        degree = np.where(has_context, self.ptr[context + 1] - start, 1)
        width = np.arange(degree.max())
        filled = width < degree[..., None]
        index = np.where(filled & has_context[..., None], start[..., None] + width, 0)
        counts = np.where(filled, self.counts[index], 0)
        # without a context the target is onehot(NT): the observed next token, with probability 1
        ids = np.where(has_context[..., None], self.next_ids[index], np.asarray(self.tokens[rows + 1])[..., None])
        # y_all[v] = C(c, v) / C(c)
        probs = np.where(has_context[..., None], counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1), 1.0)
        return ids.astype(np.int64), np.where(filled, probs, 0.0).astype(np.float32)


# --- CoCoNTs: the compact target, built once ----------------------------------------------------------------
class CompactTargets:
    """The compact targets of a corpus: per-context tables plus a context row and a tail token per position.
    Row 0 of the tables is the one-hot row: no top tokens, all the mass on the tail token, which is then the
    observed next token. Built by build_targets: each context's top r kept exactly, its tail tokens dealt out to
    its in-S occurrences."""

    def __init__(self, row_context, tail_ids, top_ids, top_probs, tail_probs):
        self.row_context, self.tail_ids = row_context, tail_ids
        self.top_ids, self.top_probs, self.tail_probs = top_ids, top_probs, tail_probs

    def __call__(self, rows):
        """(ids, probs) of shape rows.shape + (r + 1,): the r top tokens, then the tail token."""
        context = self.row_context[rows]
        # y_S + (1 - m) * onehot(t): the context's top r tokens with their probabilities, then the tail token t
        # (the observed one, or one dealt from the tail) with the tail's mass 1 - m
        ids = np.concatenate((self.top_ids[context], self.tail_ids[rows][..., None]), axis=-1)
        probs = np.concatenate((self.top_probs[context], self.tail_probs[context][..., None]), axis=-1)
        return ids.astype(np.int64), probs


# --- what train.py uses ---------------------------------------------------------------------------------------
def load_targets(mode, data_dir, tokens, n, r, seed, boundary_token, memory_mb=2000, workers=2):
    """The soft targets of a train split for train.py: a callable rows -> (ids, probs), where row i is the
    position that predicts tokens[i + 1]. Both modes read the files beside the dataset, memory-mapped, and build
    them first when they are missing or stale; 'all' reads the counts, 'compact' the compact targets."""
    if r < 1:
        raise ValueError(f"r must be at least 1 (the number of top tokens kept per context), got {r}")
    # build_targets when its peak fits memory_mb beside this process, else data/ngrams.py (out of core, `workers`
    # processes in memory_mb): the same files
    peak_mb = len(tokens) * (BUILD_BYTES_PER_TOKEN + BUILD_BYTES_PER_TOP_TOKEN * r) / 2**20
    in_memory = peak_mb <= memory_mb - ngrams.PROCESS_MB
    arrays = ngrams.load_or_build(data_dir, tokens, n, r, seed, boundary_token, memory_mb, workers,
                                  compact=mode == "compact", build_in_memory=build_targets if in_memory else None)
    if mode == "all":
        return ExactTargets(tokens, *(arrays[k] for k in ("row_context", "ptr", "next_ids", "counts")))
    return CompactTargets(*(arrays[k] for k in ("row_context", "tail_ids", "top_ids", "top_probs", "tail_probs")))


def soft_target_loss(logits, targets, ids, probs, alpha):
    """(1 - alpha) * CE(onehot(targets), p) + alpha * CE(y, p), the soft target y given sparsely by (ids, probs)
    (..., k), and its two parts to log: 'ce', the plain CE, and 'ngram_ce', CE(y, p). Both parts are one sparse
    target of k + 1 entries."""
    ids = torch.cat((targets.reshape(-1, 1), ids.flatten(0, -2)), dim=1)
    probs = probs.flatten(0, -2)
    # one target: weight 1 - alpha on the observed token NT, alpha * y[v] on each v of the soft target
    weights = torch.cat((torch.full_like(ids[:, :1], 1 - alpha, dtype=probs.dtype), alpha * probs), dim=1)
    # loss = (1 - alpha) * CE(onehot(NT), p) + alpha * CE(y, p), with CE(y, p) = -sum_v y[v] log p[v]
    loss, picked = SparseCrossEntropy.apply(logits.float().flatten(0, -2), ids, weights)
    return loss, {"ce": -picked[:, 0].mean(), "ngram_ce": -(probs * picked[:, 1:]).sum(dim=1).mean()}


class SparseCrossEntropy(torch.autograd.Function):
    """Mean over rows of -sum_j weights[:, j] * log_softmax(logits)[ids[:, j]] for targets that sum to 1, and the
    log-probabilities it picked (rows, k), without gradient. The gradient is (softmax(logits) - target) / rows,
    written out: backward then builds one vocabulary-sized tensor beside the saved log-probabilities, where
    autograd's backward of the same expression builds two (gather's scattered gradient, then log_softmax's)."""

    @staticmethod
    def forward(ctx, logits, ids, weights):
        logprobs = F.log_softmax(logits, dim=-1)
        picked = logprobs.gather(1, ids)
        ctx.save_for_backward(logprobs, ids, weights)
        ctx.mark_non_differentiable(picked)
        return -(weights * picked).sum(dim=1).mean(), picked

    @staticmethod
    def backward(ctx, grad_loss, grad_picked):
        logprobs, ids, weights = ctx.saved_tensors
        # exercise: ngram-gradient
        # d loss / d logits = (softmax(logits) - target) / rows
        grad = logprobs.exp().scatter_add_(1, ids, -weights)
        return grad.mul_(grad_loss / len(grad)), None, None
        # end exercise


# --- what the run reports of them (training/run_report.py and training/plot.py find these through lm.py) -------
def health_warning(record):
    """None: the n-gram targets are data, computed before training; nothing of them can degenerate as it trains."""
    return None


def report_line(record, s):
    """The n-gram targets' line in the run's report of an evaluation (training/run_report.py), or None when they are
    off."""
    if "train_ngram_ce" not in record:
        return None
    return (f"n-gram targets: on train batches, cross-entropy {record['train_ngram_ce']:.4f} against the n-gram "
            f"target and {record['train_loss']:.4f} against the observed token (the loss weighs the first by "
            f"ngram_alpha = {s['ngram_alpha']})")


def plot_panel(records, s):
    """The n-gram targets' panel of loss.png (training/plot.py) as its title and {curve label: logged key}, or None when
    they are off: the cross-entropy against the n-gram target beside the plain one, on the same train batches. s:
    the run's settings, or None when only its log is known."""
    if "train_ngram_ce" not in records[-1]:
        return None
    weight = f" (weight alpha = {s['ngram_alpha']})" if s is not None else ""
    return (f"n-gram target{weight}: cross-entropy on train batches",
            {"against the n-gram target": "train_ngram_ce", "against the observed token (plain CE)": "train_loss"})
