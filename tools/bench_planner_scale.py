"""
The planner's data at its papers' scale (about 285k Wikipedia articles: 170M tokens, 7M sentences): the build of
data/sentences_scale.py (split, LSA fit, k-means, labels) and a training step's gather (PlanData.batch) on synthetic
corpora of 10M, 50M and 200M GPT-2 tokens, each run in a fresh process sampled from /proc as tools/bench.py's n-gram
scale table is (bench_scale.run_measured): their time, and their peak memory against the bound of the README.

    python -m tools.bench_planner_scale                                  # 10M, 50M and 200M tokens
    python -m tools.bench_planner_scale --plan_scale_millions="(10,)"    # one size

A corpus is wiki's train sentences resampled into documents of 5 to 35 sentences (~560 tokens; the papers' articles
~600), each followed by EOT, written straight in data/dataset.py's format with the sentences' own tokens, so that
nothing is encoded again: 200M tokens take 18 s. Only sentences that start with a space and a word and end
without whitespace are drawn: GPT-2's pre-tokenizer cuts before such a space, so the tokens of sentences joined are
the tokens of their texts joined (the build checks it of every document). A corpus is deleted once measured.
"""

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from configurator import configure
from data import sentences, sentences_scale
from data.dataset import FORMAT_VERSION, META, load_meta, load_tokens
from data.files import crc32
from data.prepare import ensure_prepared
from tools.bench_scale import SCALE_DIR, run_measured

# -----------------------------------------------------------------------------
plan_scale_millions = (10, 50, 200)  # corpus sizes, millions of train tokens (val: a hundredth of that)
plan_scale_keep = False  # keep the corpora in data/_bench/ (21 bytes a token with their caches: 4 GB at 200M)
# -----------------------------------------------------------------------------
EOT = 50256
SENTENCES_PER_DOCUMENT = (5, 35)
K, SEED = 64, 0  # train.py's plan_k and plan_seed
B, T, M = 12, 64, 8  # train.py's batch_size, block_size and plan_context


def bench_plan_scale(millions, keep=False):
    """The table: a synthetic corpus of each size in millions of tokens, built and gathered from, then deleted
    unless keep."""
    print(f"\nplanner data at scale: LSA labels, K = {K}; gather: PlanData.batch of {B} x {T} windows, plan_context "
          f"{M}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    print("| tokens | sentences | split s | LSA fit s | sample embed s | k-means s | label + write s | build s | "
          "build peak MB (PSS / own) | gather ms | gather peak MB (own) |\n" + "|---" * 11 + "|")
    for n in millions:
        folder = str(synthetic_corpus(n * 10**6))
        build, build_memory = run_measured("tools.bench_planner_scale.build_at_scale", folder)
        gather, gather_memory = run_measured("tools.bench_planner_scale.gather_at_scale", folder)
        s = build["seconds"]
        print(f"| {build['tokens'] / 1e6:.0f}M | {build['sentences']:,} | {s['split_documents']:.0f} | {s['fit']:.0f} "
              f"| {s['embed_in_batches']:.0f} | {s['kmeans']:.0f} | {s['write_labelled']:.0f} | {s['total']:.0f} | "
              f"{build_memory['pss'] / 2**20:,.0f} / {build_memory['anonymous'] / 2**20:,.0f} | "
              f"{gather['gather_ms']:.2f} | {gather_memory['anonymous'] / 2**20:,.0f} |", flush=True)
        if not keep:
            shutil.rmtree(folder)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def build_at_scale(folder):
    """Build the planner's data of folder afresh, as PlanData does, with the time spent in each step of the build
    (split_documents, LSA.fit, embed_in_batches: the k-means sample, kmeans, write_labelled: the other sentences
    embedded, labelled and written). Run by run_measured, in a fresh process."""
    for built in Path(folder).glob("plan_*"):
        shutil.rmtree(built)
    seconds = {}

    def timed(name, step):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            result = step(*args, **kwargs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            return result
        return run

    for module, name in ((sentences_scale, "split_documents"), (sentences_scale, "embed_in_batches"),
                         (sentences, "kmeans"), (sentences_scale, "write_labelled")):
        setattr(module, name, timed(name, getattr(module, name)))
    sentences.LSA.fit = timed("fit", sentences.LSA.fit)
    t0 = time.perf_counter()
    data = sentences.PlanData(folder, K, "lsa", SEED)
    seconds["total"] = time.perf_counter() - t0
    return dict(seconds=seconds, tokens=len(data.token_sentence["train"]), sentences=len(data.labels["train"]))


def gather_at_scale(folder, steps=300):
    """The median time of PlanData.batch for random windows, as train.py samples them, over steps batches (the
    first 20 untimed). Run by run_measured, in a fresh process."""
    data = sentences.PlanData(folder, K, "lsa", SEED)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(steps):
        ix = torch.randint(len(data.token_sentence["train"]) - T, (B,), generator=generator)
        t0 = time.perf_counter()
        data.batch("train", ix, T, M)
        seconds.append(time.perf_counter() - t0)
    return dict(gather_ms=1000 * statistics.median(seconds[20:]))


def synthetic_corpus(n_tokens):
    """SCALE_DIR/plan_<n_tokens>/: a GPT-2 dataset of about n_tokens train tokens made of wiki's sentences, once."""
    folder = SCALE_DIR / f"plan_{n_tokens}"
    if (folder / META).is_file():
        return folder
    pool = sentence_pool()
    work = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(n_tokens)
    n = {split: write_split(work, split, target, pool, rng)
         for split, target in (("train", n_tokens), ("val", n_tokens // 100))}
    files = {path.name: {"bytes": path.stat().st_size, "crc32": crc32(path)} for path in sorted(work.iterdir())}
    meta = {"format_version": FORMAT_VERSION, "dataset": folder.name, "tokenizer": "gpt2", "vocab_size": 50257,
            "eot_token": EOT, "stoi": None, "itos": None, "n_tokens": n,
            "source": "wiki's train sentences resampled by tools/bench_planner_scale.py", "files": files}
    (work / META).write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)
    return folder


def sentence_pool():
    """wiki's train sentences that join cleanly, and EOT as one more: (tokens, token offsets, UTF-8 bytes, byte
    offsets), the i-th sentence's tokens being tokens[offsets[i]:offsets[i + 1]]."""
    data_dir = ensure_prepared("wiki")
    split = sentences.PlanData(data_dir, K, "lsa", SEED).sentences
    texts = sentences.sentence_texts(data_dir, load_meta(data_dir), split)["train"]
    tokens = load_tokens(data_dir, "train")
    token_pieces, text_pieces = [], []
    for (start, end), text in zip(split["train"]["sentence_span"].tolist(), texts):
        if len(text) > 1 and text[0] == " " and not text[1].isspace() and not text[-1].isspace():
            token_pieces.append(np.asarray(tokens[start:end]))
            text_pieces.append(np.frombuffer(text.encode(), dtype=np.uint8))
    token_pieces.append(np.array([EOT], dtype=np.uint16))
    text_pieces.append(np.zeros(0, dtype=np.uint8))

    def joined(pieces):
        return np.concatenate(pieces), np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
    return (*joined(token_pieces), *joined(text_pieces))


def write_split(folder, split, n_tokens, pool, rng, chunk_docs=10_000):
    """Write a split of about n_tokens tokens (at least), chunk_docs documents at a time; return its number of
    tokens."""
    tokens, token_offsets, text, text_offsets = pool
    eot = len(token_offsets) - 2
    tokens_per_doc = np.mean(SENTENCES_PER_DOCUMENT) * len(tokens) / eot
    docs, text_spans, n, n_bytes = [], [], 0, 0
    with open(folder / f"{split}.bin", "wb") as bin_file, open(folder / f"{split}_texts.txt", "wb") as text_file:
        while n < n_tokens:
            n_docs = min(chunk_docs, int((n_tokens - n) / tokens_per_doc) + 1)
            sizes = rng.integers(*SENTENCES_PER_DOCUMENT, endpoint=True, size=n_docs)
            ids = rng.integers(eot, size=sizes.sum())
            firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            doc_tokens = np.add.reduceat(np.diff(token_offsets)[ids], firsts)
            doc_bytes = np.add.reduceat(np.diff(text_offsets)[ids], firsts)
            starts = n + np.concatenate([[0], np.cumsum(doc_tokens + 1)[:-1]])  # + 1: each document's EOT
            byte_starts = n_bytes + np.concatenate([[0], np.cumsum(doc_bytes)[:-1]])
            docs.append(np.stack([starts, starts + doc_tokens], axis=1))
            text_spans.append(np.stack([byte_starts, byte_starts + doc_bytes], axis=1))
            ids = np.insert(ids, np.cumsum(sizes), eot)
            bin_file.write(gather(tokens, token_offsets, ids).tobytes())
            text_file.write(gather(text, text_offsets, ids).tobytes())
            n, n_bytes = n + int(doc_tokens.sum()) + n_docs, n_bytes + int(doc_bytes.sum())
    np.save(folder / f"{split}_docs.npy", np.concatenate(docs))
    np.save(folder / f"{split}_text_spans.npy", np.concatenate(text_spans))
    return n


def gather(flat, offsets, ids):
    """flat[offsets[i]:offsets[i + 1]] for each i of ids, one after the other."""
    lengths = offsets[ids + 1] - offsets[ids]
    shift = np.repeat(offsets[ids] - (np.cumsum(lengths) - lengths), lengths)
    return flat[np.arange(lengths.sum()) + shift]


def main(argv):
    settings = {"plan_scale_millions": plan_scale_millions, "plan_scale_keep": plan_scale_keep}
    configure(settings, argv)
    bench_plan_scale(settings["plan_scale_millions"], settings["plan_scale_keep"])


if __name__ == "__main__":
    main(sys.argv[1:])
