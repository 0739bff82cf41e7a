"""
Use a folder that nanoGPT's prepare.py wrote (train.bin, val.bin and, for characters, meta.pkl) without tokenizing
it again: write the rest of this repository's format beside its token files (data/dataset.py), meta.json last.

    python -m tools.from_nanogpt data/shakespeare_char     # then: python train.py --dataset=data/shakespeare_char

The .bin files are kept as they are. meta.pkl is read as data only (read_nanogpt_meta): a pickle can name any Python
function to call while it loads, and nanoGPT's holds nothing but a dict of ints and strings, which loads without
naming one. A folder without meta.pkl is GPT-2 BPE (nanoGPT's openwebtext, shakespeare): its documents are the runs
of tokens between EOT tokens. The texts, which the planner reads, are decoded from the tokens; for openwebtext's 9B
tokens that takes a while, still far less than tokenizing again. meta.pkl stays, so nanoGPT can still read the folder.
"""

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from data.dataset import FORMAT_VERSION, META, load_tokens
from data.files import crc32, reporting_full_disk, write_atomically
from data.vocabulary import get_codec, gpt2_encoding, vocabulary
from data.write import write_texts

SPLITS = ("train", "val")
CHUNK = 1 << 24  # tokens scanned for EOTs at a time


class DataOnly(pickle.Unpickler):
    """Loads dicts, lists, strings and numbers, which a pickle builds without naming anything; refuses every class
    or function it names (what a crafted pickle calls to run code), before calling it."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_nanogpt_meta(path):
    """nanoGPT's meta.pkl of a character dataset, {'vocab_size', 'itos', 'stoi'}, read as data only and checked."""
    try:
        with open(path, "rb") as f:
            meta = DataOnly(f).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} names a Python object ({e}) where nanoGPT's meta.pkl holds only a dict of "
                         f"characters: it is not read, since loading it would call that object") from None
    except Exception as e:  # a truncated or foreign file raises any of several types
        raise ValueError(f"{path} cannot be read as a pickle ({type(e).__name__}): prepare the folder again with "
                         f"nanoGPT's prepare.py") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not (isinstance(itos, dict) and sorted(itos) == list(range(len(itos))) and meta.get("vocab_size") == len(itos)
            and all(isinstance(c, str) and len(c) == 1 for c in itos.values())
            and meta.get("stoi") == {c: i for i, c in itos.items()}):
        raise ValueError(f"{path} is not nanoGPT's meta.pkl of a character dataset (vocab_size, and itos and stoi "
                         f"mapping ids 0..vocab_size-1 to single characters and back)")
    return meta


def convert(data_dir):
    """Write meta.json and the docs and texts files for nanoGPT's prepared folder data_dir; return the meta."""
    data_dir = Path(data_dir)
    missing = [f"{split}.bin" for split in SPLITS if not (data_dir / f"{split}.bin").is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir} has no {' or '.join(missing)}: run nanoGPT's prepare.py for it first")
    if (data_dir / META).is_file():
        raise ValueError(f"{data_dir} already has its {META}: train on it with --dataset={data_dir}")
    meta = {"format_version": FORMAT_VERSION, "dataset": data_dir.name}
    if (data_dir / "meta.pkl").is_file():
        chars = read_nanogpt_meta(data_dir / "meta.pkl")["itos"]
        meta.update(tokenizer="char", vocab_size=len(chars), eot_token=None,
                    stoi={c: i for i, c in chars.items()}, itos=chars)
    else:
        enc = gpt2_encoding()
        meta.update(tokenizer="gpt2", vocab_size=enc.n_vocab, eot_token=enc.eot_token, stoi=None, itos=None)
    _, decode = get_codec(vocabulary(meta))
    with reporting_full_disk(data_dir):
        meta["n_tokens"] = {}
        for split in SPLITS:
            tokens = load_tokens(data_dir, split)
            spans = document_spans(tokens, meta["eot_token"])
            np.save(data_dir / f"{split}_docs.npy", spans)
            write_texts(data_dir, split, (decode(tokens[start:end]) for start, end in spans))
            meta["n_tokens"][split] = len(tokens)
            print(f"{data_dir / split}.bin: {len(spans):,} documents, {len(tokens):,} tokens")
        meta.update(source=f"nanoGPT's prepared folder {data_dir.name}",
                    files={name: {"bytes": os.path.getsize(data_dir / name), "crc32": crc32(data_dir / name)}
                           for split in SPLITS for name in (f"{split}.bin", f"{split}_docs.npy",
                                                            f"{split}_texts.txt", f"{split}_text_spans.npy")})
        # Last, and whole or not at all: a meta.json means the folder is complete.
        write_atomically(data_dir / META, lambda f: f.write(json.dumps(meta).encode()))
    return meta


def document_spans(tokens, eot_token):
    """[start, end) of each document's tokens, EOT excluded: the whole split for characters (no separator), the runs
    between EOTs for GPT-2 BPE, the last one also when no EOT closes it (nanoGPT's shakespeare has none at all)."""
    if eot_token is None:
        return np.array([[0, len(tokens)]], dtype=np.int64)
    eots = np.concatenate([np.flatnonzero(tokens[i:i + CHUNK] == eot_token) + i for i in range(0, len(tokens), CHUNK)]
                          + [np.zeros(0, dtype=np.int64)])
    starts = np.concatenate([[0], eots + 1])
    ends = np.concatenate([eots, [len(tokens)]])
    keep = np.ones(len(starts), dtype=bool)
    keep[-1] = ends[-1] > starts[-1]  # nothing after the final EOT is no document
    return np.stack([starts[keep], ends[keep]], axis=1).astype(np.int64)


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        raise ValueError("usage: python -m tools.from_nanogpt <folder nanoGPT's prepare.py wrote, e.g. "
                         "data/shakespeare_char>")
    convert(argv[0])
    print(f"{argv[0]} is ready: python train.py --dataset={argv[0]}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
