"""A user's own data: text prepared from one flag, dataset paths, checkpoints that carry their vocabulary, tuning
across vocabularies, and damaged data files. Every corpus is made here; DATA_ROOT is a temporary folder."""

import json
import shutil

import numpy as np
import pytest
import torch

import sample
import train
from configurator import ConfigError
from data import prepare
from data.dataset import TEXT_CACHE, load_checked_tokens, load_meta, load_texts
from data.prepare import ensure_prepared
from data.write import split_by_hash, write_dataset
from training import checkpoint as ckpt
from training.plot import read_log

TINY = [train.PLAIN_CONFIG, "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--log_interval=1",
        "--compile=False"]
FOX = "the quick brown fox jumps over the lazy dog. " * 200


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setattr(prepare, "DATA_ROOT", root)
    return root


def prepared_folders(data_root):
    return sorted(p.name for p in (data_root / TEXT_CACHE).iterdir())


# --- your own text -------------------------------------------------------------------------------------------------
def test_a_text_file_is_prepared_once_split_by_position_and_again_when_it_changes(data_root, tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("0123456789" * 10, encoding="utf-8")
    data_dir = ensure_prepared(str(book))
    assert data_dir.parent == data_root / TEXT_CACHE and data_dir.name.startswith("book-char-")
    assert list(load_texts(data_dir, "train")) == ["0123456789" * 9]
    assert list(load_texts(data_dir, "val")) == ["0123456789"]
    assert "preparing" in capsys.readouterr().out
    assert ensure_prepared(str(book)) == data_dir
    assert "preparing" not in capsys.readouterr().out  # reused while the text is unchanged

    book.write_text("9876543210" * 10, encoding="utf-8")
    edited = ensure_prepared(str(book))
    assert edited != data_dir and list(load_texts(edited, "val")) == ["9876543210"]
    bpe = ensure_prepared(str(book), "gpt2")
    assert bpe.name.startswith("book-gpt2-") and load_meta(bpe)["tokenizer"] == "gpt2"
    assert len(prepared_folders(data_root)) == 3


def test_a_folder_of_texts_is_split_by_document(data_root, tmp_path):
    corpus = tmp_path / "letters"
    (corpus / "more").mkdir(parents=True)
    docs = {f"{'more/' if i % 3 == 0 else ''}letter{i}.txt": f"Letter number {i}.\nYours, me.\n" for i in range(40)}
    for name, text in docs.items():
        (corpus / name).write_text(text.replace("\n", "\r\n"), encoding="utf-8")  # Windows newlines become '\n'
    (corpus / "empty.txt").write_text("  \n", encoding="utf-8")
    (corpus / "notes.md").write_text("not a document", encoding="utf-8")
    data_dir = ensure_prepared(str(corpus))
    expected = split_by_hash(dict(sorted(docs.items())))
    assert {split: list(load_texts(data_dir, split)) for split in ("train", "val")} == expected
    assert expected["val"] and expected["train"]


def test_a_corrupt_prepared_text_is_rebuilt_or_named_with_the_fix(data_root, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(FOX, encoding="utf-8")
    data_dir = ensure_prepared(str(book))
    (data_dir / "meta.json").write_bytes(b"garbage")
    assert ensure_prepared(str(book)) == data_dir and load_meta(data_dir)["vocab_size"] == len(set(FOX))
    cut_to(100)(data_dir)  # only a full read finds this: the run that reads it says how to rebuild
    with pytest.raises(ValueError, match=f"train.bin has 100 bytes.*: delete {data_dir}; the next run prepares"):
        load_checked_tokens(data_dir, load_meta(data_dir))


@pytest.mark.parametrize("content, message", [
    ("latin-1", "book.txt is not UTF-8 text \\(byte 0xe9 at offset 3\\): save it as UTF-8"),
    ("", "too little text for a train and a validation split"),
])
def test_unusable_text_is_refused_with_its_name(data_root, tmp_path, content, message):
    book = tmp_path / "book.txt"
    book.write_bytes("café au lait".encode(content) if content else b"")
    with pytest.raises(ValueError, match=message):
        ensure_prepared(str(book))


def test_a_text_refused_as_too_short_leaves_nothing_behind(data_root, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("a short text. " * 10, encoding="utf-8")
    data_dir = ensure_prepared(str(book))
    with pytest.raises(ValueError, match="^the val split of book has 14 tokens, not more than block_size 64: lower "
                                         "block_size, or give it more text$"):
        load_checked_tokens(data_dir, load_meta(data_dir), block_size=64)
    assert not data_dir.exists()
    mine = tmp_path / "mine"  # a folder of yours is refused the same way, never deleted
    write_dataset(mine, {"train": ["a short text. " * 9], "val": ["a short text. "]}, "char", "mine", "test")
    with pytest.raises(ValueError, match="the val split of mine has 14 tokens"):
        load_checked_tokens(mine, load_meta(mine), block_size=64)
    assert (mine / "meta.json").is_file()


def test_dataset_paths_are_found_by_existence_not_by_separators(data_root, tmp_path, monkeypatch):
    write_dataset(tmp_path / "mine", {"train": ["abc"], "val": ["cab"]}, "char", "mine", source="test")
    monkeypatch.chdir(tmp_path)
    assert ensure_prepared("mine").samefile(tmp_path / "mine")  # a relative folder with no separator in its name
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ensure_prepared("~/mine").samefile(tmp_path / "mine")
    (data_root / "shakespeare_char").mkdir()
    write_dataset(data_root / "shakespeare_char", {"train": ["abc"], "val": ["cab"]}, "char", "shakespeare_char",
                  source="test")
    assert ensure_prepared("shakespeare_char/") == data_root / "shakespeare_char"
    for missing in ("nowhere/x", ""):
        with pytest.raises(ValueError, match=f"unknown dataset '{missing}': no such file or folder"):
            ensure_prepared(missing)
    with pytest.raises(ValueError, match="tokenizer must be 'char'.*or 'gpt2'.*got 'bpe'"):
        ensure_prepared("mine", "bpe")


def test_a_text_trains_and_samples_after_its_dataset_is_gone(data_root, tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text(FOX, encoding="utf-8")
    out_dir = tmp_path / "out"
    train.main([*TINY, f"--dataset={book}", f"--out_dir={out_dir}", "--max_iters=2", "--eval_interval=2"])
    shutil.rmtree(data_root / TEXT_CACHE)
    book.unlink()
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", "--start=the ", "--num_samples=1", "--max_new_tokens=30", "--device=cpu"])
    text = capsys.readouterr().out.splitlines()[0]
    assert text.startswith("the ") and len(text) == 34 and set(text) <= set(FOX)


def test_a_checkpoint_without_its_vocabulary_is_read_through_its_dataset_or_refused(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_dataset(corpus, {"train": [FOX[:7000]], "val": [FOX[7000:]]}, "char", "fox", "made by the test")
    out_dir = tmp_path / "out"
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", "--max_iters=0"])
    checkpoint = ckpt.load(str(out_dir / "ckpt.pt"))
    del checkpoint["vocab"]  # as written before checkpoints carried their vocabulary
    torch.save(checkpoint, out_dir / "ckpt.pt")
    args = [f"--out_dir={out_dir}", "--num_samples=1", "--max_new_tokens=5", "--device=cpu", "--start=the "]
    capsys.readouterr()
    sample.main(args)
    assert capsys.readouterr().out.startswith("the ")
    shutil.rmtree(corpus)
    with pytest.raises(ValueError, match="predates checkpoints that carry their vocabulary.*put the dataset back"):
        sample.main(args)


def test_an_older_bpe_checkpoint_samples_without_its_dataset(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_dataset(corpus, {"train": [FOX[:7000]], "val": [FOX[7000:]]}, "gpt2", "fox", "made by the test")
    out_dir = tmp_path / "out"
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", "--max_iters=0"])
    checkpoint = ckpt.load(str(out_dir / "ckpt.pt"))
    del checkpoint["vocab"]  # the GPT-2 BPE is one vocabulary: its name is enough
    torch.save(checkpoint, out_dir / "ckpt.pt")
    shutil.rmtree(corpus)
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", "--num_samples=1", "--max_new_tokens=5", "--device=cpu", "--start=the fox"])
    assert capsys.readouterr().out.startswith("the fox")


def test_a_checkpoint_naming_neither_vocabulary_nor_dataset_is_refused():
    with pytest.raises(ValueError, match="names neither its vocabulary nor its dataset \\(its tokenizer: 'x'\\)"):
        ckpt.vocab({"model": {}, "model_args": {}, "config": {}, "tokenizer": "x"})


# --- tuning across vocabularies ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint trained on FOX (28 characters) and its vocabulary."""
    path = tmp_path_factory.mktemp("pretrained")
    write_dataset(path / "data", {"train": [FOX[:7000]], "val": [FOX[7000:]]}, "char", "fox", "made by the test")
    train.main([*TINY, f"--dataset={path / 'data'}", f"--out_dir={path / 'out'}", "--max_iters=4",
                "--eval_interval=4"])
    return ckpt.load(str(path / "out" / "ckpt.pt")), load_meta(path / "data")


@pytest.mark.parametrize("text", [
    "The Quick Brown Fox Jumps! the lazy dog? " * 150,  # more characters: capitals and punctuation are new
    "the lazy dog ate the toad. " * 250,  # fewer characters: every one is in the checkpoint's vocabulary
])
def test_tuning_on_another_character_vocabulary_keeps_each_shared_characters_row(pretrained, tmp_path, text):
    checkpoint, old = pretrained
    cut = int(0.9 * len(text))
    write_dataset(tmp_path / "data", {"train": [text[:cut]], "val": [text[cut:]]}, "char", "other", "test")
    trainer = train.main([*TINY, f"--dataset={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}", "--max_iters=0",
                          f"--init_from={pretrained_path(checkpoint, tmp_path)}", "--sample_tokens=20"])
    new = trainer.meta["stoi"]
    rows = trainer.model.gpt.lm_head.weight.detach()
    assert rows.shape[0] == len(new) == len(set(text))
    learned = checkpoint["model"]["gpt.lm_head.weight"]
    for char in set(new) & set(old["stoi"]):
        assert torch.equal(rows[new[char]], learned[old["stoi"][char]]), char
    assert torch.equal(trainer.model.gpt.transformer.wte.weight, trainer.model.gpt.lm_head.weight)


def pretrained_path(checkpoint, tmp_path):
    path = tmp_path / "pretrained.pt"
    torch.save(checkpoint, path)
    return path


def test_tuning_characters_on_bpe_is_refused_naming_both_vocabularies(pretrained, tmp_path):
    checkpoint, _ = pretrained
    write_dataset(tmp_path / "data", {"train": [FOX[:7000]], "val": [FOX[7000:]]}, "gpt2", "bpe", "test")
    with pytest.raises(ConfigError, match="the 28 characters of fox.*GPT-2 BPE, 50,257 tokens.*--tokenizer=char"):
        train.main([*TINY, f"--dataset={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}", "--max_iters=0",
                    f"--init_from={pretrained_path(checkpoint, tmp_path)}"])


# --- damaged data files --------------------------------------------------------------------------------------------
def cut_to(n_bytes):
    return lambda folder: (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes()[:n_bytes])


def smaller_vocabulary(folder):
    meta = json.loads((folder / "meta.json").read_text())
    meta["vocab_size"] = 20
    (folder / "meta.json").write_text(json.dumps(meta))


def zeroed(folder):
    tokens = np.fromfile(folder / "train.bin", dtype=np.uint16)
    tokens[100:200] = 0
    tokens.tofile(folder / "train.bin")


@pytest.mark.parametrize("damage, message", [
    (cut_to(7000), "train.bin has 7,000 bytes but meta.json counts 7,000 tokens \\(14,000 bytes\\)"),
    (cut_to(7001), "train.bin has 7,001 bytes but meta.json counts 7,000 tokens \\(14,000 bytes\\)"),
    (smaller_vocabulary, "train.bin holds token id 27, outside the vocabulary of 20 ids in meta.json"),
    (zeroed, "train.bin does not match the checksum in meta.json \\(it changed on disk since it was written\\)"),
    (lambda folder: (folder / "meta.json").write_bytes(b"garbage"), "meta.json cannot be read \\(JSONDecodeError\\)"),
])
def test_a_damaged_data_file_stops_the_run_naming_it_and_the_fix(tmp_path, damage, message):
    corpus = tmp_path / "corpus"
    write_dataset(corpus, {"train": [FOX[:7000]], "val": [FOX[7000:]]}, "char", "fox", "made by the test")
    damage(corpus)
    with pytest.raises(ValueError, match=f"{message}: write it again with data.write.write_dataset"):
        train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path / 'out'}", "--max_iters=0"])


def test_a_damaged_builtin_dataset_names_its_prepare_script(data_root):
    folder = data_root / "shakespeare_char"
    folder.mkdir()
    (folder / "prepare.py").write_text("")
    (folder / "meta.json").write_text('["not", "a", "dict"]')
    with pytest.raises(ValueError, match=f"holds a list.*prepare it again with python {folder / 'prepare.py'}"):
        ensure_prepared("shakespeare_char")


def test_resume_refuses_an_edited_text_and_names_what_changed(data_root, tmp_path):
    book, out_dir = tmp_path / "book.txt", tmp_path / "out"
    book.write_text(FOX, encoding="utf-8")
    run = [*TINY, f"--dataset={book}", f"--out_dir={out_dir}", "--eval_interval=2"]
    train.main([*run, "--max_iters=2"])
    book.write_text(FOX.replace("quick brown", "brown quick"), encoding="utf-8")  # the same characters, other tokens
    with pytest.raises(ConfigError, match="tokens are not those the checkpoint trained on .train.bin"):
        train.main([*run, "--max_iters=4", "--init_from=resume"])
    book.write_text(FOX + " café", encoding="utf-8")  # a new character shifts the ids of those after it
    with pytest.raises(ConfigError, match="vocabulary is not the checkpoint's .* new: 'é'.*--init_from=<its ckpt.pt>"):
        train.main([*run, "--max_iters=4", "--init_from=resume"])
    book.write_text(FOX, encoding="utf-8")  # the text it trained on: the run goes on
    train.main([*run, "--max_iters=4", "--init_from=resume"])
    assert read_log(out_dir)[-1]["iter"] == 4
