"""
The planner's data (planner.py): every document split into sentences, every sentence embedded and labelled with
its k-means cluster, built once and cached beside the dataset; PlanData reads them for a batch.

  1. Sentences. sentence_breaks cuts a document's text after terminal punctuation (not after an abbreviation or
     an initial, nor before a lower-case word) and at every newline run; sentence_starts moves each cut onto a
     token boundary of the document's own tokens and keeps it only if the sentences on either side encode on
     their own to exactly those tokens. A document's EOT belongs to its last sentence.
  2. Embeddings (plan_embedder). 'lsa': TF-IDF over the terms of the train sentences (each word lower-cased, each
     word's shape: all caps, capitalised, lower-case or digits, and each punctuation mark, so that a sentence of
     unseen words still embeds by its form), projected on the top right-singular vectors of the train TF-IDF matrix
     (EMBEDDERS['lsa'] of them), L2-normalised: no extra dependency, seconds to fit. 'minilm' (all-MiniLM-L6-v2)
     and 'mpnet' (all-mpnet-base-v2, the papers' encoder): pretrained sentence encoders from pinned PyPI wheels
     (data/encoders.py; they need transformers).
  3. Labels. k-means on the train embeddings; every sentence (val included) is labelled with its nearest centroid.
     The K centroids are the codebook the planner's output layer and the LM's adapters start from.
  4. Batches. For windows of the token stream, PlanData.batch gives the sentence each position is planned by, and
     each of those sentences' planner input (the embeddings of the sentences before it) and label.

The builds below hold a split in memory, as a small corpus (every built-in one) allows. Beyond IN_MEMORY_TOKENS
tokens or IN_MEMORY_SENTENCES sentences, data/sentences_scale.py builds the same arrays, bit for bit, a document or
a batch of sentences at a time, and fits LSA and k-means on a sample of LABEL_SAMPLE train sentences where there are
more (the papers' 170M tokens and 7M sentences).

The caches, beside the dataset, are data/files.py's cache folders of .npy files, which PlanData memory-maps so that
a batch reads only its rows, and a header.json of the data's hash and the settings they were built from (a stale,
incomplete or damaged one is rebuilt, never used):
  plan_sentences/                         {split}_token_sentence (int32 per token), {split}_sentence_pos and
                                          {split}_sentence_span (int64 per sentence)
  plan_labels_<embedder>_K<k>_seed<seed>/ {split}_embeddings (float16, d_e per sentence), {split}_labels (int64),
                                          centroids, and the fitted LSA's lsa_words, lsa_idf, lsa_projection
"""

import functools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from configurator import ConfigError
from data import sentences_scale as scale
from data.dataset import load_docs, load_meta, load_texts
from data.encoders import load_encoder
from data.files import cached
from data.vocabulary import gpt2_encoding

EMBEDDERS = {"lsa": 128, "minilm": 384, "mpnet": 768}  # name -> embedding dimension d_e
SPLITTER_VERSION = 2  # part of the caches' header: changing the splitter's rules must rebuild them

# --- 1. sentences -------------------------------------------------------------------------------------------------
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
    text; each break moves to the first token that starts at or after it, and is kept only when the sentences on
    either side encode on their own to exactly their tokens, so the sentences re-tokenize to the document's tokens.
    Linear in the document's length whatever the input: the piece between neighbouring breaks is encoded once, and
    a sentence that spans rejected breaks is encoded whole only each time its length doubles, so its failed tries
    cost at most twice its length."""
    token_start = np.concatenate(([0], np.cumsum(token_nbytes[tokens])))
    raw = text.encode("utf-8")
    byte_breaks, offset, last = [], 0, 0
    for b in sentence_breaks(text):
        offset += len(text[last:b].encode("utf-8"))
        byte_breaks.append(offset)
        last = b
    n = len(tokens)
    candidates = np.unique(np.searchsorted(token_start[:-1], byte_breaks))
    candidates = candidates[(candidates > 0) & (candidates < n)].tolist()

    def encodes_exactly(a, b):
        try:
            piece = raw[token_start[a]:token_start[b]].decode("utf-8")
        except UnicodeDecodeError:  # a break inside a character split over tokens
            return False
        return encode(piece) == tokens[a:b].tolist()

    starts, retry_length = [0], 0  # the open sentence is encoded whole again only once it is retry_length long
    piece_ok = encodes_exactly(0, candidates[0]) if candidates else True
    for before, c, after in zip([0] + candidates, candidates, candidates[1:] + [n]):
        sentence_ok, piece_ok = piece_ok, encodes_exactly(c, after)  # the pieces before c and after it
        if not piece_ok:
            continue
        if before != starts[-1]:  # the sentence c would end spans rejected breaks: the piece before c is not it
            if c - starts[-1] < retry_length:
                continue
            sentence_ok = encodes_exactly(starts[-1], c)
            retry_length = 2 * (c - starts[-1])
        if sentence_ok:
            starts.append(c)
            retry_length = 0
    if len(starts) > 1 and starts[-1] != candidates[-1]:  # the last sentence spans rejected breaks: check it
        tried = 0
        while len(starts) > 1:
            length = n - starts[-1]
            if length >= 2 * tried:
                if encodes_exactly(starts[-1], n):
                    break
                tried = length
            starts.pop()
    return starts


def plan_codec(meta):
    """(encode without special tokens, decode, byte length of each token id) for a dataset's tokenizer."""
    if meta["tokenizer"] == "char":
        stoi, itos = meta["stoi"], meta["itos"]
        nbytes = np.array([len(itos[i].encode("utf-8")) for i in range(meta["vocab_size"])])
        # -1 for a character outside the vocabulary: never a token, so such a text encodes to no document's tokens
        return (lambda text: [stoi.get(c, -1) for c in text]), (lambda ids: "".join(itos[int(i)] for i in ids)), nbytes
    enc = gpt2_encoding()
    nbytes = np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)])
    return enc.encode_ordinary, (lambda ids: enc.decode([int(i) for i in ids])), nbytes


def split_documents(data_dir, split, encode, token_nbytes):
    """The sentence arrays of one split: token_sentence (int32, the sentence of every token of the .bin),
    sentence_pos (each sentence's index in its document) and sentence_span ([start, end) of its tokens)."""
    tokens = np.fromfile(Path(data_dir) / f"{split}.bin", dtype=np.uint16).astype(np.int64)
    spans, positions = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for i, ((start, end), text) in enumerate(zip(load_docs(data_dir, split).tolist(), load_texts(data_dir, split))):
        spans.append(document_spans(data_dir, split, i, start, tokens[start:end], text, encode, token_nbytes))
        positions.append(np.arange(len(spans[-1])))
    spans = np.concatenate(spans)
    # Tokens outside documents (each document's EOT) belong to the sentence before them.
    token_sentence = np.searchsorted(spans[:, 0], np.arange(len(tokens)), side="right") - 1
    if len(tokens) and token_sentence[0] < 0:
        raise tokens_before_documents(data_dir, split)
    return {"token_sentence": token_sentence.astype(np.int32), "sentence_pos": np.concatenate(positions),
            "sentence_span": spans}


def document_spans(data_dir, split, i, start, tokens, text, encode, token_nbytes):
    """(n, 2) [start, end) of each sentence of document i of the split, whose tokens start at token start."""
    if encode(text) != tokens.tolist():  # the splitter would search in vain for breaks that fit
        raise ConfigError(f"{split} document {i} of {data_dir} does not encode to its tokens in {split}.bin: "
                          f"the dataset's files disagree; re-run data/{Path(data_dir).name}/prepare.py")
    if len(tokens) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    bounds = start + np.array(sentence_starts(tokens, text, encode, token_nbytes) + [len(tokens)])
    return np.stack([bounds[:-1], bounds[1:]], axis=1)


def tokens_before_documents(data_dir, split):
    return ConfigError(f"{split} split of {data_dir}: the first token belongs to no document: the docs metadata is "
                       f"inconsistent; re-run data/{Path(data_dir).name}/prepare.py")


def load_sentences(data_dir, meta, header):
    """Per-split sentence arrays, memory-mapped from the cache beside the dataset or built now: by split_documents,
    or beyond IN_MEMORY_TOKENS by its form that streams (data/sentences_scale.py)."""
    encode, _, token_nbytes = plan_codec(meta)

    def build(work):
        if sum(meta["n_tokens"].values()) > scale.IN_MEMORY_TOKENS:
            for split in ("train", "val"):
                scale.split_documents(data_dir, split, encode, token_nbytes, work)
            return None
        return {f"{split}_{name}": array for split in ("train", "val")
                for name, array in split_documents(data_dir, split, encode, token_nbytes).items()}
    arrays = cached(Path(data_dir) / "plan_sentences", header, build)
    return {split: {k[len(split) + 1:]: v for k, v in arrays.items() if k.startswith(split + "_")}
            for split in ("train", "val")}


# --- 2. sentence embeddings: LSA ----------------------------------------------------------------------------------
WORD = re.compile(r"\w+")
MARK = re.compile(r"[^\w\s]")
LSA_MAX_VOCAB = 20_000
LSA_TERMS_VERSION = 2  # part of the LSA labels' header: changing lsa_terms must rebuild them


def lsa_terms(text):
    """The terms of a sentence's TF-IDF row: each word lower-cased, each word's shape and each punctuation mark.
    Words alone leave a sentence of words unseen in train with an empty row (8% of shakespeare_char's val sentences,
    speaker lines of a new play such as "PETRUCHIO:"), which all fell into one cluster; its shapes and marks place
    it by its form, near the train sentences of that form ("LUCENTIO:")."""
    words = WORD.findall(text)
    return [w.lower() for w in words] + [word_shape(w) for w in words] + MARK.findall(text)


def word_shape(word):
    """<XX> all caps, <Xx> capitalised, <d> digits, <x> the rest: in brackets, so that no lower-cased word is one."""
    if word.isdigit():
        return "<d>"
    if word.isupper() and len(word) > 1:  # "I" and "A" are capitalised words, not acronyms
        return "<XX>"
    return "<Xx>" if word[0].isupper() else "<x>"


class LSA:
    """TF-IDF over lsa_terms, projected on the top right-singular vectors of the train TF-IDF matrix."""

    def __init__(self, words, idf, projection):
        self.words, self.idf, self.projection = list(words), idf, projection
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, texts, dim, seed):
        document_frequency = Counter(w for t in texts for w in set(lsa_terms(t)))
        # Terms seen in one sentence only carry no similarity between sentences.
        common = sorted((w for w, c in document_frequency.items() if c >= 2),
                        key=lambda w: (-document_frequency[w], w))[:LSA_MAX_VOCAB]
        if len(common) < dim:
            raise ConfigError(f"only {len(common)} terms occur in two or more train sentences, fewer than the "
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
            for w, c in Counter(self.index[w] for w in lsa_terms(text) if w in self.index).items():
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


# --- 3. labels: k-means -------------------------------------------------------------------------------------------
def nearest_centroid(x, centroids, chunk=65_536):
    """argmin_k |x - c_k|^2 = argmax_k (x . c_k - |c_k|^2 / 2), by matmul in chunks of rows."""
    half_norms = 0.5 * (centroids ** 2).sum(1)
    parts = tqdm(x.split(chunk), desc="nearest centroids", unit="chunk", disable=len(x) <= 20 * chunk)
    return torch.cat([(part @ centroids.T - half_norms).argmax(1) for part in parts])


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
    for _ in tqdm(range(iters), desc=f"k-means on {len(x):,} sentences", unit="iteration", leave=False):
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


def sentence_texts(data_dir, meta, sentences):
    """{split: the text of every sentence}, decoded from its tokens."""
    _, decode, _ = plan_codec(meta)
    texts = {}
    for split in ("train", "val"):
        tokens = np.fromfile(Path(data_dir) / f"{split}.bin", dtype=np.uint16)
        texts[split] = [decode(tokens[a:b]) for a, b in sentences[split]["sentence_span"].tolist()]
    return texts


def build_labels(texts, k, seed, embedder, device="auto"):
    """{name: array}: every sentence embedded (by LSA fitted on the train sentences, or by a pretrained encoder on
    device), k-means fitted on the train embeddings, every sentence labelled with its nearest centroid. The
    embeddings are kept in float16: half the bytes, and unit vectors lose at most 2.5e-4 (2^-12) a component; but an
    embedding that close to the boundary between two clusters would change label (3 of the 70,803 LSA embeddings of
    shakespeare_char and wiki), so the labels are those of float32."""
    print(f"embedding {len(texts['train']):,} train and {len(texts['val']):,} val sentences with {embedder}, then "
          f"k-means with K = {k}")
    if embedder == "lsa":
        encoder = LSA.fit(texts["train"], EMBEDDERS["lsa"], seed)
        arrays = {"lsa_words": np.array(encoder.words), "lsa_idf": encoder.idf, "lsa_projection": encoder.projection}
    else:
        encoder, arrays = load_encoder(embedder, device), {}
    train, val = encoder.embed(texts["train"]), encoder.embed(texts["val"])
    centroids, train_labels = kmeans(train, k, seed)
    return {**arrays, "centroids": centroids, "train_embeddings": train.half(), "train_labels": train_labels,
            "val_embeddings": val.half(), "val_labels": nearest_centroid(val, centroids)}


# --- 4. what the planner reads for a batch ------------------------------------------------------------------------
class PlanData:
    """Everything the planner reads, for both splits: the sentence of every token, each sentence's position in its
    document, its embedding and its label; the centroids; and the fitted embedder (for generated text)."""

    def __init__(self, data_dir, k, embedder, seed, device="auto"):
        """The arrays are memory-mapped from the caches beside the dataset (built first if missing or stale), so
        that a batch reads only its rows. device: where a pretrained encoder builds the labels ('auto': the GPU if
        there is one)."""
        if embedder not in EMBEDDERS:
            raise ConfigError(f"plan_embedder must be one of {sorted(EMBEDDERS)}, got '{embedder}'")
        meta = load_meta(data_dir)
        base_header = {"data": scale.data_hash(data_dir), "splitter": SPLITTER_VERSION}
        self.sentences = load_sentences(data_dir, meta, base_header)
        self.header = {**base_header, "embedder": embedder, "k": k, "seed": seed, "dim": EMBEDDERS[embedder]}
        if embedder == "lsa":
            self.header["lsa_terms"] = LSA_TERMS_VERSION
        n_train = len(self.sentences["train"]["sentence_pos"])
        if k > n_train:
            raise ConfigError(f"plan_k = {k} is larger than the {n_train} train sentences of {meta['dataset']}: "
                              "lower plan_k")

        def build(work):  # by build_labels, or beyond IN_MEMORY_SENTENCES by its form that streams
            if n_train + len(self.sentences["val"]["sentence_pos"]) > scale.IN_MEMORY_SENTENCES:
                texts = scale.sentence_texts(data_dir, meta, self.sentences)
                return scale.build_labels(texts, k, seed, embedder, work, device)
            return build_labels(sentence_texts(data_dir, meta, self.sentences), k, seed, embedder, device)
        arrays = cached(Path(data_dir) / f"plan_labels_{embedder}_K{k}_seed{seed}", self.header, build)
        self.arrays, self.embedder_name = arrays, embedder
        self.centroids = torch.from_numpy(np.array(arrays["centroids"]))
        self.embeddings = {s: torch.from_numpy(arrays[f"{s}_embeddings"]) for s in ("train", "val")}  # float16
        self.labels = {s: torch.from_numpy(arrays[f"{s}_labels"]) for s in ("train", "val")}
        self.token_sentence = {s: self.sentences[s]["token_sentence"] for s in ("train", "val")}  # int32
        self.sentence_pos = {s: torch.from_numpy(self.sentences[s]["sentence_pos"]) for s in ("train", "val")}

    @functools.cached_property
    def embedder(self):
        """The labels' embedder, for sentences that were not in the data (generation): the fitted LSA, or the
        pretrained encoder (loaded only when asked for); its embeddings rounded to float16 as the data's are, so
        that generation plans from what training read."""
        if self.embedder_name == "lsa":
            embedder = LSA(self.arrays["lsa_words"].tolist(), torch.from_numpy(np.array(self.arrays["lsa_idf"])),
                           torch.from_numpy(np.array(self.arrays["lsa_projection"])))
        else:
            embedder = load_encoder(self.embedder_name)
        return Rounded(embedder)

    def context(self, split, ids, m):
        """Planner inputs for sentences ids (any shape): the embeddings of the m sentences before each, most
        recent first, zero where the document has none (..., m, d_e), and each one's position in its document."""
        pos = self.sentence_pos[split][ids]
        back = torch.arange(1, m + 1)
        before = (ids[..., None] - back).clamp(min=0)
        inside = back <= pos[..., None]
        embeddings = self.embeddings[split].index_select(0, before.flatten()).view(*before.shape, -1).float()
        return embeddings * inside[..., None], pos

    def batch(self, split, ix, block_size, m):
        """The planner's inputs for windows starting at ix: position t of row b is planned by the sentence of token
        ix[b] + t + 1, the token it predicts. Each sentence of the batch is listed once (its planner input and its
        label), and plan_index points every position at its entry: the planner runs once per sentence, on no
        padding."""
        # exercise: plan-alignment
        target = self.token_sentence[split][ix.numpy()[:, None] + np.arange(1, block_size + 1)]
        ids, index = np.unique(target, return_inverse=True)
        # end exercise
        ids = torch.from_numpy(ids)
        context, pos = self.context(split, ids, m)
        return {"plan_index": torch.from_numpy(index.reshape(target.shape)), "plan_context": context,
                "plan_pos": pos, "plan_label": self.labels[split][ids]}


class Rounded:
    """An embedder whose embeddings are rounded to float16, the precision of the data's stored embeddings."""

    def __init__(self, embedder):
        self.embedder = embedder

    def embed(self, texts):
        return self.embedder.embed(texts).half().float()
