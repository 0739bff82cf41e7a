"""docs/lab.ipynb, the lab a student opens in Jupyter or Colab: run as Jupyter runs it, from docs/, at a tiny size
(LAB_SETTINGS) on a corpus made here, it trains both runs and shows their numbers, loss.png panels and explain.html
inline. About 30 s on 2 cores: a kernel, two tiny training runs and tools.explain, each its own process."""

import json
import random

import nbclient
import nbformat
import pytest

from data.write import write_dataset
from tools.exercises import ROOT

NOTEBOOK = ROOT / "docs" / "lab.ipynb"
TINY = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0",
        "--compile=False"]


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """A corpus of made-up words, whose 4-character contexts have several next characters (explain.html draws
    some)."""
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("bdklmnrst") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
                  for _ in range(60)]
    text = " ".join(rng.choice(vocabulary) for _ in range(2000))
    path = tmp_path_factory.mktemp("words")
    write_dataset(path, {"train": [text[:9000]], "val": [text[9000:]]}, "char", "words", "made by the test")
    return str(path)


def outputs(cell, kind):
    """The cell's outputs of one MIME type (text/plain, image/png, text/html), or its printed text for 'stream'."""
    if kind == "stream":
        return "".join(out["text"] for out in cell.outputs if out["output_type"] == "stream")
    return [out["data"][kind] for out in cell.outputs if kind in out.get("data", {})]


def test_the_lab_runs_from_docs_and_shows_the_two_runs_their_panels_and_the_explain_page(words, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("LAB_SETTINGS", " ".join([*TINY, f"--dataset={words}"]))
    monkeypatch.setenv("LAB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    scores = {run: json.loads((tmp_path / f"out-{run}" / "score.json").read_text())["val_loss"]
              for run in ("plain", "ngram")}
    printed = [outputs(cell, "stream") for cell in code]
    assert f"validation loss: plain {scores['plain']:.4f}, n-gram targets {scores['ngram']:.4f}" in "".join(printed)
    assert sum("final: val loss" in text for text in printed) == 2  # each run's own output, shown as it came
    panels = [cell for cell in code if "plot_log(" in cell.source and outputs(cell, "image/png")]
    assert len(panels) == 2  # the figure plot_log returns is drawn inline, for each run
    page = (tmp_path / "out-ngram" / "explain.html").read_text(encoding="utf-8")
    shown = [html for cell in code for html in outputs(cell, "text/html")]
    assert len(shown) == 1 and "<iframe srcdoc=" in shown[0] and "n-gram" in page
    assert len(shown[0]) > len(page)  # the whole page, escaped, inside the frame


def test_the_notebook_is_committed_without_outputs():
    # A student's first run should not open on someone else's numbers, and outputs bloat every diff.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
