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
is data preparation: data/ngrams.py counts out of core, in bounded memory, and writes the counts and the compact
targets to files that training memory-maps. The decisions where the paper is silent, and why: docs/ngram.md.
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


def health_warning(record):
    """None: the n-gram targets are data, computed before training; nothing of them can degenerate as it trains."""
    return None


def report_line(record, s):
    """The n-gram targets' line in the run's report of an evaluation (run_report.py), or None when they are off."""
    if "train_ngram_ce" not in record:
        return None
    return (f"n-gram targets: on train batches, cross-entropy {record['train_ngram_ce']:.4f} against the n-gram "
            f"target and {record['train_loss']:.4f} against the observed token (the loss weighs the first by "
            f"ngram_alpha = {s['ngram_alpha']})")


def plot_panel(records, s):
    """The n-gram targets' panel of loss.png (plot.py) as its title and {curve label: logged key}, or None when
    they are off: the cross-entropy against the n-gram target beside the plain one, on the same train batches. s:
    the run's settings, or None when only its log is known."""
    if "train_ngram_ce" not in records[-1]:
        return None
    weight = f" (weight alpha = {s['ngram_alpha']})" if s is not None else ""
    return (f"n-gram target{weight}: cross-entropy on train batches",
            {"against the n-gram target": "train_ngram_ce", "against the observed token (plain CE)": "train_loss"})


# --- AllNTs: the exact target, gathered per batch -------------------------------------------------------------
class ExactTargets:
    """y_all for any positions, as (ids, probs) padded to the widest support among them (padding has prob 0), from
    the stored counts (data/ngrams.py): row_context[i] is position i's context + 1 (0: none), and context k's next
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
    observed next token. Built by data/ngrams.py: each context's top r kept exactly, its tail tokens dealt out to
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
    them first when they are missing or stale (data/ngrams.py: out of core, in memory_mb, with `workers`
    processes); 'all' reads the counts, 'compact' the compact targets."""
    if r < 1:
        raise ValueError(f"r must be at least 1 (the number of top tokens kept per context), got {r}")
    arrays = ngrams.load_or_build(data_dir, tokens, n, r, seed, boundary_token, memory_mb, workers,
                                  compact=mode == "compact")
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
        # d loss / d logits = (softmax(logits) - target) / rows
        grad = logprobs.exp().scatter_add_(1, ids, -weights)
        return grad.mul_(grad_loss / len(grad)), None, None
