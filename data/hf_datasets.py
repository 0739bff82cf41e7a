"""
Prepare a dataset of the Hugging Face `datasets` library for train.py, as nanoGPT's data/openwebtext/prepare.py
does, in bounded memory: the library downloads the dataset once into its cache (memory-mapped Arrow files), and
write_dataset (data/write.py) reads its rows one at a time into this repository's format. Needs internet and
`pip install datasets` (see requirements-dev.txt).

    python data/hf_datasets.py --name=openwebtext                        # OpenWebText, as nanoGPT trains on
    python train.py --dataset=data/_hf/openwebtext-gpt2 ...

    python data/hf_datasets.py --name=json --data_files=my/docs.jsonl    # your own files, through a loader of
                                                                         # the library (json, csv, parquet)

A document is one row's text_column; rows without text are dropped. Train and val are both cut from the library's
split `split`, by document: row i goes to val when sha256(str(i)) % 100 < val_percent (data.write.split_of).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `data` imports when run as a script
from configurator import ConfigError, configure
from data.prepare import DATA_ROOT
from data.write import split_of, write_dataset

name = ""  # the dataset on the hub (openwebtext), or one of the library's loaders (json, csv, parquet)
config = ""  # the dataset's configuration, for datasets that have several
split = "train"  # the library's split that train and val are cut from
data_files = ""  # your files (a path or a glob) for a loader such as json
text_column = "text"
tokenizer = "gpt2"  # 'gpt2' (GPT-2 BPE) or 'char'
val_percent = 1  # percent of the documents that go to val (an integer, 1 or more)
out_dir = ""  # default: data/_hf/<name>-<tokenizer>


def load(name, config="", split="train", data_files=""):
    try:
        import datasets
    except ImportError:
        raise ConfigError("preparing a Hugging Face dataset needs the datasets library: "
                          "pip install -r requirements-dev.txt") from None
    return datasets.load_dataset(name, config or None, split=split, data_files=data_files or None)


def prepare(dataset, out_dir, name, text_column="text", tokenizer="gpt2", val_percent=1, source="",
            rows_per_read=1000):
    """Write the documents of a datasets.Dataset to out_dir (write_dataset); return the meta."""
    if text_column not in dataset.column_names:
        raise ConfigError(f"{name} has no column '{text_column}' (its columns: {', '.join(dataset.column_names)}): "
                          f"set --text_column")
    rows = dataset.select_columns([text_column])

    def documents(side):
        for first in range(0, len(rows), rows_per_read):
            for i, text in enumerate(rows[first:first + rows_per_read][text_column], first):
                if split_of(str(i), val_percent) == side and (text or "").strip():  # a missing text is None
                    yield text

    meta = write_dataset(out_dir, {side: documents(side) for side in ("train", "val")}, tokenizer, name,
                         source=source or f"datasets: {name}, {len(rows):,} rows")
    if not meta["n_tokens"]["val"]:
        raise ConfigError(f"no document of {name} went to val ({len(rows):,} rows, val_percent={val_percent}): "
                          f"raise --val_percent")
    return meta


if __name__ == "__main__":
    try:
        configure(globals(), sys.argv[1:], help_from=__file__)
        if not name:
            raise ConfigError("say which dataset: --name=openwebtext (from the hub) or --name=json "
                              "--data_files=docs.jsonl (your files)")
        if tokenizer not in ("gpt2", "char"):
            raise ConfigError(f"tokenizer must be 'gpt2' or 'char', got '{tokenizer}'")
        folder = Path(out_dir) if out_dir else DATA_ROOT / "_hf" / f"{name.replace('/', '_')}-{tokenizer}"
        prepare(load(name, config, split, data_files), folder, name, text_column, tokenizer, val_percent,
                source=f"datasets.load_dataset({name!r}, {config or None!r}, split={split!r}, "
                       f"data_files={data_files or None!r})")
        print(f"prepared into {folder}; train on it with: python train.py --dataset={folder}")
    except ConfigError as e:
        sys.exit(f"error: {e}")
