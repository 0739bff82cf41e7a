"""Tests of data/files.py: atomic writes, dead temporaries, full-disk messages and the cache folders."""

import errno
import json
import os

import numpy as np
import pytest

from data.files import (DiskFull, load_cache, remove_dead_temporaries, save_cache, seal_cache, temporary_path,
                        write_atomically)

HEADER = {"data": "abc", "k": 4}
ARRAYS = {"ids": np.arange(10, dtype=np.uint16), "probs": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
          "words": np.array(["a", "bc"])}


def assert_equal_arrays(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name


# --- caches --------------------------------------------------------------------------------------------------------
def test_a_cache_is_memory_mapped_read_only_and_used_only_for_its_header(tmp_path, capsys):
    folder = tmp_path / "cache"
    assert load_cache(folder, HEADER) is None and capsys.readouterr().out == ""  # never built: nothing to say
    save_cache(folder, HEADER, ARRAYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary left
    loaded = load_cache(folder, HEADER)
    assert_equal_arrays(loaded, ARRAYS)
    assert not loaded["ids"].flags.writeable and not loaded["ids"].flags.owndata
    assert load_cache(folder, dict(HEADER, k=5)) is None
    assert capsys.readouterr().out == f"rebuilding {folder}: it was built from other data or settings\n"
    save_cache(folder, dict(HEADER, k=5), {"ids": np.zeros(3)})  # rebuilt: replaces the old folder whole
    assert sorted(p.name for p in folder.iterdir()) == ["header.json", "ids.npy"]


@pytest.mark.parametrize("damage, why", [
    (lambda folder: (folder / "probs.npy").unlink(), "probs.npy is missing"),
    (lambda folder: (folder / "header.json").unlink(), "header.json is missing"),
    (lambda folder: (folder / "ids.npy").write_bytes((folder / "ids.npy").read_bytes()[:-2]),
     "ids.npy has 146 bytes, not the 148 written"),
    (lambda folder: (folder / "header.json").write_text("{not json"), "it cannot be read (JSONDecodeError)"),
    (lambda folder: (folder / "header.json").write_text(json.dumps(HEADER)),
     "it was written by an older version of this code"),
])
def test_a_cache_folder_with_a_file_missing_or_cut_is_rebuilt(tmp_path, capsys, damage, why):
    save_cache(tmp_path, HEADER, ARRAYS)
    damage(tmp_path)
    assert load_cache(tmp_path, HEADER) is None
    assert capsys.readouterr().out.strip() == f"rebuilding {tmp_path}: {why}"


@pytest.mark.parametrize("overwrite", [
    lambda data: np.zeros_like(data),  # a zeroed file
    lambda data: np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8),  # random bytes
    lambda data: np.where(np.arange(len(data)) == len(data) - 1, data ^ 1, data),  # one bit
])
def test_a_cache_file_overwritten_with_bytes_of_the_same_size_is_rebuilt(tmp_path, capsys, overwrite):
    save_cache(tmp_path, HEADER, ARRAYS)
    path = tmp_path / "probs.npy"
    data = np.fromfile(path, np.uint8)
    header_bytes = 128  # the .npy header of a small array: the data after it is what is overwritten
    data[header_bytes:] = overwrite(data[header_bytes:])
    data.tofile(path)
    assert load_cache(tmp_path, HEADER) is None
    assert "probs.npy does not match the checksum written with it" in capsys.readouterr().out
    assert load_cache(tmp_path, HEADER, verify=False) is not None  # sizes alone cannot see it


def test_a_streamed_folder_is_sealed_whole(tmp_path):
    folder = tmp_path / "streamed"
    work = temporary_path(folder)
    work.mkdir()
    with open(work / "ids.npy", "wb") as f:  # written piece by piece, as the n-gram build writes its files
        np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (10,)})
        for piece in np.array_split(ARRAYS["ids"], 3):
            f.write(piece.tobytes())
    seal_cache(work, folder, HEADER)
    assert not work.exists()
    assert_equal_arrays(load_cache(folder, HEADER), {"ids": ARRAYS["ids"]})


def test_a_cache_holding_python_objects_is_rebuilt_never_unpickled(tmp_path, capsys):
    save_cache(tmp_path, HEADER, {"ids": ARRAYS["ids"]})
    np.save(tmp_path / "ids.npy", np.array([print], dtype=object), allow_pickle=True)
    stored = json.loads((tmp_path / "header.json").read_text())
    stored["files"]["ids.npy"] = {"bytes": (tmp_path / "ids.npy").stat().st_size, "crc32": 0}
    (tmp_path / "header.json").write_text(json.dumps(stored))
    assert load_cache(tmp_path, HEADER, verify=False) is None
    assert "cannot be read (ValueError)" in capsys.readouterr().out


# --- temporaries ---------------------------------------------------------------------------------------------------
def test_only_the_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = [tmp_path / "train.bin.999999999.0a1b2c3d.tmp", tmp_path / "writing.999999999.0a1b2c3d.tmp",
            tmp_path / ".ngram_build.999999999.0a1b2c3d.tmp"]  # pid 999999999 cannot exist
    alive = [tmp_path / f"meta.json.{os.getpid()}.0a1b2c3d.tmp", tmp_path / "writing.1.0a1b2c3d.tmp"]  # pid 1 is
    others = [tmp_path / "notes.tmp", tmp_path / "train.bin"]
    for path in dead + alive + others:
        path.mkdir() if "writing" in path.name or "ngram" in path.name else path.write_bytes(b"x")
    (dead[1] / "train.bin").write_bytes(b"half")
    remove_dead_temporaries(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(alive + others)


# --- a full disk ---------------------------------------------------------------------------------------------------
def fill_the_disk(wrapped):
    def write(f):
        f.write(b"ne")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            if wrapped == "torch":  # what torch.save raises when the file under its zip writer fails
                raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos") from None
            if wrapped == "numpy":  # ndarray.tofile's short write
                raise OSError("35996 requested and 14336 written") from None
            raise
    return write


@pytest.mark.parametrize("wrapped", ["plain", "torch", "numpy"])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, wrapped):
    path = tmp_path / "state.bin"
    write_atomically(path, lambda f: f.write(b"old"))
    with pytest.raises(DiskFull) as info:
        write_atomically(path, fill_the_disk(wrapped))
    assert f"no space left on the disk of {path} (" in str(info.value) and \
        str(info.value).endswith(" free): free space on that disk, then run again")
    assert (info.value.errno, info.value.strerror) == (errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_other_write_errors_pass_unchanged(tmp_path):
    def fail(f):
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError, match="Input/output error") as info:
        write_atomically(tmp_path / "state.bin", fail)
    assert not isinstance(info.value, DiskFull)
