"""Tests of data/hf_datasets.py on datasets of the Hugging Face `datasets` library made here, from local files: no
hub access."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from configurator import ConfigError
from data import hf_datasets
from data.dataset import load_meta, load_texts, load_tokens
from data.vocabulary import gpt2_encoding
from data.write import split_of

ROOT = Path(__file__).resolve().parents[1]
DOCS = [f"Document {i}: Ünïcödé 日本語 🙂 text.\n" * (i % 3 + 1) for i in range(60)] + ["   ", "", None]


def expected_splits(val_percent):
    """The old way, written out: row i's document goes to val by split_of(str(i)); rows without text are dropped."""
    splits = {"train": [], "val": []}
    for i, text in enumerate(DOCS):
        if text and text.strip():
            splits[split_of(str(i), val_percent)].append(text)
    assert splits["train"] and splits["val"]
    return splits


def test_a_dataset_is_written_as_its_documents_tokenized_one_by_one(tmp_path):
    dataset = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "body": DOCS})
    meta = hf_datasets.prepare(dataset, tmp_path, "mine", text_column="body", val_percent=20, rows_per_read=7)
    enc = gpt2_encoding()
    for split, texts in expected_splits(20).items():
        assert list(load_texts(tmp_path, split)) == texts
        expected_tokens = [t for text in texts for t in enc.encode_ordinary(text) + [50256]]
        assert load_tokens(tmp_path, split).tolist() == expected_tokens
    assert meta == load_meta(tmp_path) and meta["dataset"] == "mine"


def test_the_command_loads_local_files_with_a_loader_of_the_library(tmp_path):
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"text": text}) + "\n" for text in DOCS), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "data/hf_datasets.py", "--name=json", f"--data_files={rows}",
                             f"--out_dir={out}", "--val_percent=20", "--tokenizer=char"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"python train.py --dataset={out}" in result.stdout
    assert {split: list(load_texts(out, split)) for split in ("train", "val")} == expected_splits(20)


def test_bad_input_gets_a_clear_error(tmp_path, monkeypatch):
    dataset = datasets.Dataset.from_dict({"body": DOCS})
    with pytest.raises(ConfigError, match="no column 'text' \\(its columns: body\\): set --text_column"):
        hf_datasets.prepare(dataset, tmp_path, "mine")
    with pytest.raises(ConfigError, match="no document of mine went to val .* raise --val_percent"):
        hf_datasets.prepare(datasets.Dataset.from_dict({"text": DOCS[:2]}), tmp_path, "mine", val_percent=1)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="needs the datasets library: pip install -r requirements-dev.txt"):
        hf_datasets.load("openwebtext")
