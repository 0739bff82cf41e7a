"""Today's in-memory n-gram build (before data/ngrams.py), kept as the reference the partitioned build must equal bit
for bit: everything in memory, one sort of the whole corpus's packed keys."""

import numpy as np

import ngram


# --- counting: the statistics of the train split ----------------------------------------------------------------
class NgramCounts:
    """C(c, v) for every in-document context c of n-1 tokens, as compressed rows:
    context k's next tokens are next_ids[ptr[k]:ptr[k+1]] with counts counts[ptr[k]:ptr[k+1]], most frequent
    first (ties: smaller id first). For the position i that predicts tokens[i + 1], row_context[i] is its context
    (-1 when it has no full in-document context) and row_rank[i] the place of tokens[i + 1] in that list.
    context_keys[k] is context k's tokens packed into an integer, bits per token, oldest first."""

    def __init__(self, row_context, row_rank, ptr, next_ids, counts, context_keys, bits):
        self.row_context, self.row_rank = row_context, row_rank
        self.ptr, self.next_ids, self.counts = ptr, next_ids, counts
        self.context_keys, self.bits = context_keys, bits
        self.totals = np.add.reduceat(counts, ptr[:-1]) if len(counts) else np.zeros(0, np.int64)

def count_ngrams(tokens, n, boundary_token=None):
    """Count every (context, next token) pair of the corpus with one sort of packed 64-bit keys."""
    tokens = check_tokens(tokens, n)
    bits = max(1, int(tokens.max()).bit_length())
    if n * bits > 64:
        raise ValueError(f"n = {n} tokens of {bits} bits do not fit the 64-bit keys the counts are packed into: "
                         f"use n <= {64 // bits}")
    rows = np.flatnonzero(in_document(tokens, n, boundary_token))
    context_key = np.zeros(len(rows), np.uint64)
    for back in range(n - 2, -1, -1):  # x_{i-n+2} ... x_i, oldest in the high bits
        context_key = (context_key << np.uint64(bits)) | tokens[rows - back]
    pair_key = (context_key << np.uint64(bits)) | tokens[rows + 1]
    order = np.argsort(pair_key)
    pair_key = pair_key[order]
    new_pair = np.empty(len(pair_key), bool)
    new_pair[:1] = True
    new_pair[1:] = pair_key[1:] != pair_key[:-1]
    pair_start = np.flatnonzero(new_pair)
    counts = np.diff(np.append(pair_start, len(pair_key)))
    pair_context_key = pair_key[pair_start] >> np.uint64(bits)
    next_ids = (pair_key[pair_start] & np.uint64((1 << bits) - 1)).astype(np.uint16)
    new_context = np.empty(len(pair_start), bool)
    new_context[:1] = True
    new_context[1:] = pair_context_key[1:] != pair_context_key[:-1]
    pair_context = np.cumsum(new_context) - 1
    # Within each context: most frequent first, ties to the smaller id (the pairs are in id order and the sort is
    # stable, and fast since the contexts are already in order); the top r are then the first r.
    by_frequency = np.argsort(pair_context * (counts.max(initial=0) + 1) - counts, kind="stable")
    ptr = np.append(np.flatnonzero(new_context), len(pair_start))
    place = np.empty(len(by_frequency), np.int64)
    place[by_frequency] = np.arange(len(by_frequency))
    pair_of_row = np.cumsum(new_pair) - 1  # in sorted-row order
    row_context = np.full(len(tokens) - 1, -1, np.int32)
    row_context[rows[order]] = pair_context[pair_of_row]
    row_rank = np.full(len(tokens) - 1, -1, np.int32)
    row_rank[rows[order]] = place[pair_of_row] - ptr[pair_context[pair_of_row]]
    return NgramCounts(row_context, row_rank, ptr, next_ids[by_frequency], counts[by_frequency],
                       pair_context_key[new_context], bits)

def check_tokens(tokens, n):
    tokens = np.asarray(tokens)
    if n < 2:
        raise ValueError(f"n must be at least 2 (a context of n-1 >= 1 tokens), got {n}")
    if tokens.ndim != 1 or len(tokens) < 2:
        raise ValueError(f"the corpus must be a 1-D array of at least 2 tokens, got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer) or tokens.min() < 0:
        raise ValueError("token ids must be non-negative integers")
    if tokens.max() >= 2**16:
        raise ValueError(f"token id {tokens.max()} does not fit the uint16 ids stored here: the n-gram targets "
                         f"support vocabularies of at most 65536 tokens")
    return tokens.astype(np.uint64)

def in_document(tokens, n, boundary_token):
    """For each position i < len - 1: does x_{i-n+2} ... x_i exist and contain no boundary token?"""
    ok = np.zeros(len(tokens) - 1, bool)
    ok[n - 2:] = True
    if boundary_token is not None:
        boundaries = np.concatenate(([0], np.cumsum(tokens[:-1] == boundary_token)))
        ok[n - 2:] &= boundaries[n - 1:] == boundaries[:len(boundaries) - n + 1]
    return ok

# --- AllNTs: the exact target, gathered per batch -------------------------------------------------------------
class ExactTargets:
    """y_all for any positions, as (ids, probs) padded to the widest support among them (padding has prob 0)."""

    def __init__(self, tokens, n, boundary_token=None):
        self.tokens = tokens
        self.stats = count_ngrams(tokens, n, boundary_token)
        self.degree = np.diff(self.stats.ptr)

    def __call__(self, rows):
        stats = self.stats
        context = stats.row_context[rows]
        has_context = context >= 0
        degree = np.where(has_context, self.degree[context], 1)
        width = np.arange(degree.max())
        index = stats.ptr[context][..., None] + width
        filled = width < degree[..., None]
        index = np.where(filled & has_context[..., None], index, 0)
        ids = np.where(has_context[..., None], stats.next_ids[index], self.tokens[rows + 1][..., None])
        probs = np.where(has_context[..., None], stats.counts[index] / stats.totals[context][..., None], 1.0)
        return ids.astype(np.int64), np.where(filled, probs, 0.0).astype(np.float32)

# --- CoCoNTs: the compact target, built once ----------------------------------------------------------------
def build_compact(tokens, n, r, seed=0, boundary_token=None):
    """Count, keep each context's top r exactly, and deal its tail tokens out to its in-S occurrences."""
    if r < 1:
        raise ValueError(f"r must be at least 1 (the number of top tokens kept per context), got {r}")
    stats = count_ngrams(tokens, n, boundary_token)
    top = stats.ptr[:-1, None] + np.arange(r)
    in_top = top < stats.ptr[1:, None]
    top = np.where(in_top, top, 0)
    top_counts = np.where(in_top, stats.counts[top], 0)
    tail_counts = stats.totals - top_counts.sum(axis=1)
    top_ids = np.zeros((len(top) + 1, r), np.uint16)  # row k + 1 is context k's
    top_ids[1:] = np.where(in_top, stats.next_ids[top], 0)
    top_probs = np.zeros((len(top) + 1, r), np.float32)
    top_probs[1:] = top_counts / stats.totals[:, None]
    tail_probs = np.append(1.0, tail_counts / stats.totals).astype(np.float32)
    context = stats.row_context
    next_tokens = np.asarray(tokens[1:]).astype(np.uint16)
    tail_ids = next_tokens.copy()
    in_s = (context >= 0) & (stats.row_rank < r)
    deal_tail_tokens(tail_ids, next_tokens, context, in_s, tail_counts, seed)
    row_context = (context + 1).astype(np.int32)  # positions without a context (-1) get the one-hot row 0
    return ngram.CompactTargets(row_context, tail_ids, top_ids, top_probs, tail_probs)

def deal_tail_tokens(tail_ids, next_tokens, context, in_s, tail_counts, seed):
    """Give each in-S position of a context with a tail the next token of one of its tail occurrences: the tail
    occurrences in a seeded random order, dealt round-robin."""
    rows = np.flatnonzero(context >= 0)
    rows = rows[tail_counts[context[rows]] > 0]
    rng = np.random.default_rng(seed)
    # Sort by (context, in S, random): each context's tail occurrences first, shuffled, then its in-S ones.
    key = (context[rows].astype(np.uint64) << np.uint64(33)) | (in_s[rows].astype(np.uint64) << np.uint64(32)) \
        | rng.integers(0, 2**32, len(rows), dtype=np.uint64)
    rows = rows[np.argsort(key)]
    c = context[rows]
    group_start = np.searchsorted(c, c)  # sorted index of the first row of each row's context
    rank = np.arange(len(rows)) - group_start - tail_counts[c]  # 0, 1, ... over the in-S rows
    borrowing = rank >= 0
    source = rows[group_start + rank % tail_counts[c]]
    tail_ids[rows[borrowing]] = next_tokens[source[borrowing]]
