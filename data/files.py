"""Files that are never half-written, and caches that are used only when whole and built from what they claim.

Writes. write_atomically(path, write) writes to a temporary file beside path and renames it into place: a reader
never sees half a file, a crash keeps the previous version. Every temporary file or folder is named
<name>.<pid>.<8 hex digits>.tmp (temporary_path); remove_dead_temporaries(folder) deletes those whose process is
gone, the leftovers of a killed write that nothing else would delete. A write that finds its disk full
(reporting_full_disk) stops with one line: the file, the space free there, the space needed where known, the fix.

Caches. A cache is a folder of .npy files and a header.json:
    {"built_from": <the header: what it was built from, any JSON>,
     "files": {"<name>.npy": {"bytes": <size>, "crc32": <of the whole file>}, ...}}
    save_cache(folder, header, arrays)      write {name: array} as <name>.npy files, then seal them (below)
    seal_cache(work, folder, header)        for a writer that streams its own .npy files into a temporary folder
                                            (work = temporary_path(folder)): write header.json, rename into place
    load_cache(folder, header, verify=True, writable=False)
                                            {name: array}, each memory-mapped read-only (writable: copy-on-write,
                                            for torch, which has no read-only tensors), or None
    cached(folder, header, build)           load_cache's arrays (copy-on-write), built first when it returns None
A cache folder is complete or it is rebuilt: load_cache returns None, printing "rebuilding <folder>: <why>", when
the folder was built from another header or by an older version of this code, lacks a file, holds a file of
another size or (verify) one whose crc32 differs from the one written: same-size damage (a bad disk or copy, a
file overwritten) too. Only a missing folder returns None silently. The caller then rebuilds it with save_cache or
seal_cache.
"""

import errno
import json
import math
import mmap
import os
import re
import shutil
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TEMPORARY = re.compile(r".+\.(\d+)\.[0-9a-f]{8}\.tmp")  # temporary_path's names; group 1 is the writer's pid
NUMPY_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # ndarray.tofile's error when the disk fills
CHECK_CHUNK = 1 << 24  # bytes read at a time to compute a checksum


# --- atomic writes -------------------------------------------------------------------------------------------------
def write_atomically(path, write):
    """Call write(binary file) on a temporary file beside path, then rename it to path: a reader never sees a
    half-written file, a crash leaves the previous version in place, and a failed write removes its temporary
    file. The temporary name is unique, so two processes writing the same path never rename each other's file."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with reporting_full_disk(path), open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path(path):
    """A name beside path for writing it, unique to this process and call, that remove_dead_temporaries knows."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_dead_temporaries(folder):
    """Delete the temporary files and folders in folder (temporary_path's names) whose writing process is gone: a
    write killed before it could clean up. A live process's, or one this process cannot judge, is left alone."""
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it would signal it)
        return
    for path in Path(folder).glob("*.tmp"):
        match = TEMPORARY.fullmatch(path.name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except (OverflowError, PermissionError):  # not a pid of ours to judge
            pass


# --- a full disk, in one line ----------------------------------------------------------------------------------------
class DiskFull(OSError):
    """A write that found its disk full. Its message is one line naming the file, the space free on its disk, the
    most space needed where known (needed, bytes) and the fix; errno and strerror stay the full disk's, for callers
    that word their own message."""

    def __init__(self, path, needed=None):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        free = shutil.disk_usage(existing_ancestor(Path(path))).free
        need = f", up to {human_size(needed)} needed" if needed else ""
        self.message = (f"no space left on the disk of {path} ({human_size(free)} free{need}): free space on that "
                        f"disk, then run again")

    def __str__(self):
        return self.message


@contextmanager
def reporting_full_disk(path, needed=None):
    """Turn a full disk met inside the block (ENOSPC or EDQUOT, also when wrapped in another error, as torch.save
    wraps it, and numpy's short write) into DiskFull naming path and, if given, the most bytes needed."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not found_full_disk(e):
            raise
        raise DiskFull(path, needed) from None


def found_full_disk(error):
    while error is not None:
        if isinstance(error, OSError) and (error.errno in (errno.ENOSPC, errno.EDQUOT)
                                           or NUMPY_SHORT_WRITE.fullmatch(str(error))):
            return True
        error = error.__context__
    return False


def existing_ancestor(path):
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def human_size(n_bytes):
    if n_bytes < 1000:
        return f"{n_bytes} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n_bytes /= 1000
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:,.1f} {unit}"


# --- caches: folders of .npy files with a header -----------------------------------------------------------------
def save_cache(folder, header, arrays):
    """Write arrays ({name: array}) as folder/<name>.npy with folder/header.json, in a temporary folder renamed into
    place (replacing an older folder)."""
    folder = Path(folder)
    work = temporary_path(folder)
    work.mkdir(parents=True)
    try:
        with reporting_full_disk(folder):
            for name, array in arrays.items():
                np.save(work / f"{name}.npy", np.asarray(array), allow_pickle=False)
        seal_cache(work, folder, header)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seal_cache(work, folder, header):
    """Write work/header.json (header, and each .npy file's size and crc32), then rename work to folder,
    replacing an older folder."""
    folder = Path(folder)
    files = {path.name: {"bytes": path.stat().st_size, "crc32": crc32(path)} for path in sorted(work.glob("*.npy"))}
    with reporting_full_disk(folder):
        (work / "header.json").write_text(json.dumps({"built_from": header, "files": files}, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)


def load_cache(folder, header, verify=True, writable=False):
    """The arrays of the cache folder ({name: memory-mapped array}, read-only or, if writable, copy-on-write: see
    map_npy) if it was built from exactly header and is whole (every file there, of its size and, if verify, of its
    crc32); else None, printing why when the folder exists: the caller rebuilds it."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        stored = json.loads((folder / "header.json").read_text())
        problem = cache_problem(folder, stored, header, verify)
        if problem is None:
            return {Path(name).stem: map_npy(folder / name, writable) for name in stored["files"]}
    except FileNotFoundError as e:
        problem = f"{Path(e.filename).name} is missing"
    except (OSError, ValueError, TypeError, KeyError) as e:
        problem = f"it cannot be read ({type(e).__name__})"
    print(f"rebuilding {folder}: {problem}")
    return None


def cache_problem(folder, stored, header, verify):
    """Why a cache folder with header.json `stored` cannot be used for header, or None if it can."""
    if not isinstance(stored, dict) or not isinstance(stored.get("files"), dict):
        return "it was written by an older version of this code"
    if stored.get("built_from") != json.loads(json.dumps(header)):
        return "it was built from other data or settings"
    for name, expected in stored["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes, not the {expected['bytes']:,} written"
        if verify and crc32(path) != expected["crc32"]:
            return f"{name} does not match the checksum written with it (it changed on disk)"
    return None


def crc32(path):
    """The crc32 of a file's bytes, read CHECK_CHUNK at a time (not mapped, so the pages read are not counted in
    this process's memory)."""
    value, buffer = 0, bytearray(CHECK_CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            value = zlib.crc32(memoryview(buffer)[:n], value)
    return value


def map_npy(path, writable=False):
    """The array of a .npy file, memory-mapped for random access: training gathers a few scattered rows per batch,
    so the kernel is told not to read ahead or map neighbouring pages (np.load(mmap_mode='r') would). Read-only, or
    if writable copy-on-write: a write changes this process's copy of a page, never the file. torch has no read-only
    tensors, and a write through one wrapping a read-only map would crash the process."""
    with open(path, "rb") as f:
        if np.lib.format.read_magic(f) != (1, 0):
            raise ValueError(f"{path} is not a version 1.0 .npy file")
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        if dtype.hasobject:  # Python objects are pickles: never read from a cache
            raise ValueError(f"{path} holds Python objects")
        offset = f.tell()
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
    if hasattr(mapped, "madvise"):  # Linux, macOS
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype, math.prod(shape), offset).reshape(shape, order="F" if fortran_order else "C")


def cached(folder, header, build):
    """The arrays of the cache folder built from header, memory-mapped copy-on-write so that torch tensors can wrap
    them; first built, when missing, stale or damaged, by build(work), which writes them as .npy files into the
    temporary folder work or returns them ({name: array}) to be written there."""
    folder = Path(folder)
    arrays = load_cache(folder, header, writable=True)
    if arrays is None:
        remove_dead_temporaries(folder.parent)  # a killed build's work folder
        work = temporary_path(folder)
        work.mkdir()
        try:
            with reporting_full_disk(folder):
                for name, array in (build(work) or {}).items():
                    np.save(work / f"{name}.npy", np.asarray(array), allow_pickle=False)
                seal_cache(work, folder, header)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        arrays = load_cache(folder, header, verify=False, writable=True)  # checksummed a moment ago, when sealed
    return arrays
