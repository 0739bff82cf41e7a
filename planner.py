"""
A sentence-level planner that conditions the GPT, trained end to end with it.

Cornille, Moens, Mai, "Learning to Plan for Language Modeling from Unlabeled Data" (COLM 2024), and
Cornille, Mai, Sun, Moens, "End-to-end Planner Training for Language Modeling" (2024).

The method, in the order this file runs it:
  1. Labels without annotation. Split every document into sentences, embed each sentence with a frozen encoder and
     cluster the train embeddings with k-means into K clusters. Sentence i's label is its cluster id; the K
     centroids are the codebook.
  2. Planner. A small network reads the embeddings of the M sentences before sentence i (a learned
     start-of-document vector stands in for the text before the first sentence), adds a position encoding (how
     many sentences back), applies Linear, one TransformerEncoder layer with 2 heads, a masked mean-pool and a
     Linear to K logits s_i whose weight starts as the centroids. It is pre-trained with cross-entropy against the
     labels (`python planner.py`). Its input never depends on sentence i or later text: no leak.
  3. Conditioning. In each of the top n_layer - 2 layers l (at least one), at every position t, the vector
         v_l = W_l e_l + b_l,        e_l = p @ E_l
     is added to the attention output before c_proj, where E_l (K x d_e) is the layer's own codebook (initialised
     to the centroids), W_l a d_e -> n_embd projection (zero bias at init) and p the plan of the sentence that
     token t+1 belongs to: position t predicts token t+1, so the first token of a sentence is already predicted
     under that sentence's plan.
  4. End to end. Paper 1 uses p = onehot(argmax s) ('hard'): the LM loss never reaches the planner. Paper 2 uses
     p = softmax(s / tau) ('soft'): e_l is the probability-weighted average of the label embeddings, the LM loss
     trains the planner, and planner and LM are fine-tuned jointly from the hard-trained ones. The
     straight-through estimator ('st': forward onehot(argmax), backward the softmax's gradient,
     p = (onehot - p).detach() + p) is the baseline the paper found not effective.

plan_mode: 'none' (no adapter: exactly the plain GPT), 'fixed' (always label 0: the extra parameters without a
plan), 'uniform' (p = 1/K: the soft control), 'oracle' (the true label of the target sentence: an upper bound that
sees the future), 'hard', 'st', 'soft'.

Decisions where the papers are silent or out of reach here (ours):
  - Sentences: a rule-based splitter (terminal punctuation + whitespace + not a lower-case next word, a short
    abbreviation list, every newline). A sentence keeps its leading whitespace, and each break is moved onto a
    token boundary of the document's own tokenization and dropped if encoding the sentences separately would not
    give back the document's exact tokens; so planner and baseline runs train on the identical token stream.
    A document's EOT separator belongs to the sentence before it (predicting the end of a document is part of
    finishing its last sentence); the token after an EOT starts sentence 0 of the next document.
  - Encoder: LSA (TF-IDF over lower-cased words of train sentences, truncated SVD by torch.svd_lowrank to 128
    dimensions, L2-normalised) instead of all-mpnet-base-v2: no extra dependency and no download. Its vocabulary,
    idf and projection are cached with the labels, so generated sentences are embedded the same way.
  - k-means: k-means++ seeding, Lloyd iterations by matmul, empty clusters re-seeded with the worst-fitted
    points, fitted on train sentences only (val sentences get the nearest centroid), deterministic under a seed.
  - The planner runs once per sentence of the batch, not per token; its inputs are gathered with the batch.
  - Caches (sentences, labels) sit beside the dataset with a header of what they were built from; a stale one is
    rebuilt, never used.
"""

import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm

from configurator import ConfigError, configure
from data.common import (ensure_prepared, gpt2_encoding, load_cache, load_docs, load_meta, load_texts, load_tokens,
                         save_cache, write_atomically)

MODES = ("none", "fixed", "uniform", "oracle", "hard", "st", "soft")
PLANNER_MODES = ("hard", "st", "soft")  # the modes that run the planner
EMBEDDERS = {"lsa": 128}  # name -> embedding dimension d_e
SPLITTER_VERSION = 1  # part of the caches' header: changing the splitter's rules must rebuild them

# --- 1a. sentences ------------------------------------------------------------------------------------------------
TERMINAL = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s)""")
NEWLINE_RUN = re.compile(r"[^\S\n]*\n\s*")
NEXT_WORD = re.compile(r"\s+(\S)")
WORD_BEFORE = re.compile(r"([\w.]+)$")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc no nos fig figs approx inc ltd co corp mt ft gen col lt sgt capt rev gov "
    "sen rep jan feb mar apr jun jul aug sep sept oct nov dec ca cf al e.g i.e u.s u.k".split())


def sentence_breaks(text):
    """Character offsets where a sentence starts, the first excluded: at the whitespace after terminal punctuation
    (unless it ends an abbreviation or an initial, or the next word is lower-case), and at every newline run."""
    breaks = set()
    for m in TERMINAL.finditer(text):
        if m.group()[0] == "." and is_abbreviation(text, m.start()):
            continue
        following = NEXT_WORD.match(text, m.end())
        if following and not following.group(1).islower():
            breaks.add(m.end())
    breaks.update(m.start() for m in NEWLINE_RUN.finditer(text))
    first, end = len(text) - len(text.lstrip()), len(text.rstrip())
    return sorted(b for b in breaks if first < b < end)  # no sentence of whitespace only


def is_abbreviation(text, dot):
    word = WORD_BEFORE.search(text, max(0, dot - 20), dot)
    return word is not None and (len(word.group(1)) == 1 or word.group(1).lower() in ABBREVIATIONS)


def sentence_starts(tokens, text, encode, token_nbytes):
    """Token offsets where the document's sentences start (0 first). tokens is the document's own tokenization of
    text; each break moves to the first token that starts at or after it, and is kept only when the text on
    either side (up to the neighbouring breaks) encodes on its own to exactly its tokens, so the sentences
    re-tokenize to the document's tokens."""
    token_start = np.concatenate(([0], np.cumsum(token_nbytes[tokens])))
    raw = text.encode("utf-8")
    byte_breaks, offset, last = [], 0, 0
    for b in sentence_breaks(text):
        offset += len(text[last:b].encode("utf-8"))
        byte_breaks.append(offset)
        last = b
    n = len(tokens)
    candidates = np.unique(np.searchsorted(token_start[:-1], byte_breaks))
    candidates = candidates[(candidates > 0) & (candidates < n)]

    def encodes_exactly(a, b):
        try:
            piece = raw[token_start[a]:token_start[b]].decode("utf-8")
        except UnicodeDecodeError:  # a break inside a character split over tokens
            return False
        return encode(piece) == tokens[a:b].tolist()

    starts, candidates = [0], candidates.tolist()
    for c, following in zip(candidates, candidates[1:] + [n]):
        if encodes_exactly(starts[-1], c) and encodes_exactly(c, following):
            starts.append(c)
    while len(starts) > 1 and not encodes_exactly(starts[-1], n):  # rare: a kept break's sentence grew, and broke
        starts.pop()
    return starts


def plan_codec(meta):
    """(encode without special tokens, decode, byte length of each token id) for a dataset's tokenizer."""
    if meta["tokenizer"] == "char":
        stoi, itos = meta["stoi"], meta["itos"]
        nbytes = np.array([len(itos[i].encode("utf-8")) for i in range(meta["vocab_size"])])
        return (lambda text: [stoi[c] for c in text]), (lambda ids: "".join(itos[int(i)] for i in ids)), nbytes
    enc = gpt2_encoding()
    nbytes = np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)])
    return enc.encode_ordinary, (lambda ids: enc.decode([int(i) for i in ids])), nbytes


def split_documents(tokens, docs, texts, encode, token_nbytes, desc):
    """Sentence arrays of one split: token_sentence (sentence id of every token of the .bin), sentence_pos (index
    of each sentence in its document) and sentence_span ([start, end) of its tokens)."""
    token_sentence = np.full(len(tokens), -1, dtype=np.int64)
    spans, positions = [], []
    for (start, end), text in tqdm(zip(docs.tolist(), texts), total=len(texts), desc=desc, unit="doc"):
        if end == start:
            continue
        starts = sentence_starts(np.asarray(tokens[start:end], dtype=np.int64), text, encode, token_nbytes)
        bounds = starts + [end - start]
        first = len(spans)
        spans += [(start + a, start + b) for a, b in zip(bounds[:-1], bounds[1:])]
        positions += range(len(starts))
        token_sentence[start:end] = np.repeat(np.arange(first, len(spans)), np.diff(bounds))
    if token_sentence[0] < 0:
        raise ConfigError(f"{desc}: the first token belongs to no document: the docs metadata is inconsistent; "
                          "re-run the dataset's prepare.py")
    # Tokens outside documents (each document's EOT) belong to the sentence before them.
    inside = np.where(token_sentence >= 0, np.arange(len(tokens)), 0)
    token_sentence = token_sentence[np.maximum.accumulate(inside)]
    return dict(token_sentence=token_sentence, sentence_pos=np.array(positions, dtype=np.int64),
                sentence_span=np.array(spans, dtype=np.int64).reshape(-1, 2))


# --- caches -----------------------------------------------------------------------------------------------------
def data_hash(data_dir):
    """sha1 of the token files and texts: the caches derived from them are valid only for these bytes."""
    missing = [f"{split}_{kind}" for split in ("train", "val") for kind in ("docs.npy", "texts.json")
               if not (Path(data_dir) / f"{split}_{kind}").exists()]
    if missing:
        raise ConfigError(f"dataset {data_dir} has no document metadata ({', '.join(missing)} missing), which the "
                          f"planner needs to split sentences: re-run data/{Path(data_dir).name}/prepare.py")
    h = hashlib.sha1()
    for name in ("train.bin", "val.bin", "train_docs.npy", "val_docs.npy", "train_texts.json", "val_texts.json"):
        h.update((Path(data_dir) / name).read_bytes())
    return h.hexdigest()


def load_sentences(data_dir, meta, header):
    """Per-split sentence arrays (split_documents), from the cache beside the dataset or built now."""
    path = Path(data_dir) / "plan_sentences.npz"
    cached = load_cache(path, header)
    if cached is None:
        encode, _, token_nbytes = plan_codec(meta)
        cached = {}
        for split in ("train", "val"):
            arrays = split_documents(load_tokens(data_dir, split), load_docs(data_dir, split),
                                     load_texts(data_dir, split), encode, token_nbytes, f"sentences {split}")
            cached.update({f"{split}_{k}": v for k, v in arrays.items()})
        save_cache(path, header, cached)
    return {split: {k[len(split) + 1:]: v for k, v in cached.items() if k.startswith(split + "_")}
            for split in ("train", "val")}


# --- 1b. sentence embeddings: LSA -------------------------------------------------------------------------------
WORD = re.compile(r"\w+")
LSA_MAX_VOCAB = 20_000


class LSA:
    """TF-IDF over lower-cased words, projected on the top right-singular vectors of the train TF-IDF matrix."""

    def __init__(self, words, idf, projection):
        self.words, self.idf, self.projection = list(words), idf, projection
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, texts, dim, seed):
        document_frequency = Counter(w for t in texts for w in set(WORD.findall(t.lower())))
        # Words seen in one sentence only carry no similarity between sentences.
        common = sorted((w for w, c in document_frequency.items() if c >= 2),
                        key=lambda w: (-document_frequency[w], w))[:LSA_MAX_VOCAB]
        if len(common) < dim:
            raise ConfigError(f"only {len(common)} words occur in two or more train sentences, fewer than the "
                              f"{dim} LSA dimensions: the corpus is too small for the planner")
        df = torch.tensor([document_frequency[w] for w in common], dtype=torch.float64)
        idf = (torch.log((1 + len(texts)) / (1 + df)) + 1).float()
        lsa = cls(common, idf, None)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(lsa.tfidf(texts), q=dim, niter=4)
        lsa.projection = v
        return lsa

    def tfidf(self, texts):
        """Sparse (n, vocab) matrix of sublinear tf x idf, rows L2-normalised."""
        rows, cols, counts = [], [], []
        for i, text in enumerate(texts):
            for w, c in Counter(self.index[w] for w in WORD.findall(text.lower()) if w in self.index).items():
                rows.append(i)
                cols.append(w)
                counts.append(c)
        cols = torch.tensor(cols, dtype=torch.long)
        rows = torch.tensor(rows, dtype=torch.long)
        values = (1 + torch.log(torch.tensor(counts, dtype=torch.float))) * self.idf[cols]
        norms = torch.zeros(len(texts)).index_add_(0, rows, values ** 2).sqrt()
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values / norms[rows], (len(texts), len(self.words)),
                                       check_invariants=True)

    def embed(self, texts):
        return F.normalize(torch.sparse.mm(self.tfidf(texts), self.projection), dim=-1)


# --- 1c. k-means ------------------------------------------------------------------------------------------------
def nearest_centroid(x, centroids, chunk=65_536):
    """argmin_k |x - c_k|^2 = argmax_k (x . c_k - |c_k|^2 / 2), by matmul in chunks of rows."""
    half_norms = 0.5 * (centroids ** 2).sum(1)
    return torch.cat([(part @ centroids.T - half_norms).argmax(1) for part in x.split(chunk)])


def kmeans(x, k, seed, iters=100):
    """k-means++ seeding then Lloyd iterations; returns (centroids (k, d), labels (n,)). Deterministic in seed."""
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    sq_dist = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(k - 1):  # each next seed is drawn with probability proportional to its squared distance
        if sq_dist.sum() <= 0:
            raise ConfigError(f"k-means: only {len(centroids)} distinct points for K = {k}: lower plan_k")
        new = x[torch.multinomial(sq_dist, 1, generator=generator)]
        centroids = torch.cat([centroids, new])
        sq_dist = torch.minimum(sq_dist, ((x - new) ** 2).sum(1))
    labels = nearest_centroid(x, centroids)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k)
        updated = torch.zeros_like(centroids).index_add_(0, labels, x) / counts.clamp(min=1)[:, None]
        empty = counts == 0
        if empty.any():  # an empty cluster restarts at the points its neighbours fit worst
            fit = ((x - updated[labels]) ** 2).sum(1)
            updated[empty] = x[fit.topk(int(empty.sum())).indices]
        centroids = updated
        new_labels = nearest_centroid(x, centroids)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels


# --- 1d. labels: the sentences, their embeddings and clusters, cached beside the dataset -------------------
def sentence_texts(data_dir, meta, sentences):
    """{split: the text of every sentence}, decoded from its tokens."""
    _, decode, _ = plan_codec(meta)
    texts = {}
    for split in ("train", "val"):
        tokens = load_tokens(data_dir, split)
        texts[split] = [decode(tokens[a:b]) for a, b in tqdm(sentences[split]["sentence_span"],
                                                             desc=f"sentence texts {split}")]
    return texts


def build_labels(texts, k, seed):
    """Fit LSA and k-means on the train sentences; label every sentence with its nearest centroid."""
    print(f"fitting LSA on {len(texts['train']):,} train sentences, then k-means with K = {k}")
    lsa = LSA.fit(texts["train"], EMBEDDERS["lsa"], seed)
    embeddings = {split: lsa.embed(t) for split, t in texts.items()}
    centroids, train_labels = kmeans(embeddings["train"], k, seed)
    return {"centroids": centroids.numpy(), "lsa_words": np.array(lsa.words), "lsa_idf": lsa.idf.numpy(),
            "lsa_projection": lsa.projection.numpy(),
            "train_embeddings": embeddings["train"].numpy(), "val_embeddings": embeddings["val"].numpy(),
            "train_labels": train_labels.numpy(), "val_labels": nearest_centroid(embeddings["val"], centroids).numpy()}


class PlanData:
    """Everything the planner reads, for both splits: the sentence of every token, each sentence's position in its
    document, its embedding and its label; the centroids; and the fitted embedder (for generated text)."""

    def __init__(self, data_dir, k, embedder, seed):
        if embedder not in EMBEDDERS:
            raise ConfigError(f"plan_embedder must be one of {sorted(EMBEDDERS)}, got '{embedder}'")
        meta = load_meta(data_dir)
        base_header = {"data": data_hash(data_dir), "splitter": SPLITTER_VERSION}
        self.sentences = load_sentences(data_dir, meta, base_header)
        self.header = {**base_header, "embedder": embedder, "k": k, "seed": seed, "dim": EMBEDDERS[embedder]}
        n_train = len(self.sentences["train"]["sentence_pos"])
        if k > n_train:
            raise ConfigError(f"plan_k = {k} is larger than the {n_train} train sentences of {meta['dataset']}: "
                              "lower plan_k")
        path = Path(data_dir) / f"plan_labels_{embedder}_K{k}_seed{seed}.npz"
        cached = load_cache(path, self.header)
        if cached is None:
            cached = build_labels(sentence_texts(data_dir, meta, self.sentences), k, seed)
            save_cache(path, self.header, cached)
        self.centroids = torch.from_numpy(cached["centroids"])
        self.embeddings = {s: torch.from_numpy(cached[f"{s}_embeddings"]) for s in ("train", "val")}
        self.labels = {s: torch.from_numpy(cached[f"{s}_labels"]) for s in ("train", "val")}
        self.embedder = LSA(cached["lsa_words"].tolist(), torch.from_numpy(cached["lsa_idf"]),
                            torch.from_numpy(cached["lsa_projection"]))
        self.token_sentence = {s: self.sentences[s]["token_sentence"] for s in ("train", "val")}
        self.sentence_pos = {s: torch.from_numpy(self.sentences[s]["sentence_pos"]) for s in ("train", "val")}

    def context(self, split, ids, m):
        """Planner inputs for sentences ids (any shape): the embeddings of the m sentences before each, most
        recent first, zero where the document has none (..., m, d_e), and each one's position in its document."""
        pos = self.sentence_pos[split][ids]
        back = torch.arange(1, m + 1)
        before = (ids[..., None] - back).clamp(min=0)
        inside = back <= pos[..., None]
        return self.embeddings[split][before] * inside[..., None], pos

    def batch(self, split, ix, block_size, m):
        """The per-batch inputs of PlanConditioner for windows starting at ix: position t of row b is planned
        by the sentence of token ix[b] + t + 1, the token it predicts. Each row's sentences get the slots 0..S-1
        (padding slots repeat the row's last sentence and have label -1)."""
        target = torch.from_numpy(np.stack([self.token_sentence[split][i + 1:i + 1 + block_size]
                                            for i in ix.tolist()]))
        first, last = target[:, :1], target[:, -1:]
        slot = target - first
        ids = torch.minimum(first + torch.arange(int(slot.max()) + 1), last)
        context, pos = self.context(split, ids, m)
        label = torch.where(ids - first <= slot[:, -1:], self.labels[split][ids], -1)
        return {"plan_slot": slot, "plan_context": context, "plan_pos": pos, "plan_label": label}


# --- 2. the planner ---------------------------------------------------------------------------------------------
class Planner(nn.Module):
    """Logits over the K labels of sentence i from the embeddings of the sentences before it."""

    def __init__(self, k, dim, context):
        super().__init__()
        self.start = nn.Parameter(torch.randn(dim) * 0.02)  # stands in for "the document starts here"
        self.input = nn.Linear(dim, dim)
        self.sentences_back = nn.Embedding(context, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=4 * dim, dropout=0.0,
                                                  batch_first=True)
        self.output = nn.Linear(dim, k)

    def forward(self, context, pos):
        """context (n, M, d_e): embeddings of sentences i-1, i-2, ... (zeros before the document's start); pos
        (n,): i, the sentence's index in its document. Slot pos holds the start vector when it is within M."""
        slot = torch.arange(context.size(1), device=context.device)
        valid = slot <= pos[:, None]
        x = torch.where((slot == pos[:, None])[..., None], self.start.to(context.dtype), context)
        h = self.encoder(self.input(x) + self.sentences_back(slot), src_key_padding_mask=~valid)
        h = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.output(h)


def initialise_planner(planner, centroids):
    """The output layer starts as the codebook: logit_k = h . c_k scores the label whose centroid h points to."""
    with torch.no_grad():
        planner.output.weight.copy_(centroids)
        planner.output.bias.zero_()


def planner_metrics(logits, labels):
    """Cross-entropy, accuracy and top-5 accuracy over the sentences whose label is not -1 (padding)."""
    real = labels >= 0
    logits, labels = logits[real].float(), labels[real]
    top5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices
    return {"plan_ce": F.cross_entropy(logits, labels), "plan_acc": (logits.argmax(-1) == labels).float().mean(),
            "plan_top5": (top5 == labels[:, None]).any(-1).float().mean()}


# --- 2b. planner pre-training: python planner.py [config file] [--key=value ...] ------------------------------
PRETRAIN_SETTINGS = dict(
    dataset="wiki",
    out_dir="out-planner/planner",  # planner.pt and log.jsonl are written here
    plan_k=64, plan_context=8, plan_embedder="lsa", plan_seed=0,  # as in train.py: they name the labels
    batch_size=256,  # sentences per step
    max_iters=2000,
    learning_rate=1e-3,
    weight_decay=0.01,
    eval_interval=250,
    seed=1337,
)


def pretrain(s):
    """Train a Planner (on the CPU: it is small) with cross-entropy on the train sentences' labels; log val
    accuracy and top-5 against the majority label; save out_dir/planner.pt with the labels' header."""
    data = PlanData(ensure_prepared(s["dataset"]), s["plan_k"], s["plan_embedder"], s["plan_seed"])
    torch.manual_seed(s["seed"])
    planner = Planner(s["plan_k"], data.centroids.size(1), s["plan_context"])
    initialise_planner(planner, data.centroids)
    optimizer = torch.optim.AdamW(planner.parameters(), lr=s["learning_rate"], weight_decay=s["weight_decay"])
    train_labels, val_labels = data.labels["train"], data.labels["val"]
    majority = torch.bincount(train_labels, minlength=s["plan_k"]).argmax()
    generator = torch.Generator().manual_seed(s["seed"])
    os.makedirs(s["out_dir"], exist_ok=True)
    log_path = os.path.join(s["out_dir"], "log.jsonl")
    open(log_path, "w").close()
    train_ce = []
    for it in tqdm(range(s["max_iters"] + 1), desc="planner", dynamic_ncols=True):
        if it % s["eval_interval"] == 0 or it == s["max_iters"]:
            record = {"iter": it, "train_ce": float(np.mean(train_ce)) if train_ce else None,
                      **evaluate_planner(planner, data, s["plan_context"]),
                      "val_majority_acc": (val_labels == majority).float().mean().item()}
            train_ce = []
            tqdm.write(json.dumps(record))
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if it == s["max_iters"]:
            break
        ids = torch.randint(len(train_labels), (s["batch_size"],), generator=generator)
        loss = F.cross_entropy(planner(*data.context("train", ids, s["plan_context"])), train_labels[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_ce.append(loss.item())
    path = os.path.join(s["out_dir"], "planner.pt")
    state = {"planner": planner.state_dict(), "header": data.header, "plan_context": s["plan_context"],
             "metrics": record}
    write_atomically(path, lambda f: torch.save(state, f))
    print(f"saved {path}")


@torch.no_grad()
def evaluate_planner(planner, data, m):
    """The planner's metrics over every validation sentence."""
    planner.eval()
    ids = torch.arange(len(data.labels["val"]))
    logits = torch.cat([planner(*data.context("val", part, m)) for part in ids.split(4096)])
    planner.train()
    return {f"val_{k}": v.item() for k, v in planner_metrics(logits, data.labels["val"]).items()}


# --- 3 and 4. conditioning the GPT ----------------------------------------------------------------------------
class PlanConditioner(nn.Module):
    """The planner (in the modes that use it) and the per-layer codebooks and projections. forward(extra) returns
    the attn_add list for GPT.body, the optional planner loss and the planner's statistics."""

    def __init__(self, settings, config):
        super().__init__()
        self.mode, self.tau, self.ce_weight = settings["plan_mode"], settings["plan_tau"], settings["plan_lambda"]
        self.k, self.context, dim = settings["plan_k"], settings["plan_context"], EMBEDDERS[settings["plan_embedder"]]
        self.data_settings = (settings["dataset"], self.k, settings["plan_embedder"], settings["plan_seed"])
        conditioned = max(1, config.n_layer - 2)
        self.first_layer = config.n_layer - conditioned
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(self.k, dim)) for _ in range(conditioned)])
        self.projections = nn.ModuleList([nn.Linear(dim, config.n_embd) for _ in range(conditioned)])
        for projection in self.projections:
            nn.init.normal_(projection.weight, std=0.02)
            nn.init.zeros_(projection.bias)
        self.planner = Planner(self.k, dim, self.context) if self.mode in PLANNER_MODES else None
        if self.planner is not None and self.mode == "hard" and self.ce_weight == 0:
            self.planner.requires_grad_(False)  # argmax passes no gradient: a frozen planner, said explicitly

    def initialise(self, centroids):
        with torch.no_grad():
            for codebook in self.codebooks:
                codebook.copy_(centroids)
        if self.planner is not None:
            initialise_planner(self.planner, centroids)

    def forward(self, extra):
        slot, label = extra["plan_slot"], extra["plan_label"]
        logits = None
        if self.planner is not None:
            context, pos = extra["plan_context"], extra["plan_pos"]
            logits = self.planner(context.flatten(0, 1), pos.flatten()).view(*pos.shape, self.k)
        vectors = self.plan_vectors(logits, label)
        index = slot[..., None].expand(-1, -1, vectors[0].size(-1))
        attn_add = [None] * self.first_layer + [v.gather(1, index) for v in vectors]
        if logits is None:
            return attn_add, None, {}
        stats = planner_metrics(logits, label)
        loss = self.ce_weight * stats["plan_ce"] if self.ce_weight > 0 else None
        return attn_add, loss, {name: value.detach() for name, value in stats.items()}

    def plan_vectors(self, logits, label):
        """v_l = W_l (p @ E_l) + b_l for every sentence (..., n_embd), one per conditioned layer. A one-hot p is a
        row lookup, done as such; label is the true label (oracle) and gives the shape."""
        if self.mode in ("fixed", "oracle", "hard"):
            if self.mode == "hard":
                index = logits.argmax(-1)
            else:
                index = torch.zeros_like(label) if self.mode == "fixed" else label.clamp(min=0)
            return [project(codebook[index]) for codebook, project in zip(self.codebooks, self.projections)]
        if self.mode == "uniform":
            p = torch.full((*label.shape, self.k), 1.0 / self.k, device=label.device)
        else:
            p = F.softmax(logits.float() / self.tau, dim=-1)
            if self.mode == "st":
                p = p + (F.one_hot(p.argmax(-1), self.k) - p).detach()
        return [project(p.to(codebook.dtype) @ codebook) for codebook, project in zip(self.codebooks, self.projections)]

    def generation_hook(self):
        """attn_add_fn for GPT.generate: re-plans whenever the text so far ends a sentence."""
        if self.mode == "oracle":
            raise ConfigError("plan_mode 'oracle' conditions on the true label of the sentence being written, which "
                              "does not exist while generating: sample a model trained in 'hard', 'st' or 'soft'")
        dataset, k, embedder, seed = self.data_settings
        data_dir = ensure_prepared(dataset)
        return Replanner(self, PlanData(data_dir, k, embedder, seed), load_meta(data_dir))


def settings_problems(s):
    """What is wrong with the planner settings of train.py, each naming the setting and the fix."""
    problems = []
    mode = s["plan_mode"]
    if mode not in MODES:
        return [f"plan_mode must be one of {', '.join(MODES)}, got '{mode}'"]
    if s["plan_init_planner"] and mode not in PLANNER_MODES:
        problems.append(f"plan_init_planner is only read by the modes that run a planner ({', '.join(PLANNER_MODES)}),"
                        f" not by '{mode}'")
    if s["plan_init_planner"] and not os.path.isfile(s["plan_init_planner"]):
        problems.append(f"plan_init_planner: no file {s['plan_init_planner']}; run `python planner.py` first")
    if mode == "none":
        return problems
    if s["plan_embedder"] not in EMBEDDERS:
        problems.append(f"plan_embedder must be one of {', '.join(EMBEDDERS)}, got '{s['plan_embedder']}' (a "
                        "neural sentence encoder is not wired in: it would need a package that is not installed)")
    if s["plan_k"] < 2 or s["plan_context"] < 1:
        problems.append(f"plan_k must be at least 2 and plan_context at least 1, got {s['plan_k']} and "
                        f"{s['plan_context']}")
    if s["plan_tau"] <= 0:
        problems.append(f"plan_tau must be positive, got {s['plan_tau']}")
    if s["plan_lambda"] < 0 or (s["plan_lambda"] > 0 and mode not in PLANNER_MODES):
        problems.append(f"plan_lambda (the planner's cross-entropy weight) must be >= 0, and 0 in mode '{mode}', "
                        f"which has no planner; got {s['plan_lambda']}")
    return problems


def health_warning(record):
    """A warning when the planner is no better than always answering the most frequent train label on the same
    validation sentences, else None. record is an evaluation's log record."""
    if "val_plan_acc" not in record or "val_plan_majority_acc" not in record:
        return None
    if record["val_plan_acc"] > record["val_plan_majority_acc"]:
        return None
    return (f"the planner is not planning: its label accuracy {record['val_plan_acc']:.3f} is not above the "
            f"{record['val_plan_majority_acc']:.3f} of always answering the most frequent label (docs/planner.md)")


def initialise_plan(conditioner, data, s, init_checkpoint=None):
    """The starting weights of a new run: codebooks and planner output from the centroids; then the pre-trained
    planner of plan_init_planner (stage 3); then the plan weights of init_from's checkpoint when it has them
    (stage 4 starts from stage 3's adapters and planner)."""
    conditioner.initialise(data.centroids)
    if s["plan_init_planner"]:
        saved = torch.load(s["plan_init_planner"], map_location="cpu")
        if saved["header"] != data.header or saved["plan_context"] != s["plan_context"]:
            raise ConfigError(f"the planner in {s['plan_init_planner']} was trained on other labels or another "
                              f"context ({saved['header']}, plan_context={saved['plan_context']}) than this run's "
                              f"({data.header}, plan_context={s['plan_context']}): pre-train it with the same "
                              "dataset, plan_k, plan_embedder, plan_seed and plan_context")
        conditioner.planner.load_state_dict(saved["planner"])
    weights = {} if init_checkpoint is None else {k[len("plan."):]: v for k, v in init_checkpoint["model"].items()
                                                  if k.startswith("plan.")}
    if weights:
        keys = ("dataset", "plan_k", "plan_embedder", "plan_seed", "plan_context")
        differ = [f"{k}: checkpoint {init_checkpoint['config'].get(k)!r}, now {s[k]!r}" for k in keys
                  if init_checkpoint["config"].get(k) != s[k]]
        if differ:
            raise ConfigError("init_from's planner and codebooks were trained on other labels (" + "; ".join(differ)
                              + "): use the same plan settings, or start from a checkpoint without a planner")
        own = conditioner.state_dict()
        conditioner.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    if conditioner.planner is not None and not s["plan_init_planner"] and "planner.start" not in weights:
        print(f"note: the planner starts untrained and learns with the LM (plan_mode '{s['plan_mode']}'); the papers "
              "pre-train it first: `python planner.py`, then plan_init_planner=<its planner.pt>")


# --- generation ---------------------------------------------------------------------------------------------------
class Replanner:
    """attn_add_fn for GPT.generate. Keeps each row's whole text so far, splits its documents into sentences as the
    data was split, embeds them with the labels' embedder, and conditions every position on the plan of the
    sentence its next token belongs to. For the last position that token is not written yet: it opens a new
    sentence when the text so far ends one (the splitter would break right after it), which re-plans."""

    def __init__(self, conditioner, data, meta):
        self.conditioner, self.data = conditioner, data
        self.encode, self.decode, self.token_nbytes = plan_codec(meta)
        self.eot = meta["eot_token"]
        self.history = None
        self.embedded = {}  # sentence text -> embedding, so each sentence is embedded once

    def __call__(self, window, start):
        if self.history is None:
            self.history = window.tolist()
        else:  # one call per generated token: the window's last token is the new one
            for row, token in zip(self.history, window[:, -1].tolist()):
                row.append(token)
        first = len(self.history[0]) - window.size(1) + start
        per_row = [self.row_vectors(row) for row in self.history]
        return [None] * self.conditioner.first_layer + [torch.stack([v[first:] for v in layer])
                                                        for layer in zip(*per_row)]

    def row_vectors(self, tokens):
        """Per conditioned layer, (len(tokens), n_embd): position t gets the plan of token t+1's sentence."""
        sentence_of, contexts = [], []  # sentence of tokens 0..len (the last: the unwritten next token)
        doc_start = 0
        for doc_end in [i for i, token in enumerate(tokens) if token == self.eot] + [len(tokens)]:
            is_open = doc_end == len(tokens)
            ids, doc_contexts = self.plan_document(tokens[doc_start:doc_end], is_open)
            sentence_of += [len(contexts) + i for i in ids]
            contexts += doc_contexts
            if not is_open:
                sentence_of.append(len(contexts) - 1)  # the EOT belongs to its document's last sentence
            doc_start = doc_end + 1
        device = self.conditioner.codebooks[0].device
        context = torch.stack([c for c, _ in contexts]).to(device)
        pos = torch.tensor([p for _, p in contexts], device=device)
        planner = self.conditioner.planner
        logits = planner(context, pos) if planner is not None else None
        vectors = self.conditioner.plan_vectors(logits, torch.zeros_like(pos))
        next_sentence = torch.tensor(sentence_of[1:], device=device)
        return [v[next_sentence] for v in vectors]

    def plan_document(self, tokens, is_open):
        """The sentence index of each token of one document (plus the unwritten next token when the document is
        still open), and each sentence's planner input (context, position) as PlanData.context gives them."""
        tokens = np.array(tokens, dtype=np.int64)
        starts, texts = [0], [""]
        if len(tokens):
            text = self.decode(tokens)
            starts = sentence_starts(tokens, text, self.encode, self.token_nbytes)
            bounds = starts + [len(tokens)]
            texts = [self.decode(tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        ids = np.repeat(np.arange(len(starts)), np.diff(starts + [len(tokens)])).tolist()
        n_sentences = len(starts)
        if is_open:
            if len(tokens) and len(sentence_breaks(text + " X")) > len(sentence_breaks(text)):
                n_sentences += 1
            ids.append(n_sentences - 1)
        embeddings = [self.embed(t) for t in texts[:n_sentences - 1]]
        m, dim = self.conditioner.context, self.data.centroids.size(1)
        contexts = []
        for i in range(n_sentences):
            before = embeddings[max(0, i - m):i][::-1]  # most recent first
            contexts.append((torch.stack(before + [torch.zeros(dim)] * (m - len(before))), i))
        return ids, contexts

    def embed(self, text):
        if text not in self.embedded:
            self.embedded[text] = self.data.embedder.embed([text])[0]
        return self.embedded[text]


if __name__ == "__main__":
    settings = dict(PRETRAIN_SETTINGS)
    try:
        configure(settings, sys.argv[1:])
        pretrain(settings)
    except ConfigError as e:
        sys.exit(f"error: {e}")
