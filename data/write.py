"""Writing a dataset in data/dataset.py's format: documents split into train and val, tokenized, streamed to disk.

Writing streams: documents are read one at a time and tokens are written in chunks, so a corpus larger than memory
prepares. The files are written in a temporary folder inside the dataset's folder and moved into place at the end,
meta.json last, so a failure while writing leaves the folder as it was, and a killed write's temporary folder is
deleted by the next preparation (data/files.py's remove_dead_temporaries).
"""

import array
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.dataset import FORMAT_VERSION, META, load_texts
from data.files import crc32, remove_dead_temporaries, reporting_full_disk, temporary_path
from data.vocabulary import get_codec, gpt2_encoding


def split_by_hash(docs, val_percent=10):
    """Split {name: text} into {'train': [...], 'val': [...]} by a hash of each document's name (split_of)."""
    splits = {"train": [], "val": []}
    for name, text in docs.items():
        splits[split_of(name, val_percent)].append(text)
    return splits


def split_of(name, val_percent=10):
    """'val' for about val_percent% of document names, 'train' for the rest, by a hash of the name.

    Deterministic and independent of document order: a document keeps its split when others are
    added or removed. Whole documents go to one side, so val text is never seen in training.
    """
    return "val" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < val_percent else "train"


def write_dataset(out_dir, splits, tokenizer, dataset, source, chars=None):
    """Tokenize splits ({split: documents}) and write them to out_dir; return the meta.

    Each split's documents are an iterable of texts (a list, or a generator that reads them one at a time), read
    once: they stream into the split's _texts.txt, from which the tokens are then made a batch of documents at a
    time, so neither the documents nor the tokens of a split are ever all in memory.
    tokenizer is 'char' (vocabulary: chars, by default every character in the splits, sorted)
    or 'gpt2' (each document followed by EOT; '<|endoftext|>' inside a text is ordinary text).
    """
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected 'char' or 'gpt2'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out_dir)
    work = temporary_path(out_dir / "writing")
    work.mkdir()
    try:
        with reporting_full_disk(out_dir):
            meta = write_files(work, splits, tokenizer, dataset, chars)
            meta.update(source=source, files={path.name: {"bytes": path.stat().st_size, "crc32": crc32(path)}
                                              for path in sorted(work.iterdir())})
            (work / META).write_text(json.dumps(meta))
        # Until the new meta.json lands the dataset must read as incomplete, even if an old one was there.
        (out_dir / META).unlink(missing_ok=True)
        (out_dir / "meta.pkl").unlink(missing_ok=True)  # format 2's, never read: it must not outlive its data
        for path in sorted(work.iterdir(), key=lambda path: path.name == META):  # meta.json last
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def write_files(work, splits, tokenizer, dataset, chars):
    """Write the texts and tokens of every split into the folder work; return the meta, less source and files."""
    seen = set() if tokenizer == "char" and chars is None else None
    for split, texts in splits.items():
        write_texts(work, split, tqdm(texts, desc=f"{dataset} {split} texts", unit="doc"), seen)
    meta = {"format_version": FORMAT_VERSION, "dataset": dataset, "tokenizer": tokenizer}
    if tokenizer == "char":
        chars = chars if chars is not None else sorted(seen)
        meta.update(vocab_size=len(chars), eot_token=None,
                    stoi={c: i for i, c in enumerate(chars)}, itos=dict(enumerate(chars)))
        encode, _ = get_codec(meta)

        def encode_batch(texts):
            return [encode(text) for text in texts]
    else:
        enc = gpt2_encoding()
        meta.update(vocab_size=enc.n_vocab, eot_token=enc.eot_token, stoi=None, itos=None)
        encode_batch = functools.partial(enc.encode_ordinary_batch, num_threads=os.cpu_count() or 1)
    meta.update(n_tokens={split: write_tokens(work, split, encode_batch, meta["eot_token"], dataset)
                          for split in splits})
    return meta


def write_texts(folder, split, texts, chars=None):
    """Write texts one after another to folder/{split}_texts.txt and their byte spans to {split}_text_spans.npy;
    add their characters to the set chars, if given."""
    ends, offset = array.array("q"), 0  # 8 bytes a document
    with open(folder / f"{split}_texts.txt", "wb") as f:
        for text in texts:
            data = text.encode("utf-8")
            f.write(data)
            offset += len(data)
            ends.append(offset)
            if chars is not None:
                chars.update(text)
    ends = np.frombuffer(ends, dtype=np.int64)
    np.save(folder / f"{split}_text_spans.npy", np.stack([ends - np.diff(ends, prepend=0), ends], axis=1))


def write_tokens(folder, split, encode_batch, eot_token, dataset, batch_docs=256):
    """Encode the documents of folder/{split}_texts.txt, batch_docs at a time, appending their tokens to
    {split}.bin and their token spans to {split}_docs.npy; return the number of tokens written."""
    texts = load_texts(folder, split)
    spans = np.empty((len(texts), 2), dtype=np.int64)
    n = 0
    with open(folder / f"{split}.bin", "wb") as f, \
            tqdm(total=len(texts), desc=f"{dataset} {split} tokens", unit="doc") as progress:
        for first in range(0, len(texts), batch_docs):
            batch, ids = texts[first:first + batch_docs], []
            for i, doc in enumerate(encode_batch(batch), first):
                spans[i] = n + len(ids), n + len(ids) + len(doc)
                ids += doc
                if eot_token is not None:
                    ids.append(eot_token)
            chunk = np.array(ids, dtype=np.int64)
            if chunk.size and chunk.max() >= 2**16:
                raise ValueError(f"{dataset} {split}: token id {chunk.max()} does not fit in uint16")
            f.write(chunk.astype(np.uint16).tobytes())
            n += len(chunk)
            progress.update(len(batch))
    np.save(folder / f"{split}_docs.npy", spans)
    print(f"{dataset} {split}: {len(texts):,} documents, {n:,} tokens")
    return n
