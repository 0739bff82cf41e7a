"""
The n-gram statistics of a train split for ngram.py, counted out of core: the counts C(c, v) of every in-document
context c of n-1 tokens and the compact (CoCoNTs) targets, written to .npy files that training memory-maps. What
they are is ngram.build_targets, which computes the same files, bit for bit, in memory; ngram.load_targets uses
this build only for a corpus too large for that in its memory bound.

Memory stays under a bound (memory_mb) whatever the corpus's size, because no step holds more than a chunk of
positions or one partition of the (context, next token) pairs. Every step runs in worker processes, a chunk or a
partition per task; each chunk's files hold its positions' values grouped by partition (in position order within
each), so that a chunk task reads its files whole and a partition task reads its slice of every chunk's files:

1. route: each chunk packs its positions' contexts and (context, next token) pairs into 64-bit keys and writes each
   position's partition and the pair keys. Partitions are ranges of the context key, cut at quantiles of a sample
   of the corpus so that they come out about equal; every occurrence of a context lands in one partition, so each
   partition's counts are complete, and the partitions one after the other hold the contexts in key order, the
   order of the context table.
2. count: each partition sorts its keys, counts every pair and ranks each context's next tokens (most frequent
   first, ties to the smaller id); it writes its rows of the count and target tables into the final files, after
   the rows of the partitions before it (whose sizes the workers share), and per occurrence its context and whether
   it is in S (the top r) or may borrow a tail token.
3. draw: each chunk draws the random key of every occurrence that may borrow, in position order, from one stream
   seeded with `seed` and advanced past the chunks before it: the draws are those of one pass over the corpus.
4. deal: each partition deals its contexts' tail tokens to their in-S occurrences (ngram.build_targets).
5. gather: each chunk writes its per-position records (context row, tail token) where its positions are in the
   files.

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

import ctypes
import hashlib
import io
import math
import multiprocessing
import os
import shutil
import signal
import sys
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from data.files import (load_cache, remove_dead_temporaries, reporting_full_disk, seal_cache,
                        temporary_path)

FORMAT = 2  # of the files, in their header: a change of their layout must rebuild them
TARGET_FILES = ("tail_ids", "top_ids", "top_probs", "tail_probs")  # the compact targets' folder; the rest: the counts'
NO_CONTEXT = np.uint16(65535)  # the route of a position without an in-document context
ELIGIBLE, IN_S = 1, 2  # flags of an occurrence: its context has a tail (it may borrow); its next token is in S
# Sizing, measured with tracemalloc (docs/ngram.md): numpy's peak bytes per pair of a partition in the count step (the
# largest) when every pair is its own context (its worst case), and per position of a chunk in the route step (the
# largest of the chunk steps, with the tokens its task carries); a process's own footprint (interpreter, numpy)
# comes on top.
BYTES_PER_PAIR, BYTES_PER_PAIR_PER_TOP_TOKEN = 94, 6
BYTES_PER_POSITION = 42
PROCESS_MB = 60
# Partitions and chunks of at most 2**21 pairs or positions, though memory allows more: a larger partition sorts no
# faster per key, and glibc maps each array over 32 MB anew, its pages faulted in again, where it reuses smaller
# ones from its heap (docs/ngram.md has the measurement).
# Only a corpus too large for that many partitions or chunks (MAX_CHUNKS: a partition task reads a slice of each)
# takes larger ones.
STEP_SIZE, MAX_CHUNKS = 2**21, 256
SAMPLE_BLOCKS, SAMPLE_BLOCK = 256, 4096  # the sample of context keys that cuts the partitions
# Disk a build may need: the files kept (6 bytes a token, 68 a context, 10 a distinct pair; at most one context and
# one pair a position) times the work folder's peak of about 2.3 times them. A corpus uses a fraction of it.
BUILD_DISK_BYTES_PER_TOKEN = 2.3 * (6 + 68 + 10)


class Spec(NamedTuple):
    """What the files are built from besides the tokens: n, r, the seed of the tail draws, the token that ends a
    document (None: none) and the bits a token takes in the packed keys."""
    n: int
    r: int
    seed: int
    boundary_token: int | None
    bits: int


class Plan(NamedTuple):
    """How a build fits its memory bound: the partitions of the pairs, the positions of a chunk, the worker
    processes, which take partitions or chunks `workers` at a time, and the most pairs a worker's share of the
    bound holds."""
    partitions: int
    chunk: int
    workers: int
    worker_pairs: int


# --- the cache: load the files, or build them -------------------------------------------------------------------
def load_or_build(data_dir, tokens, n, r, seed, boundary_token, memory_mb, workers, compact=True,
                  build_in_memory=None):
    """The memory-mapped arrays of the counts (and, when compact, of the compact targets) of tokens, built first
    when missing, stale or damaged (data/files.py's cache folders, each file's crc32 checked): out of core, or by
    build_in_memory(tokens, n, r, seed, boundary_token) -> {name: array} when given (ngram.build_targets, which
    computes the same files, so that either build's files are valid for the other)."""
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
        print(f"building the n-gram {'counts and compact targets' if compact else 'counts'} of {len(tokens):,} train "
              f"tokens (n = {n}{f', r = {r}' if compact else ''}, {'in memory' if build_in_memory else 'out of core'}) "
              f"into {data_dir}: once, then read from there")
        remove_dead_temporaries(data_dir)  # a killed build's work folder holds more than the files kept
        # build writes into temporary folders, sealed here (header.json with each file's checksum) and renamed
        counts_work, targets_work = temporary_path(counts_dir), temporary_path(targets_dir)
        try:
            with reporting_full_disk(data_dir, needed=int(BUILD_DISK_BYTES_PER_TOKEN * len(tokens))):
                if build_in_memory is None:
                    build(tokens, Spec(n, r, seed, boundary_token, max(1, int(high).bit_length())),
                          plan(len(tokens) - 1, memory_mb, workers, r), counts_work, targets_work)
                else:
                    for name, array in build_in_memory(tokens, n, r, seed, boundary_token).items():
                        work = targets_work if name in TARGET_FILES else counts_work
                        work.mkdir(parents=True, exist_ok=True)
                        np.save(work / f"{name}.npy", array)
                seal_cache(counts_work, counts_dir, counts_header)
                seal_cache(targets_work, targets_dir, targets_header)
        finally:
            for work in (counts_work, targets_work):
                shutil.rmtree(work, ignore_errors=True)
        arrays = load_folders(wanted, verify=False)  # sealed just now, with checksums read from these very files
    return arrays


def load_folders(wanted, verify=True):
    """The arrays of the folders ((folder, header) pairs), memory-mapped, if every one is whole and holds its
    header (and, if verify, each file its checksum); else None."""
    arrays = {}
    for folder, header in wanted:
        loaded = load_cache(folder, header, verify)
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
    """Plan(...): partitions small enough for each worker's share of memory_mb, and chunks of positions as large as
    a pass over the corpus may hold in that share, both at most STEP_SIZE when the corpus allows."""
    if memory_mb < least_memory_mb(workers):
        raise ValueError(f"ngram_memory_mb = {memory_mb} leaves no room for {workers} worker(s) and the main process: "
                         f"raise it to at least {least_memory_mb(workers)} or lower ngram_workers")
    share = (memory_mb - PROCESS_MB * (workers + 1)) * 2**20 // workers
    routes = int(NO_CONTEXT) - 1  # the partitions a route can name
    worker_pairs = share // (BYTES_PER_PAIR + BYTES_PER_PAIR_PER_TOP_TOKEN * r)
    pairs_per_partition = min(worker_pairs, max(STEP_SIZE, -(-n_positions // routes)))
    partitions = -(-n_positions // pairs_per_partition)
    if partitions > routes:
        raise ValueError(f"{n_positions:,} positions in {memory_mb} MB need {partitions:,} partitions, more than the "
                         f"{routes:,} the routes can name: raise ngram_memory_mb")
    chunk = min(share // BYTES_PER_POSITION, max(STEP_SIZE, -(-n_positions // MAX_CHUNKS)))
    return Plan(partitions, chunk, workers, worker_pairs)


def read_tokens(tokens, start, stop):
    """tokens[start:stop] in memory. A memmap is read through its file, so that the pages read do not stay mapped
    into the process and counted in its memory once the chunk is done."""
    if isinstance(tokens, np.memmap) and tokens.filename is not None:
        return np.fromfile(tokens.filename, tokens.dtype, stop - start, offset=tokens.offset + start * tokens.itemsize)
    return np.asarray(tokens[start:stop])


# --- the build ---------------------------------------------------------------------------------------------------
def build(tokens, spec, plan, counts_dir, targets_dir):
    """Write the counts into counts_dir and the compact targets into targets_dir (steps 1-5 of the docstring), in a
    work folder whose results are renamed into place."""
    work = counts_dir.parent / f".ngram_build.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    parts = work / "partitions"
    for folder in (parts, work / "counts", work / "targets"):
        folder.mkdir(parents=True)
    n_positions = len(tokens) - 1
    chunks = [(start, min(start + plan.chunk, n_positions)) for start in range(0, n_positions, plan.chunk)]
    show = len(tokens) >= 2**22
    try:
        splitters = partition_splitters(tokens, spec.n, spec.bits, spec.boundary_token, plan.partitions)
        with worker_pool(min(plan.workers, max(len(chunks), len(splitters) + 1)), len(splitters) + 1) as run:
            routed = route(run, tokens, spec, splitters, parts, chunks, show)
            warn_if_unbalanced(routed.sum(axis=0), plan.worker_pairs)
            sizes, eligible = count(run, parts, spec, work, routed, show)
            draw(run, parts, spec.seed, eligible, show)
            deal(run, parts, spec.bits, routed, eligible, show)
            gather(run, tokens, parts, work, routed, sizes, chunks, show)
        write_headers(work, spec.r, n_positions, *(int(total) for total in sizes.sum(axis=0)))
        for folder, built in ((counts_dir, work / "counts"), (targets_dir, work / "targets")):
            os.replace(built, folder)
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
    has_context = np.ones(m, bool)
    has_context[:max(0, n - 2 - start)] = False  # the first n - 2 positions of the corpus have none
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


SIZES = None  # in every process of a build: (sizes, changed), the table sizes of the partitions counted so far


def share_sizes(sizes):
    global SIZES
    SIZES = sizes


def start_worker(sizes):
    """A worker leaves Ctrl-C to the main process, which stops the pool and removes the build's work folder, and
    dies with the main process when that one is killed (Linux): a worker that took Ctrl-C itself, or outlived a
    killed parent and found its pipe gone, would print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    share_sizes(sizes)


@contextmanager
def worker_pool(workers, partitions):
    """A map over tasks in `workers` processes (in this one when 1), results in task order; the processes share
    the table sizes of the partitions counted so far (tables_start)."""
    sizes = multiprocessing.Array("q", [-1] * 2 * partitions, lock=False), multiprocessing.Condition()
    if workers <= 1:
        share_sizes(sizes)
        yield map
        return
    with multiprocessing.get_context().Pool(workers, start_worker, (sizes,)) as pool:
        yield pool.imap


def progress(results, step, total, show):
    return list(tqdm(results, desc=f"n-gram targets: {step}", total=total, disable=not show))


def route(run, tokens, spec, splitters, parts, chunks, show):
    """Step 1, a chunk of positions per task. Returns routed[c, p]: how many of chunk c's pairs are partition p's."""
    lookup = partition_lookup(splitters, (spec.n - 1) * spec.bits)
    tasks = ((c, start, stop, read_tokens(tokens, max(0, start - (spec.n - 2)), stop + 1))
             for c, (start, stop) in enumerate(chunks))
    return np.array(progress(run(partial(route_chunk, parts, spec, splitters, lookup), tasks), "partition",
                             len(chunks), show), np.int64)


def route_chunk(parts, spec, splitters, lookup, task):
    """Each position's partition (NO_CONTEXT if none) to parts/{c}.route, and its pair key to parts/{c}.keys,
    grouped by partition and in position order within each: partition p is its slice of every chunk's files."""
    c, start, stop, window = task
    first = max(0, start - (spec.n - 2))  # window = tokens[first:stop + 1]
    has_context, context_key, pair_key = chunk_keys(window, start - first, stop - first, spec.n, spec.bits,
                                                    spec.boundary_token)
    partition = partition_of(context_key, splitters, lookup)
    partition[~has_context] = NO_CONTEXT
    partition.tofile(parts / f"{c}.route")
    pair_key[grouped(partition)].tofile(parts / f"{c}.keys")
    return np.bincount(partition, minlength=int(NO_CONTEXT) + 1)[:len(splitters) + 1]


def partition_lookup(splitters, key_bits):
    """(shift, partition, split): for each value of a context key's top 16 bits, the partition of the smallest key
    with those bits, and whether a splitter falls among those keys."""
    shift = np.uint64(max(0, key_bits - 16))
    smallest = np.arange(2 ** min(16, key_bits), dtype=np.uint64) << shift
    partition = np.searchsorted(splitters, smallest, side="right").astype(np.uint16)
    largest = smallest + ((np.uint64(1) << shift) - np.uint64(1))
    return shift, partition, partition != np.searchsorted(splitters, largest, side="right")


def partition_of(context_key, splitters, lookup):
    """Each context key's partition: looked up by its top 16 bits, and searched among the splitters only where a
    splitter falls among the keys with those bits (a binary search costs twice the lookup)."""
    shift, partition, split = lookup
    top = context_key >> shift
    found = partition[top]
    unsure = np.flatnonzero(split[top])
    found[unsure] = np.searchsorted(splitters, context_key[unsure], side="right")
    return found


def grouped(partition):
    """The positions that have a partition, grouped by it and in position order within each: a stable radix sort."""
    return np.argsort(partition, kind="stable")[:np.count_nonzero(partition != NO_CONTEXT)]


def warn_if_unbalanced(sizes, worker_pairs):
    """Say so when a partition holds more than twice the pairs a worker's share of the memory bound holds: one
    context's occurrences cannot be split across partitions, so a context that frequent makes its worker use more."""
    if sizes.max(initial=0) > 2 * worker_pairs:
        print(f"warning: an n-gram partition holds {sizes.max():,} (context, next token) pairs, more than twice the "
              f"{worker_pairs:,} ngram_memory_mb allows a worker: a few contexts are that frequent, and the build may "
              f"use more memory than ngram_memory_mb")


def count(run, parts, spec, work, routed, show):
    """Step 2, a partition per task. Returns sizes[p] (its contexts and distinct pairs) and eligible[c, p] (how
    many of its occurrences in chunk c may borrow)."""
    starts = np.cumsum(routed, axis=1) - routed  # where partition p's slice of chunk c's files begins
    tasks = ((p, starts[:, p], routed[:, p]) for p in range(routed.shape[1]))
    results = progress(run(partial(count_partition, parts, spec, work), tasks), "count partitions",
                       routed.shape[1], show)
    sizes = np.array([size for size, _ in results], np.int64).reshape(-1, 2)
    if sizes[:, 0].sum() + 1 >= 2**31:
        raise ValueError(f"{sizes[:, 0].sum():,} contexts do not fit the int32 context rows: lower ngram_n")
    return sizes, np.array([eligible for _, eligible in results], np.int64).T.reshape(routed.shape)


def count_partition(parts, spec, work, task):
    """Sort partition p's pair keys, count every pair and rank each context's next tokens (most frequent first, ties
    to the smaller id); each occurrence's context and flags to the chunk files, and the partition's rows of the
    tables into the final files, after the rows of the partitions before it."""
    p, starts, lengths = task
    keys, order = sort_with_order(read_slices(parts, "keys", np.uint64, starts, lengths))
    pair_counts, next_ids, context_keys, ptr = count_sorted(keys, spec.bits)
    del keys
    publish_sizes(p, len(context_keys), len(pair_counts))
    degree = np.diff(ptr, append=len(pair_counts))
    pair_context = np.repeat(np.arange(len(ptr), dtype=np.int32), degree)
    # The pairs are in id order within each context and the sort is stable (and fast: the contexts are in order).
    by_frequency = np.argsort(pair_context.astype(np.int64) * (pair_counts.max(initial=0) + 1) - pair_counts,
                              kind="stable")
    rank = np.arange(len(by_frequency)) - np.repeat(ptr, degree)  # each pair's place in its context, by frequency
    pair_flags = np.repeat(degree > spec.r, degree) * np.uint8(ELIGIBLE)
    pair_flags[by_frequency] |= (rank < spec.r) * np.uint8(IN_S)
    eligible = write_occurrences(parts, order, pair_counts, pair_context, pair_flags, starts, lengths)
    del order, degree, pair_flags
    next_ids, pair_counts = next_ids[by_frequency], pair_counts[by_frequency]
    del by_frequency
    first_context, first_pair = tables_start(p)
    write_tables(work, spec.r, first_context, first_pair, context_keys=context_keys, ptr=ptr + first_pair,
                 next_ids=next_ids, counts=pair_counts,
                 **top_r_tables(pair_context, rank, next_ids, pair_counts, ptr, spec.r))
    return (len(context_keys), len(pair_counts)), eligible


def sort_with_order(keys):
    """keys (overwritten) sorted, and where each came from, equal keys in their order in keys: what
    np.argsort(kind="stable") gives, 2-3 times faster. The keys are grouped into buckets of about 2**11 by their high
    bits (a stable radix sort of a 16-bit digit), which frees those bits for each key's index, packed into its low bits;
    then np.sort of each bucket. Sorts that small run in cache, and np.sort moves the keys, where np.argsort compares
    them through indices. np.argsort itself when a key and its index do not fit in 64 + 16 bits."""
    if len(keys) == 0:
        return keys, np.zeros(0, np.int64)
    index_bits = max(1, (len(keys) - 1).bit_length())
    low = keys.min()
    keys -= low
    key_bits = int(keys.max()).bit_length()
    digit_bits = min(16, key_bits, max(key_bits + index_bits - 64, (len(keys) >> 11).bit_length()))
    if key_bits + index_bits - digit_bits > 64:
        order = np.argsort(keys, kind="stable")
        return keys[order] + low, order
    low_bits = np.uint64(key_bits - digit_bits)
    bucket = (keys >> low_bits).astype(np.uint16)
    order = np.argsort(bucket, kind="stable")
    sizes = np.bincount(bucket, minlength=1 << digit_bits)
    del bucket
    packed = ((keys[order] & ((np.uint64(1) << low_bits) - np.uint64(1))) << np.uint64(index_bits)) \
        | order.view(np.uint64)
    del keys
    for start, stop in zip(np.cumsum(sizes) - sizes, np.cumsum(sizes)):
        packed[start:stop].sort()
    np.bitwise_and(packed, np.uint64((1 << index_bits) - 1), out=order.view(np.uint64))
    packed >>= np.uint64(index_bits)
    packed |= np.repeat(np.arange(len(sizes), dtype=np.uint64) << low_bits, sizes)
    return packed + low, order


def count_sorted(keys, bits):
    """From sorted pair keys: each distinct pair's count and next token, each context's key and first pair."""
    pair_start = run_starts(keys)
    pair_counts = np.diff(pair_start, append=len(keys))
    pair_keys = keys[pair_start]
    context_of_pair = pair_keys >> np.uint64(bits)
    ptr = run_starts(context_of_pair)
    return pair_counts, (pair_keys & np.uint64((1 << bits) - 1)).astype(np.uint16), context_of_pair[ptr], ptr


def run_starts(values):
    """Where each run of equal values begins."""
    return np.flatnonzero(np.append(True, values[1:] != values[:-1]))[:len(values)]


def publish_sizes(p, contexts, pairs):
    sizes, changed = SIZES
    with changed:
        sizes[2 * p], sizes[2 * p + 1] = contexts, pairs
        changed.notify_all()


def tables_start(p):
    """(first context, first pair) of partition p in the tables: the sizes of the partitions before it, waited for.
    The workers take the partitions in order, so each of those is being counted and publishes its sizes before it
    waits itself: no process waits for one that waits for it."""
    sizes, changed = SIZES
    with changed:
        changed.wait_for(lambda: min(sizes[:2 * p], default=0) >= 0)
        return sum(sizes[:2 * p:2]), sum(sizes[1:2 * p:2])


def write_occurrences(parts, order, pair_counts, pair_context, pair_flags, starts, lengths):
    """Each occurrence's context (in the partition) and flags, back in position order (order: where each sorted key
    came from), to the chunk files. Returns how many of its occurrences in each chunk may borrow."""
    context = np.empty(len(order), np.int32)
    context[order] = np.repeat(pair_context, pair_counts)
    write_slices(parts, "context", context, starts, lengths)
    del context
    flags = np.empty(len(order), np.uint8)
    flags[order] = np.repeat(pair_flags, pair_counts)
    write_slices(parts, "flags", flags, starts, lengths)
    return [np.count_nonzero(piece & ELIGIBLE) for piece in np.split(flags, np.cumsum(lengths)[:-1])]


def top_r_tables(pair_context, rank, next_ids, counts, ptr, r):
    """Each context's top r next tokens (0 where it has fewer) and their probabilities, and its tail's probability,
    from its pairs in frequency order (rank: a pair's place in its context)."""
    totals = np.add.reduceat(counts, ptr) if len(counts) else np.zeros(0, np.int64)
    top = np.flatnonzero(rank < r)
    cell = pair_context[top].astype(np.int64) * r + rank[top]
    top_ids = np.zeros((len(ptr), r), np.uint16)
    top_ids.reshape(-1)[cell] = next_ids[top]
    top_probs = np.zeros((len(ptr), r), np.float32)
    top_probs.reshape(-1)[cell] = counts[top] / totals[pair_context[top]]
    tail_counts = totals - (np.add.reduceat(np.where(rank < r, counts, 0), ptr) if len(counts) else 0)
    return dict(top_ids=top_ids, top_probs=top_probs, tail_probs=(tail_counts / totals).astype(np.float32))


def table_layout(r):
    """name: (folder, dtype, shape of a row, what its rows are of, rows before the first partition's) of the tables
    the partitions write; the targets' row 0 is the one-hot row of the positions without a context."""
    return dict(context_keys=("counts", np.uint64, (), "context", 0), ptr=("counts", np.int64, (), "context", 0),
                next_ids=("counts", np.uint16, (), "pair", 0), counts=("counts", np.int64, (), "pair", 0),
                top_ids=("targets", np.uint16, (r,), "context", 1),
                top_probs=("targets", np.float32, (r,), "context", 1),
                tail_probs=("targets", np.float32, (), "context", 1))


def write_tables(work, r, first_context, first_pair, **tables):
    """A partition's rows of the tables, written into the final .npy files after their headers (written last)."""
    for name, (folder, dtype, row, of, before) in table_layout(r).items():
        first = before + (first_context if of == "context" else first_pair)
        offset = len(npy_header(dtype, (0, *row))) + first * math.prod(row) * np.dtype(dtype).itemsize
        write_at(work / folder / f"{name}.npy", offset, tables[name].astype(dtype, copy=False))


def write_headers(work, r, n_positions, n_contexts, n_pairs):
    """The .npy headers, now that every shape is known (a header's length does not depend on the first axis, for
    which numpy pads), the targets' one-hot row 0 and the end of ptr."""
    for name, (folder, dtype, row, of, before) in table_layout(r).items():
        rows = before + (n_contexts if of == "context" else n_pairs) + (name == "ptr")
        write_at(work / folder / f"{name}.npy", 0, np.frombuffer(npy_header(dtype, (rows, *row)), np.uint8))
    for folder, name, dtype in (("counts", "row_context", np.int32), ("targets", "tail_ids", np.uint16)):
        write_at(work / folder / f"{name}.npy", 0, np.frombuffer(npy_header(dtype, (n_positions,)), np.uint8))
    write_at(work / "counts" / "ptr.npy", len(npy_header(np.int64, (0,))) + 8 * n_contexts, np.array([n_pairs]))
    write_at(work / "targets" / "top_ids.npy", len(npy_header(np.uint16, (0, r))), np.zeros(r, np.uint16))
    write_at(work / "targets" / "top_probs.npy", len(npy_header(np.float32, (0, r))), np.zeros(r, np.float32))
    write_at(work / "targets" / "tail_probs.npy", len(npy_header(np.float32, (0,))), np.ones(1, np.float32))


def draw(run, parts, seed, eligible, show):
    """Step 3, a chunk per task, each starting the stream where the chunks before it leave it."""
    first = np.cumsum(eligible.sum(axis=1)) - eligible.sum(axis=1)
    progress(run(partial(draw_chunk, parts, seed), enumerate(first)), "draw", len(eligible), show)


def draw_chunk(parts, seed, task):
    """The random keys of chunk c's occurrences that may borrow, drawn in position order (first: the draws before
    them), to parts/{c}.random, grouped by partition as the chunk's other files."""
    c, first = task
    partition = np.fromfile(parts / f"{c}.route", np.uint16)
    order = grouped(partition)
    may_borrow = read_part(parts, c, "flags", np.uint8) & ELIGIBLE > 0  # grouped by partition
    in_position_order = np.zeros(len(partition), bool)
    in_position_order[order] = may_borrow
    random = np.zeros(len(partition), np.uint32)
    random[in_position_order] = draws(seed, first, np.count_nonzero(may_borrow))
    random[order][may_borrow].tofile(parts / f"{c}.random")


def draws(seed, first, count):
    """Draws first .. first + count - 1 of np.random.default_rng(seed).integers(0, 2**32, dtype=np.uint64), called
    in one pass: PCG64 makes 64 bits a step and such a draw takes 32 of them, so the generator is advanced by
    first // 2 steps, and when first is odd one draw is thrown away."""
    rng = np.random.default_rng(seed)
    rng.bit_generator.advance(int(first) // 2)
    if first % 2:
        rng.integers(0, 2**32, 1, dtype=np.uint64)
    return rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)


def deal(run, parts, bits, routed, eligible, show):
    """Step 4, a partition per task; then the files only it needed are deleted, which frees their page cache for the
    records written next."""
    starts, random_starts = (np.cumsum(a, axis=1) - a for a in (routed, eligible))
    tasks = ((starts[:, p], routed[:, p], random_starts[:, p], eligible[:, p]) for p in range(routed.shape[1]))
    progress(run(partial(deal_partition, parts, bits), tasks), "deal partitions", routed.shape[1], show)
    for c in range(len(routed)):
        for name in ("keys", "flags", "random"):
            (parts / f"{c}.{name}").unlink(missing_ok=True)


def deal_partition(parts, bits, task):
    """Each occurrence's tail token, to the chunk files: its next token, or for an in-S occurrence of a context with
    a tail, the next token of one of its tail occurrences: the tail occurrences in the order of their random keys,
    dealt round-robin."""
    starts, lengths, random_starts, random_lengths = task
    keys = read_slices(parts, "keys", np.uint64, starts, lengths)
    next_tokens = (keys & np.uint64((1 << bits) - 1)).astype(np.uint16)
    del keys
    flags = read_slices(parts, "flags", np.uint8, starts, lengths)
    rows = np.flatnonzero(flags & ELIGIBLE)
    # Sorted by (context, in S, random, position): each context's tail occurrences first, shuffled, then its in-S ones.
    group = (read_slices(parts, "context", np.int32, starts, lengths)[rows].astype(np.uint64) << np.uint64(1)) \
        | (flags[rows] & IN_S > 0)
    key, order = sort_with_order((group << np.uint64(32)) | read_slices(parts, "random", np.uint32, random_starts,
                                                                         random_lengths))
    rows, group = rows[order], key >> np.uint64(32)
    # A context's rows are two runs, its tail occurrences then its in-S ones: a context with a tail has both.
    run_start = run_starts(group)
    tail_start, in_s_start = run_start[0::2], run_start[1::2]
    in_s_count = np.append(tail_start[1:], len(rows)) - in_s_start
    place = np.arange(in_s_count.sum()) - np.repeat(np.cumsum(in_s_count) - in_s_count, in_s_count)
    borrowing = rows[np.repeat(in_s_start, in_s_count) + place]
    source = rows[np.repeat(tail_start, in_s_count) + place % np.repeat(in_s_start - tail_start, in_s_count)]
    tail = next_tokens.copy()
    tail[borrowing] = next_tokens[source]
    write_slices(parts, "tail", tail, starts, lengths)


def gather(run, tokens, parts, work, routed, sizes, chunks, show):
    """Step 5, a chunk per task: the per-position records, written where the chunk's positions are in the files."""
    first_row = np.cumsum(sizes[:, 0]) - sizes[:, 0] + 1  # each partition's first context row; row 0: no context
    tasks = ((c, start, routed[c], read_tokens(tokens, start + 1, stop + 1)) for c, (start, stop) in enumerate(chunks))
    progress(run(partial(gather_chunk, parts, work, first_row), tasks), "gather", len(chunks), show)


def gather_chunk(parts, work, first_row, task):
    """Chunk c's context rows and tail tokens in position order; its files, read, are deleted."""
    c, start, routed, next_tokens = task
    order = grouped(np.fromfile(parts / f"{c}.route", np.uint16))
    row_context = np.zeros(len(next_tokens), np.int32)
    row_context[order] = read_part(parts, c, "context", np.int32) + np.repeat(first_row.astype(np.int32), routed)
    tail_ids = next_tokens.astype(np.uint16)
    tail_ids[order] = read_part(parts, c, "tail", np.uint16)
    write_at(work / "counts" / "row_context.npy", len(npy_header(np.int32, (0,))) + 4 * start, row_context)
    write_at(work / "targets" / "tail_ids.npy", len(npy_header(np.uint16, (0,))) + 2 * start, tail_ids)
    for name in ("route", "context", "tail"):
        (parts / f"{c}.{name}").unlink(missing_ok=True)


def read_part(parts, c, name, dtype):
    """Chunk c's whole file parts/{c}.{name} (none when no position of the chunk has a context)."""
    path = parts / f"{c}.{name}"
    return np.fromfile(path, dtype) if path.exists() else np.zeros(0, dtype)


def read_slices(parts, name, dtype, starts, lengths):
    """A partition's values from the chunk files parts/{c}.{name}: lengths[c] of them from value starts[c] of each."""
    values = np.empty(lengths.sum(), dtype)
    for c, at in zip(np.flatnonzero(lengths), np.cumsum(lengths)[lengths > 0] - lengths[lengths > 0]):
        with open(parts / f"{c}.{name}", "rb") as f:
            f.seek(int(starts[c]) * values.itemsize)
            f.readinto(values[at:at + lengths[c]].data)
    return values


def write_slices(parts, name, values, starts, lengths):
    """The inverse of read_slices: values, cut into pieces of lengths[c], written at value starts[c] of each chunk's
    file parts/{c}.{name}."""
    for c, at in zip(np.flatnonzero(lengths), np.cumsum(lengths)[lengths > 0] - lengths[lengths > 0]):
        write_at(parts / f"{c}.{name}", int(starts[c]) * values.itemsize, values[at:at + lengths[c]])


def write_at(path, offset, values):
    """Write values' bytes at byte `offset` of the file at path, created if missing: processes write their parts of
    one file."""
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as f:
        f.seek(offset)
        f.write(np.ascontiguousarray(values).data)


def npy_header(dtype, shape):
    """The header of a version 1.0 .npy file of that dtype and shape."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
    return f.getvalue()
