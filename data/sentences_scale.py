"""
The planner's data at scale: data/sentences.py's arrays, bit for bit (tests/test_sentences.py), built without holding
a split whole, for a corpus beyond IN_MEMORY_TOKENS tokens or IN_MEMORY_SENTENCES sentences (the papers' is 170M
tokens and 7M sentences). data/sentences.py chooses, by those sizes, between its in-memory build and this one.

  Sentences. split_documents reads a document's tokens and text through their files and appends its sentences to
  the .npy files (NpyWriter), a document at a time.
  Labels. Beyond LABEL_SAMPLE train sentences the LSA fit and k-means see a random sample of LABEL_SAMPLE of them
  (the clusters of a few hundred thousand sentences are those of all, at a fixed cost); only the sample's embeddings
  are ever all in memory: the other sentences are embedded, labelled and written EMBED_BATCH at a time.
4 bytes a token and 2 d_e + 32 bytes a sentence, on disk: at 170M tokens, 7M sentences and d_e = 768, 0.7 GB and
11 GB; a process holds in memory only the pages it reads.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from configurator import ConfigError
from data import sentences  # the module, not its names: it imports this one, to build through it at scale
from data.dataset import Pieces, load_docs

IN_MEMORY_TOKENS = 5_000_000  # train and val tokens that data/sentences.py splits into sentences in memory
LABEL_SAMPLE = 200_000  # k-means and the LSA fit see at most this many train sentences, a random sample of them
EMBED_BATCH = 100_000  # sentences embedded at a time
# Train and val sentences that data/sentences.py labels in memory. Up to EMBED_BATCH (and so LABEL_SAMPLE) the build
# below embeds each split in one call and fits on every train sentence, as the in-memory one does: the same bits
# (a pretrained encoder pads the sentences of a call in batches sorted by length: split over calls, they would be
# padded otherwise).
IN_MEMORY_SENTENCES = EMBED_BATCH


def data_hash(data_dir):
    """sha1 of the token files and texts: the caches derived from them are valid only for these bytes."""
    names = [f"{split}{kind}" for split in ("train", "val") for kind in (".bin", "_docs.npy", "_texts.txt",
                                                                         "_text_spans.npy")]
    missing = [name for name in names if not (Path(data_dir) / name).exists()]
    if missing:
        raise ConfigError(f"dataset {data_dir} has no document metadata ({', '.join(missing)} missing), which the "
                          f"planner needs to split sentences: re-run data/{Path(data_dir).name}/prepare.py")
    h = hashlib.sha1()
    for name in names:
        with open(Path(data_dir) / name, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


# --- sentences ----------------------------------------------------------------------------------------------------
def split_documents(data_dir, split, encode, token_nbytes, out):
    """data/sentences.py's split_documents, written into folder out a document at a time as
    {split}_token_sentence.npy, {split}_sentence_pos.npy and {split}_sentence_span.npy."""
    data_dir, docs = Path(data_dir), load_docs(data_dir, split)
    tokens = ReadThrough(data_dir / f"{split}.bin", np.uint16)
    texts = Pieces(ReadThrough(data_dir / f"{split}_texts.txt", np.uint8),  # data.dataset.load_texts, read through
                   np.load(data_dir / f"{split}_text_spans.npy"), lambda piece: piece.tobytes().decode("utf-8"))
    with NpyWriter(out / f"{split}_token_sentence.npy", np.int32) as token_sentence, \
            NpyWriter(out / f"{split}_sentence_pos.npy", np.int64) as positions, \
            NpyWriter(out / f"{split}_sentence_span.npy", np.int64, (2,)) as spans:
        for i, ((start, end), text) in enumerate(tqdm(zip(docs.tolist(), texts), total=len(texts),
                                                      desc=f"sentences {split}", unit="doc")):
            doc_spans = sentences.document_spans(data_dir, split, i, start, np.asarray(tokens[start:end], np.int64),
                                                 text, encode, token_nbytes)
            fill_to(token_sentence, start, spans.rows - 1, data_dir, split)
            token_sentence.append(np.repeat(np.arange(spans.rows, spans.rows + len(doc_spans)),
                                            doc_spans[:, 1] - doc_spans[:, 0]))
            positions.append(np.arange(len(doc_spans)))
            spans.append(doc_spans)
        fill_to(token_sentence, len(tokens), spans.rows - 1, data_dir, split)


def fill_to(token_sentence, end, sentence, data_dir, split):
    """Extend token_sentence up to token end with sentence, the one before these tokens outside documents."""
    if end > token_sentence.rows and sentence < 0:
        raise sentences.tokens_before_documents(data_dir, split)
    token_sentence.append(np.full(end - token_sentence.rows, sentence))


class ReadThrough:
    """array[a:b] of a flat binary file of dtype, read through the file when asked for. A build reads all of a file
    once, and the pages it read through a memory map would stay mapped, counted in its memory, up to the file's
    size (0.4 GB of tokens and 0.9 GB of text at 200M tokens)."""

    def __init__(self, path, dtype):
        self.file, self.dtype = open(path, "rb", buffering=0), np.dtype(dtype)  # unbuffered: a read reads what it asks

    def __len__(self):
        return os.fstat(self.file.fileno()).st_size // self.dtype.itemsize

    def __getitem__(self, piece):
        self.file.seek(int(piece.start) * self.dtype.itemsize)
        return np.frombuffer(self.file.read(int(piece.stop - piece.start) * self.dtype.itemsize), self.dtype)

    def __del__(self):
        self.file.close()


class NpyWriter:
    """A .npy file written a chunk of rows at a time, its length known only at the end: the header is written again
    then, over the same bytes (numpy pads a header so that its first dimension can grow in place)."""

    def __init__(self, path, dtype, row_shape=()):
        self.file, self.dtype, self.row_shape, self.rows = open(path, "wb"), np.dtype(dtype), row_shape, 0
        self.write_header()
        self.data_offset = self.file.tell()

    def write_header(self):
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": (self.rows, *self.row_shape)})

    def append(self, rows):
        rows = np.asarray(rows, self.dtype)
        self.file.write(rows.tobytes())
        self.rows += len(rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.seek(0)
        self.write_header()
        assert self.file.tell() == self.data_offset
        self.file.close()


# --- labels -------------------------------------------------------------------------------------------------------
def sentence_texts(data_dir, meta, split_arrays):
    """data/sentences.py's sentence_texts, each text decoded from its tokens only when read (data.dataset.Pieces)."""
    _, decode, _ = sentences.plan_codec(meta)
    return {split: Pieces(ReadThrough(Path(data_dir) / f"{split}.bin", np.uint16),
                          split_arrays[split]["sentence_span"], decode)
            for split in ("train", "val")}


def build_labels(texts, k, seed, embedder, out, device="auto"):
    """data/sentences.py's build_labels, written into folder out (centroids.npy, {split}_embeddings.npy,
    {split}_labels.npy and the fitted LSA's lsa_*.npy), fitted on a sample of LABEL_SAMPLE train sentences where
    there are more."""
    n_train = len(texts["train"])
    sample = np.arange(n_train) if n_train <= LABEL_SAMPLE else np.sort(
        np.random.default_rng(seed).choice(n_train, LABEL_SAMPLE, replace=False))
    print(f"embedding {n_train:,} train and {len(texts['val']):,} val sentences with {embedder}, then k-means with "
          f"K = {k}" + (f" on {LABEL_SAMPLE:,} of the train sentences" if len(sample) < n_train else ""))
    sample_texts = texts["train"][:] if len(sample) == n_train else [texts["train"][i] for i in sample]
    if embedder == "lsa":
        encoder = sentences.LSA.fit(sample_texts, sentences.EMBEDDERS["lsa"], seed)
        np.save(out / "lsa_words.npy", np.array(encoder.words))
        np.save(out / "lsa_idf.npy", encoder.idf.numpy())
        np.save(out / "lsa_projection.npy", encoder.projection.numpy())
    else:
        encoder = sentences.load_encoder(embedder, device)
    sample_embeddings = embed_in_batches(encoder, sample_texts, "the k-means sample")
    centroids, sample_labels = sentences.kmeans(sample_embeddings, k, seed)
    np.save(out / "centroids.npy", centroids.numpy())
    write_labelled(encoder, texts["train"], centroids, out, "train", (sample, sample_embeddings, sample_labels))
    write_labelled(encoder, texts["val"], centroids, out, "val")


def write_labelled(encoder, texts, centroids, out, split, sample=None):
    """Write {split}_embeddings.npy (float16) and {split}_labels.npy (int64, those of the float32 embeddings) for
    texts, EMBED_BATCH sentences at a time: each sentence is embedded (those of sample = (sorted ids, float32
    embeddings, labels), which k-means saw, are not embedded again) and labelled with its nearest centroid."""
    dim = centroids.size(1)
    ids, sample_embeddings, sample_labels = sample or (np.zeros(0, dtype=np.int64), torch.empty(0, dim),
                                                       torch.empty(0, dtype=torch.long))
    with NpyWriter(out / f"{split}_embeddings.npy", np.float16, (dim,)) as embeddings, \
            NpyWriter(out / f"{split}_labels.npy", np.int64) as labels:
        starts = range(0, len(texts), EMBED_BATCH)
        for a in tqdm(starts, desc=f"labelling {split}", unit="batch", disable=len(starts) == 1):
            n = min(EMBED_BATCH, len(texts) - a)
            lo, hi = np.searchsorted(ids, [a, a + n])
            have = torch.from_numpy(ids[lo:hi] - a)
            new = torch.from_numpy(np.setdiff1d(np.arange(n), have.numpy()))
            chunk, chunk_labels = torch.empty(n, dim), torch.empty(n, dtype=torch.long)
            chunk[have], chunk_labels[have] = sample_embeddings[lo:hi], sample_labels[lo:hi]
            if len(new):
                chunk_texts = texts[a:a + n]
                chunk[new] = encoder.embed([chunk_texts[i] for i in new.tolist()])
                chunk_labels[new] = sentences.nearest_centroid(chunk[new], centroids)
            embeddings.append(chunk.half().numpy())
            labels.append(chunk_labels.numpy())


def embed_in_batches(encoder, texts, name):
    """(len(texts), d) embeddings, EMBED_BATCH sentences at a time (an empty split: the encoder's empty result)."""
    starts = range(0, max(len(texts), 1), EMBED_BATCH)
    return torch.cat([encoder.embed(texts[a:a + EMBED_BATCH])
                      for a in tqdm(starts, desc=f"embedding {name}", unit="batch", disable=len(starts) == 1)])
