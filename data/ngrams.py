"""
The n-gram statistics of a train split for ngram.py, counted out of core: the counts C(c, v) of every in-document
context c of n-1 tokens and the compact (CoCoNTs) targets, written to .npy files that training memory-maps.

Memory stays under a bound (memory_mb) whatever the corpus's size, because no step holds more than a chunk of
positions or one partition of the (context, next token) pairs:

1. route: a pass over the tokens, chunk by chunk, packs each position's context and (context, next token) pair into
   64-bit keys and appends the pair key to the file of its context's partition. Partitions are ranges of the context
   key, cut at quantiles of a sample of the corpus so that they come out about equal; every occurrence of a context
   lands in one partition, so each partition's counts are complete, and the partitions one after the other hold the
   contexts in key order, the order of the context table.
2. count: each partition, in a worker process, sorts its keys, counts every pair and ranks each context's next
   tokens (most frequent first, ties to the smaller id); it writes its part of the count and target tables and, per
   occurrence, its context and whether it is in S (the top r) or may borrow a tail token.
3. draw: a pass in position order draws the random key of every occurrence that may borrow, from one stream seeded
   with `seed`, and appends it to its partition's file: the draws are those of one in-memory pass over the corpus.
4. deal: each partition, in a worker, deals its contexts' tail tokens to their in-S occurrences (ngram.py).
5. gather: a pass in position order writes the per-position records (context row, tail token) from the partitions'
   files; the per-context tables are the partitions' tables one after the other.

The files (beside the dataset, each folder a cache of data/files.py: a header.json of what it was built from and
each file's size and crc32; a folder built from other data or settings, with a file missing or changed on disk, is
rebuilt, never used):
    ngram_n{n}/                  row_context.npy (int32 per position: its context + 1, 0 = none), context_keys.npy
                                 (uint64), and each context's next tokens and counts, most frequent first, as rows
                                 ptr.npy (int64), next_ids.npy (uint16), counts.npy (int64): the exact targets
    ngram_n{n}_r{r}_seed{seed}/  tail_ids.npy (uint16 per position), top_ids.npy (uint16, r per context),
                                 top_probs.npy (float32, r per context), tail_probs.npy (float32 per context); row 0
                                 is the one-hot row of positions without a context: the compact targets
Kept on disk: 6 bytes per token, 68 per context and 10 per distinct pair; the work folder of a build (partition
files) peaks at about 2.3 times that.
"""

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import uuid
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.files import (load_cache, remove_dead_temporaries, reporting_full_disk, seal_cache,
                        temporary_path)

FORMAT = 2  # of the files, in their header: a change of their layout must rebuild them
NO_CONTEXT = np.uint16(65535)  # the route of a position without an in-document context
ELIGIBLE, IN_S = 1, 2  # flags of an occurrence: its context has a tail (it may borrow); its next token is in S
# Sizing, measured with tracemalloc: numpy's peak bytes per pair of a partition in the count step (the largest) when
# every pair is its own context (its worst case; a Zipf corpus needs half), and per position of a chunk in the passes
# over the corpus; a process's own footprint (interpreter, numpy) comes on top.
BYTES_PER_PAIR, BYTES_PER_PAIR_PER_TOP_TOKEN = 104, 6
BYTES_PER_POSITION = 48
PROCESS_MB = 60
SAMPLE_BLOCKS, SAMPLE_BLOCK = 256, 4096  # the sample of context keys that cuts the partitions
# Disk a build may need: the files kept (6 bytes a token, 68 a context, 10 a distinct pair; at most one context and
# one pair a position) times the work folder's peak of about 2.3 times them. A corpus uses a fraction of it.
BUILD_DISK_BYTES_PER_TOKEN = 2.3 * (6 + 68 + 10)


# --- the cache: load the files, or build them -------------------------------------------------------------------
def load_or_build(data_dir, tokens, n, r, seed, boundary_token, memory_mb, workers, compact=True):
    """The memory-mapped arrays of the counts (and, when compact, of the compact targets) of tokens, built first
    when missing, stale or damaged (data/files.py's cache folders, each file's crc32 checked)."""
    tokens_sha1, low, high = scan(tokens)
    check_tokens(len(tokens), n, low, high)
    counts_header = dict(format=FORMAT, n=n, boundary_token=boundary_token, n_tokens=len(tokens),
                         tokens_sha1=tokens_sha1)
    targets_header = dict(counts_header, r=r, seed=seed)
    counts_dir = Path(data_dir) / f"ngram_n{n}"
    targets_dir = Path(data_dir) / f"ngram_n{n}_r{r}_seed{seed}"
    wanted = [(counts_dir, counts_header)] + [(targets_dir, targets_header)] * compact
    arrays = load_folders(wanted)
    if arrays is None:
        remove_dead_temporaries(data_dir)  # a killed build's work folder holds more than the files kept
        # build writes into temporary folders, sealed here (header.json with each file's checksum) and renamed
        counts_work, targets_work = temporary_path(counts_dir), temporary_path(targets_dir)
        try:
            with reporting_full_disk(data_dir, needed=int(BUILD_DISK_BYTES_PER_TOKEN * len(tokens))):
                build(tokens, n, r, seed, boundary_token, max(1, int(high).bit_length()), counts_work, targets_work,
                      *plan(len(tokens) - 1, memory_mb, workers, r), workers, counts_header, targets_header)
                seal_cache(counts_work, counts_dir, counts_header)
                seal_cache(targets_work, targets_dir, targets_header)
        finally:
            for work in (counts_work, targets_work):
                shutil.rmtree(work, ignore_errors=True)
        arrays = load_folders(wanted)
    return arrays


def load_folders(wanted):
    """The arrays of the folders ((folder, header) pairs), memory-mapped, if every one is whole and holds its
    header; else None."""
    arrays = {}
    for folder, header in wanted:
        loaded = load_cache(folder, header)
        if loaded is None:
            return None
        arrays.update(loaded)
    return arrays


def scan(tokens, chunk=1 << 24):
    """The sha1 of the tokens' bytes, their smallest and their largest id, reading chunk by chunk."""
    sha1, low, high = hashlib.sha1(), 0, 0
    for start in range(0, len(tokens), chunk):
        piece = read_tokens(tokens, start, min(start + chunk, len(tokens)))
        sha1.update(np.ascontiguousarray(piece))
        low, high = min(low, int(piece.min())), max(high, int(piece.max()))
    return sha1.hexdigest(), low, high


def check_tokens(length, n, low, high):
    if n < 2:
        raise ValueError(f"n must be at least 2 (a context of n-1 >= 1 tokens), got {n}")
    if length < 2:
        raise ValueError(f"the corpus must hold at least 2 tokens, got {length}")
    if low < 0:
        raise ValueError("token ids must be non-negative integers")
    if high >= 2**16:
        raise ValueError(f"token id {high} does not fit the uint16 ids stored here: the n-gram targets support "
                         f"vocabularies of at most 65536 tokens")
    bits = max(1, high.bit_length())
    if n * bits > 64:
        raise ValueError(f"n = {n} tokens of {bits} bits do not fit the 64-bit keys the counts are packed into: "
                         f"use n <= {64 // bits}")


def least_memory_mb(workers):
    """The smallest memory bound that leaves the workers and the main process room to work: 16 MB each."""
    return (PROCESS_MB + 16) * (workers + 1)


def plan(n_positions, memory_mb, workers, r):
    """(partitions, chunk): how many partitions keep each worker's share of memory_mb, and how many positions a
    pass over the corpus reads at once."""
    if memory_mb < least_memory_mb(workers):
        raise ValueError(f"ngram_memory_mb = {memory_mb} leaves no room for {workers} worker(s) and the main process: "
                         f"raise it to at least {least_memory_mb(workers)} or lower ngram_workers")
    free_bytes = (memory_mb - PROCESS_MB * (workers + 1)) * 2**20
    pairs_per_partition = free_bytes // (workers * (BYTES_PER_PAIR + BYTES_PER_PAIR_PER_TOP_TOKEN * r))
    chunk = int(min(free_bytes // BYTES_PER_POSITION, 1 << 23))
    partitions = math.ceil(n_positions / pairs_per_partition)
    if partitions >= NO_CONTEXT:
        raise ValueError(f"{n_positions:,} positions in {memory_mb} MB need {partitions:,} partitions, more than the "
                         f"{NO_CONTEXT - 1:,} the routes can name: raise ngram_memory_mb")
    return partitions, chunk


def read_tokens(tokens, start, stop):
    """tokens[start:stop] in memory. A memmap is read through its file, so that the pages read do not stay mapped
    into the process and counted in its memory once the chunk is done."""
    if isinstance(tokens, np.memmap) and tokens.filename is not None:
        return np.fromfile(tokens.filename, tokens.dtype, stop - start, offset=tokens.offset + start * tokens.itemsize)
    return np.asarray(tokens[start:stop])


# --- the build ---------------------------------------------------------------------------------------------------
def build(tokens, n, r, seed, boundary_token, bits, counts_dir, targets_dir, partitions, chunk, workers,
          counts_header, targets_header):
    """Write counts_dir and targets_dir (steps 1-5 of the docstring), each in a temporary folder renamed into place."""
    work = counts_dir.parent / f".ngram_build.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    parts = work / "partitions"
    parts.mkdir(parents=True)
    show = len(tokens) >= 2**22
    try:
        splitters = partition_splitters(tokens, n, bits, boundary_token, partitions)
        route(tokens, n, bits, boundary_token, splitters, parts, chunk, show)
        warn_if_unbalanced(parts, len(splitters) + 1, -(-(len(tokens) - 1) // partitions))
        tables = run_partitions(partial(count_partition, parts, bits, r), len(splitters) + 1, workers,
                                "count", show)
        draw(len(tokens) - 1, seed, parts, len(splitters) + 1, chunk, show)
        run_partitions(partial(deal_partition, parts, bits), len(splitters) + 1, workers, "deal", show)
        gather(tokens, r, parts, tables, work / "counts", work / "targets", chunk, show)
        for folder, header, final in ((work / "counts", counts_header, counts_dir),
                                      (work / "targets", targets_header, targets_dir)):
            (folder / "header.json").write_text(json.dumps(header, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(folder, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chunk_keys(tokens, start, stop, n, bits, boundary_token):
    """For positions start..stop-1 (position i predicts tokens[i + 1]): whether it has an in-document context
    x_{i-n+2} ... x_i, its context packed into an integer (oldest token in the high bits) and its pair key
    (context, next token)."""
    first = max(0, start - (n - 2))
    window = np.concatenate((np.zeros(n - 2 - (start - first), np.uint64),
                             read_tokens(tokens, first, stop + 1).astype(np.uint64)))
    m = stop - start
    has_context = np.arange(start, stop) >= n - 2
    context_key = np.zeros(m, np.uint64)
    for back in range(n - 2, -1, -1):
        token = window[n - 2 - back:n - 2 - back + m]
        context_key = (context_key << np.uint64(bits)) | token
        if boundary_token is not None:
            has_context &= token != boundary_token
    return has_context, context_key, (context_key << np.uint64(bits)) | window[n - 1:n - 1 + m]


def partition_splitters(tokens, n, bits, boundary_token, partitions):
    """The context keys that cut the partitions: quantiles of the context keys of blocks spread over the corpus."""
    n_positions = len(tokens) - 1
    if partitions <= 1:
        return np.zeros(0, np.uint64)
    block = min(SAMPLE_BLOCK, n_positions)
    sample = []
    for start in np.linspace(0, n_positions - block, SAMPLE_BLOCKS).astype(np.int64):
        has_context, context_key, _ = chunk_keys(tokens, start, start + block, n, bits, boundary_token)
        sample.append(context_key[has_context])
    sample = np.sort(np.concatenate(sample))
    if len(sample) == 0:
        return np.zeros(0, np.uint64)
    return np.unique(sample[np.arange(1, partitions) * len(sample) // partitions])


def route(tokens, n, bits, boundary_token, splitters, parts, chunk, show):
    """Step 1: each position's partition (NO_CONTEXT if none) to parts/route.bin, its pair key to parts/{p}.keys."""
    n_positions = len(tokens) - 1
    with open(parts / "route.bin", "wb") as routes:
        for start in tqdm(range(0, n_positions, chunk), desc="n-gram targets: partition", disable=not show):
            stop = min(start + chunk, n_positions)
            has_context, context_key, pair_key = chunk_keys(tokens, start, stop, n, bits, boundary_token)
            partition = np.full(stop - start, NO_CONTEXT)
            partition[has_context] = np.searchsorted(splitters, context_key[has_context], side="right")
            routes.write(partition.tobytes())
            append_routed(pair_key[has_context], partition[has_context], parts, "keys")


def warn_if_unbalanced(parts, partitions, share):
    """Say so when a partition holds more than twice the pairs the memory bound gave it: one context's occurrences
    cannot be split across partitions, so a context that frequent makes its worker use more than its share."""
    sizes = [(parts / f"{p}.keys").stat().st_size // 8 if (parts / f"{p}.keys").exists() else 0
             for p in range(partitions)]
    if max(sizes) > 2 * share:
        print(f"warning: an n-gram partition holds {max(sizes):,} (context, next token) pairs, more than twice the "
              f"{share:,} ngram_memory_mb allows a worker: a few contexts are that frequent, and the build may use "
              f"more memory than ngram_memory_mb")


def append_routed(values, partition, parts, name):
    """Append values to the files parts/{p}.{name} of their partitions, in their order."""
    order = np.argsort(partition, kind="stable")
    counts = np.bincount(partition)
    bounds = np.append(0, np.cumsum(counts))
    for p in np.flatnonzero(counts):
        with open(parts / f"{p}.{name}", "ab") as f:
            f.write(values[order[bounds[p]:bounds[p + 1]]].tobytes())


def from_partitions(partition, parts, name, dtype, cursors):
    """The inverse of append_routed: the next values of each partition's file parts/{p}.{name}, put back in the
    order of the positions whose routes are `partition`; cursors (values read so far per partition) advance."""
    counts = np.bincount(partition, minlength=len(cursors))
    pieces = [np.fromfile(parts / f"{p}.{name}", dtype, counts[p], offset=cursors[p] * np.dtype(dtype).itemsize)
              for p in np.flatnonzero(counts)]
    cursors += counts
    values = np.empty(len(partition), dtype)
    values[np.argsort(partition, kind="stable")] = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    return values


def run_partitions(work, partitions, workers, step, show):
    """work(p) for every partition, in `workers` processes at once; the results in partition order."""
    desc = f"n-gram targets: {step} partitions"
    if workers <= 1 or partitions <= 1:
        return [work(p) for p in tqdm(range(partitions), desc=desc, disable=not show)]
    with multiprocessing.get_context().Pool(min(workers, partitions)) as pool:
        return list(tqdm(pool.imap(work, range(partitions)), desc=desc, total=partitions, disable=not show))


def count_partition(parts, bits, r, p):
    """Step 2 on partition p: count its pairs, rank each context's next tokens, and write its part of the tables
    and, per occurrence, its context (p.context) and flags (p.flags). Returns (contexts, distinct pairs)."""
    keys = read_part(parts, p, "keys", np.uint64)
    order = np.argsort(keys)
    keys = keys[order]
    new_pair = np.empty(len(keys), bool)
    new_pair[:1] = True
    new_pair[1:] = keys[1:] != keys[:-1]
    pair_of_row = np.cumsum(new_pair) - 1  # in sorted-row order
    pair_start = np.flatnonzero(new_pair)
    del new_pair
    counts = np.diff(np.append(pair_start, len(keys)))
    keys = keys[pair_start]
    del pair_start
    pair_context_key = keys >> np.uint64(bits)
    next_ids = (keys & np.uint64((1 << bits) - 1)).astype(np.uint16)
    del keys
    new_context = np.empty(len(counts), bool)
    new_context[:1] = True
    new_context[1:] = pair_context_key[1:] != pair_context_key[:-1]
    context_keys = pair_context_key[new_context]
    del pair_context_key
    pair_context = np.cumsum(new_context) - 1
    ptr = np.append(np.flatnonzero(new_context), len(counts))
    del new_context
    # Within each context: most frequent first, ties to the smaller id (the pairs are in id order and the sort is
    # stable, and fast since the contexts are already in order); the top r are then the first r.
    by_frequency = np.argsort(pair_context * (counts.max(initial=0) + 1) - counts, kind="stable")
    rank = np.empty(len(by_frequency), np.int64)
    rank[by_frequency] = np.arange(len(by_frequency))
    rank -= ptr[pair_context]
    context = np.empty(len(order), np.int32)
    context[order] = pair_context[pair_of_row]
    del pair_context
    in_s = np.empty(len(order), bool)
    in_s[order] = rank[pair_of_row] < r
    del order, pair_of_row, rank
    counts, next_ids = counts[by_frequency], next_ids[by_frequency]
    del by_frequency
    tables = top_r_tables(ptr, next_ids, counts, r)
    flags = (tables["tail_counts"][context] > 0) * np.uint8(ELIGIBLE) + in_s * np.uint8(IN_S)
    write_part(parts, p, context=context, flags=flags.astype(np.uint8), context_keys=context_keys, ptr=ptr[:-1],
               next_ids=next_ids, counts=counts, **tables)
    return len(context_keys), len(counts)


def top_r_tables(ptr, next_ids, counts, r):
    """Each context's top r next tokens (0 where it has fewer), their probabilities, and its tail's count and
    probability, one column at a time so that no (contexts, r) array wider than the tables is made."""
    totals = np.add.reduceat(counts, ptr[:-1]) if len(counts) else np.zeros(0, np.int64)
    degree = np.diff(ptr)
    top_ids = np.zeros((len(totals), r), np.uint16)
    top_probs = np.zeros((len(totals), r), np.float32)
    tail_counts = totals.copy()
    for j in range(r):
        has = np.flatnonzero(degree > j)
        pair = ptr[has] + j
        top_ids[has, j] = next_ids[pair]
        top_probs[has, j] = counts[pair] / totals[has]
        tail_counts[has] -= counts[pair]
    return dict(top_ids=top_ids, top_probs=top_probs, tail_counts=tail_counts,
                tail_probs=(tail_counts / totals).astype(np.float32))


def draw(n_positions, seed, parts, partitions, chunk, show):
    """Step 3: the random key of every occurrence that may borrow, drawn in position order from one seeded stream,
    to parts/{p}.random: the same draws as one pass over the whole corpus, in any number of chunks."""
    rng = np.random.default_rng(seed)
    cursors = np.zeros(partitions, np.int64)
    for start in tqdm(range(0, n_positions, chunk), desc="n-gram targets: draw", disable=not show):
        partition = np.fromfile(parts / "route.bin", np.uint16, min(chunk, n_positions - start), offset=2 * start)
        partition = partition[partition != NO_CONTEXT]
        eligible = from_partitions(partition, parts, "flags", np.uint8, cursors) & ELIGIBLE > 0
        random = rng.integers(0, 2**32, int(eligible.sum()), dtype=np.uint64).astype(np.uint32)
        append_routed(random, partition[eligible], parts, "random")


def deal_partition(parts, bits, p):
    """Step 4 on partition p: each occurrence's tail token (p.tail): its next token, or for an in-S occurrence of a
    context with a tail, the next token of one of its tail occurrences: the tail occurrences in the order of their
    random keys, dealt round-robin."""
    next_tokens = (read_part(parts, p, "keys", np.uint64) & np.uint64((1 << bits) - 1)).astype(np.uint16)
    context = read_part(parts, p, "context", np.int32)
    flags = read_part(parts, p, "flags", np.uint8)
    tail_counts = np.load(parts / f"{p}.tail_counts.npy")
    rows = np.flatnonzero(flags & ELIGIBLE)
    # Sort by (context, in S, random, position): each context's tail occurrences first, shuffled, then its in-S ones.
    key = (context[rows].astype(np.uint64) << np.uint64(33)) | ((flags[rows] & IN_S > 0).astype(np.uint64) << \
        np.uint64(32)) | read_part(parts, p, "random", np.uint32)
    rows = rows[np.argsort(key, kind="stable")]
    c = context[rows]
    group_start = np.searchsorted(c, c)  # sorted index of the first row of each row's context
    rank = np.arange(len(rows)) - group_start - tail_counts[c]  # 0, 1, ... over the in-S rows
    borrowing = rank >= 0
    source = rows[group_start + rank % tail_counts[c]]
    tail_ids = next_tokens.copy()
    tail_ids[rows[borrowing]] = next_tokens[source[borrowing]]
    tail_ids.tofile(parts / f"{p}.tail")


def read_part(parts, p, name, dtype):
    path = parts / f"{p}.{name}"
    return np.fromfile(path, dtype) if path.exists() else np.zeros(0, dtype)


def write_part(parts, p, context, flags, **tables):
    context.tofile(parts / f"{p}.context")
    flags.tofile(parts / f"{p}.flags")
    for name, table in tables.items():
        np.save(parts / f"{p}.{name}.npy", table)


def gather(tokens, r, parts, tables, counts_dir, targets_dir, chunk, show):
    """Step 5: the per-position records in position order and the per-context tables, partition after partition."""
    n_contexts, n_pairs = (int(total) for total in np.sum(tables, axis=0))
    if n_contexts + 1 >= 2**31:
        raise ValueError(f"{n_contexts:,} contexts do not fit the int32 context rows: lower ngram_n")
    partitions = len(tables)
    first_context = np.append(0, np.cumsum([contexts for contexts, _ in tables]))
    first_pair = np.append(0, np.cumsum([pairs for _, pairs in tables]))

    def part_tables(name, first=(), offsets=None, last=()):
        """first, then partition p's table `name` (plus offsets[p]) for every p in order, then last: one at a time."""
        yield from first
        for p in range(partitions):
            table = np.load(parts / f"{p}.{name}.npy")
            yield table if offsets is None else table + offsets[p]
        yield from last

    counts_dir.mkdir()
    targets_dir.mkdir()
    write_npy(counts_dir / "context_keys.npy", part_tables("context_keys"), np.uint64, (n_contexts,))
    write_npy(counts_dir / "ptr.npy", part_tables("ptr", offsets=first_pair, last=[[n_pairs]]), np.int64,
              (n_contexts + 1,))
    write_npy(counts_dir / "next_ids.npy", part_tables("next_ids"), np.uint16, (n_pairs,))
    write_npy(counts_dir / "counts.npy", part_tables("counts"), np.int64, (n_pairs,))
    # Row 0 of the target tables is the one-hot row: no top tokens, all the mass on the tail token.
    write_npy(targets_dir / "top_ids.npy", part_tables("top_ids", first=[np.zeros((1, r))]), np.uint16,
              (n_contexts + 1, r))
    write_npy(targets_dir / "top_probs.npy", part_tables("top_probs", first=[np.zeros((1, r))]), np.float32,
              (n_contexts + 1, r))
    write_npy(targets_dir / "tail_probs.npy", part_tables("tail_probs", first=[[1.0]]), np.float32,
              (n_contexts + 1,))

    n_positions = len(tokens) - 1
    cursors = np.zeros(partitions, np.int64)

    def records():
        for start in tqdm(range(0, n_positions, chunk), desc="n-gram targets: gather", disable=not show):
            stop = min(start + chunk, n_positions)
            partition = np.fromfile(parts / "route.bin", np.uint16, stop - start, offset=2 * start)
            routed = partition != NO_CONTEXT
            row_context = np.zeros(stop - start, np.int32)  # row 0: no context, the one-hot target
            tail_ids = read_tokens(tokens, start + 1, stop + 1).astype(np.uint16)
            tail_ids[routed] = from_partitions(partition[routed], parts, "tail", np.uint16, cursors.copy())
            row_context[routed] = from_partitions(partition[routed], parts, "context", np.int32, cursors) \
                + first_context[partition[routed]] + 1
            yield row_context, tail_ids

    with open(counts_dir / "row_context.npy", "wb") as contexts, open(targets_dir / "tail_ids.npy", "wb") as tails:
        write_npy_header(contexts, np.int32, (n_positions,))
        write_npy_header(tails, np.uint16, (n_positions,))
        for row_context, tail_ids in records():
            contexts.write(row_context.tobytes())
            tails.write(tail_ids.tobytes())


def write_npy(path, pieces, dtype, shape):
    """Write the arrays of pieces one after the other as one .npy file of the given shape, never all in memory."""
    with open(path, "wb") as f:
        write_npy_header(f, dtype, shape)
        for piece in pieces:
            f.write(np.asarray(piece, dtype).tobytes())


def write_npy_header(f, dtype, shape):
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
