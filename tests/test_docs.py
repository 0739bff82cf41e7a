"""The README and docs/*.md point only at things that exist: every relative link and image resolves to a file of
the repository (and its #anchor to a heading of that page), and every script and config file the README tells a
reader to run is there."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_PATH = re.compile(r"python3? ([\w./-]+\.py)|python3? -m (tools(?:\.[a-z_]+)+)|(config/[\w./-]+\.py)")


def prose(text):
    """The text without code, where a bracket or parenthesis is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(page):
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def anchors(page):
    """The #anchors GitHub gives the page's headings: lower-cased, punctuation dropped, spaces to hyphens, a repeated
    heading numbered."""
    seen, result = {}, set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return result


def broken_links(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: are outside the repository
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading in {resolved.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


def test_every_script_and_config_the_readme_names_exists():
    found = COMMAND_PATH.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    named = {script or config or module.replace(".", "/") + ".py" for script, module, config in found}
    assert {"train.py", "sample.py", "tools/explain.py", "config/plain.py"} <= named
    assert sorted(path for path in named if not (ROOT / path).is_file()) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    assert [page.name for page in PAGES[1:] if page not in linked] == []


def test_a_broken_link_and_a_missing_heading_are_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n\n## A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-1) [gone](missing.md) ![gone](img.png) [no](other.md#nope) "
                    "`[in code](missing.md)` [web](https://example.com/x)\n```\n[in a block](missing.md)\n```\n")
    assert broken_links(page) == ["missing.md (no such file)", "img.png (no such file)",
                                  "other.md#nope (no such heading in other.md)"]
