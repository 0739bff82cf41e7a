"""A prepared dataset on disk, and reading it: the format data/write.py writes.

On-disk format (FORMAT_VERSION = 3), in data/<name>/:
  train.bin, val.bin          uint16 token ids, documents concatenated. For 'gpt2' datasets every
                              document's tokens are followed by the EOT token 50256; for 'char'
                              there is no separator.
  train_docs.npy, val_docs.npy
                              int64 array (n_docs, 2): [start, end) of each document's own tokens
                              in the .bin (end excludes the trailing EOT), so
                              bin[start:end] == encode(text) exactly.
  train_texts.txt, val_texts.txt
                              the raw document texts in UTF-8, one after another with nothing
                              between them, aligned with the docs arrays;
  train_text_spans.npy, val_text_spans.npy
                              int64 array (n_docs, 2): [start, end) of each document's bytes in
                              the .txt, so that load_texts reads one document at a time.
  meta.json                   format_version (int), dataset (name), tokenizer ('char' or 'gpt2'),
                              vocab_size (50257 for gpt2, len(chars) for char), eot_token (50256 or
                              null), stoi/itos (for char: character -> id and id -> character; null
                              for gpt2), n_tokens {'train': int, 'val': int} (EOTs included), source
                              ('package==version sha256:...'), files {name: {'bytes', 'crc32'}} of
                              the eight files above.
meta.json is data, read as data: format 2 kept a pickle (meta.pkl), which can run code when read, and is never
read now; nor is nanoGPT's meta.pkl, except by tools/from_nanogpt.py, which reads it as data only and writes the
folder's meta.json. Every file is written under a temporary name and renamed into place, meta.json last: a
meta.json means the dataset is complete. load_checked_tokens checks the .bin files against meta.json (size,
crc32, ids inside the vocabulary) before training reads them.
"""

import collections.abc
import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np

FORMAT_VERSION = 3
META = "meta.json"
TEXT_CACHE = "_text"  # your own text is prepared into data/_text/<name>-<tokenizer>-<hash> (data/prepare.py)


def load_meta(data_dir):
    """The meta.json of a prepared dataset, checked to be a dataset's meta in this format."""
    data_dir = Path(data_dir)
    path = data_dir / META
    if not path.is_file():
        if (data_dir / "meta.pkl").is_file() and not (data_dir / "train_docs.npy").is_file():
            raise ValueError(f"{data_dir} is a folder nanoGPT prepared (train.bin, val.bin, meta.pkl): write its "
                             f"{META} once with python -m tools.from_nanogpt {data_dir}")
        if (data_dir / "meta.pkl").is_file():
            raise ValueError(f"{data_dir} was prepared by an older version of this code: its meta.pkl is a pickle, "
                             f"which is never read (a crafted one would run code): {rebuild_hint(data_dir)}")
        if (data_dir / "train.bin").is_file() and not (data_dir / "train_docs.npy").is_file():
            raise ValueError(f"{data_dir} looks like a GPT-2 BPE folder nanoGPT prepared (train.bin, val.bin): write "
                             f"its {META} once with python -m tools.from_nanogpt {data_dir}")
        raise FileNotFoundError(f"no prepared dataset at {data_dir} ({META} is missing): run its prepare.py, or "
                                f"write it with data.write.write_dataset")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}): {rebuild_hint(data_dir)}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a dataset's meta: {rebuild_hint(data_dir)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is in format {meta.get('format_version')}, this code reads format "
                         f"{FORMAT_VERSION}: {rebuild_hint(data_dir)}")
    if meta.get("itos") is not None:  # JSON keys are strings
        meta["itos"] = {int(i): c for i, c in meta["itos"].items()}
    return meta


def load_tokens(data_dir, split):
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.uint16, mode="r")


def load_checked_tokens(data_dir, meta, block_size=0, chunk=1 << 24):
    """{'train': tokens, 'val': tokens} as memmaps, checked against meta first: a file cut short (by a full disk, a
    copy), changed on disk (its crc32) or holding an id outside the vocabulary stops here with its name and the fix,
    instead of training on part of the data, on other data, or failing inside the embedding; so does a split of no
    more than block_size tokens, which has no window to train or evaluate on (a folder prepared from your own text
    is then deleted, so that a refused text leaves nothing behind). The ids are read once, chunk tokens at a time."""
    tokens = {split: checked_split(data_dir, meta, split, chunk) for split in ("train", "val")}
    for split, data in tokens.items():
        if len(data) <= block_size:
            if is_prepared_text(data_dir):
                shutil.rmtree(data_dir, ignore_errors=True)
            raise ValueError(f"the {split} split of {meta['dataset']} has {len(data)} tokens, not more than "
                             f"block_size {block_size}: lower block_size, or give it more text")
    return tokens


def checked_split(data_dir, meta, split, chunk):
    path = Path(data_dir) / f"{split}.bin"
    n_tokens = meta["n_tokens"][split]
    size = path.stat().st_size if path.is_file() else None
    if size != 2 * n_tokens:  # uint16
        found = "is missing" if size is None else f"has {size:,} bytes"
        raise ValueError(f"{path} {found} but {META} counts {n_tokens:,} tokens ({2 * n_tokens:,} bytes): "
                         f"{rebuild_hint(data_dir)}")
    data = load_tokens(data_dir, split) if n_tokens else np.zeros(0, dtype=np.uint16)  # mmap refuses empty files
    crc, top = 0, -1
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        crc, top = zlib.crc32(piece, crc), max(top, int(piece.max()))
    if crc != meta["files"][path.name]["crc32"]:
        raise ValueError(f"{path} does not match the checksum in {META} (it changed on disk since it was "
                         f"written): {rebuild_hint(data_dir)}")
    if top >= meta["vocab_size"]:
        raise ValueError(f"{path} holds token id {top}, outside the vocabulary of {meta['vocab_size']} ids in "
                         f"{META}: {rebuild_hint(data_dir)}")
    return data


def is_prepared_text(data_dir):
    """Whether data_dir is a folder data/prepare.py prepared your own text into (<name>-<tokenizer>-<hash>)."""
    data_dir = Path(data_dir).resolve()
    return data_dir.parent.name == TEXT_CACHE and re.fullmatch(r".+-(char|gpt2)-[0-9a-f]{12}", data_dir.name)


def rebuild_hint(data_dir):
    """The fix for a damaged or outdated dataset folder, for the messages that report one."""
    data_dir = Path(data_dir).resolve()
    if (data_dir / "prepare.py").is_file():
        return f"prepare it again with python {data_dir / 'prepare.py'}"
    if is_prepared_text(data_dir):
        return f"delete {data_dir}; the next run prepares the text again"
    return "write it again with data.write.write_dataset"


def load_docs(data_dir, split):
    return np.load(Path(data_dir) / f"{split}_docs.npy")


def load_texts(data_dir, split):
    """The split's document texts, each read from disk when asked for: texts[i], texts[a:b] (a list), len, iteration."""
    path = Path(data_dir) / f"{split}_texts.txt"
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.uint8)
    spans = np.load(Path(data_dir) / f"{split}_text_spans.npy", mmap_mode="r")
    return Pieces(data, spans, lambda piece: piece.tobytes().decode("utf-8"))


class Pieces(collections.abc.Sequence):
    """pieces[i] is decode(data[start:end]) for the i-th [start, end) of spans, decoded only when read: a split's
    documents (or sentences) one at a time from a memory-mapped file, never all in memory. A slice gives a list."""

    def __init__(self, data, spans, decode):
        self.data, self.spans, self.decode = data, spans, decode

    def __len__(self):
        return len(self.spans)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.decode(self.data[start:end]) for start, end in self.spans[i].tolist()]
        start, end = self.spans[i]
        return self.decode(self.data[start:end])
