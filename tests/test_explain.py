"""explain.py on tiny models trained here: each section appears exactly when its technique is on, the page needs
nothing from the network, and the routing weights it shades with are the ones the model computes."""

import re

import numpy as np
import pytest
import torch

import explain
import train
from data.dataset import load_tokens
from data.write import write_dataset
from lm import load_checkpoint, load_language_model
from data.sentences import PlanData
from test_combined import ALL, TECHNIQUES, TINY, documents

SECTIONS = {"ngram": "ngram", "mod": "ensemble", "planner": "planner"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("sentences")
    write_dataset(path, {"train": documents(80, 0), "val": documents(10, 1)}, "char", "sentences", "the test")
    return str(path)


def trained(corpus, tmp_path, flags):
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=4",
                *flags])
    return tmp_path


def page_of(out_dir):
    explain.main([f"--out_dir={out_dir}", "--passage_tokens=48", "--eval_iters=2", "--ngram_positions=2",
                  "--device=cpu"])
    return (out_dir / "explain.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("technique", [None, *TECHNIQUES])
def test_each_section_appears_exactly_when_its_technique_is_on(corpus, tmp_path, technique):
    page = page_of(trained(corpus, tmp_path, TECHNIQUES[technique] if technique else []))
    sections = re.findall(r'<section id="(\w+)">', page)
    assert sections == ["loss"] + ([SECTIONS[technique]] if technique else [])
    for name in sections:
        assert (tmp_path / f"explain_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)\s*=\s*"[^"]*http', page)  # opens from the file system, offline


def test_the_shaded_routing_weights_are_the_models(corpus, tmp_path):
    out_dir = trained(corpus, tmp_path, ALL)
    page = page_of(out_dir)
    checkpoint = load_checkpoint(out_dir / "ckpt.pt")
    model = load_language_model(checkpoint, "cpu")
    T, mod = model.gpt.config.block_size, model.mod
    start = int(re.search(r'data-name="layer\d+" data-start="(\d+)"', page).group(1))
    starts = [start + w * T for w in range(48 // T)]
    val = load_tokens(corpus, "val")
    x = torch.tensor(np.stack([val[i:i + T] for i in starts]).astype(np.int64))
    config = checkpoint["config"]
    plan_data = PlanData(corpus, config["plan_k"], config["plan_embedder"], config["plan_seed"])
    with torch.no_grad():
        attn_add = model.plan(plan_data.batch("val", torch.tensor(starts), T, model.plan.context))[0]
        weights = mod(model.gpt.body(x, attn_add), model.gpt)[1].flatten(0, 1)
    for j in range(mod.k):
        layer_div = re.search(rf'data-name="layer{mod.first + j}"[^>]*>(.*?)</div>', page, re.S).group(1)
        shaded = [float(w) for w in re.findall(r'data-w="([0-9.]+)"', layer_div)]
        assert np.allclose(shaded, weights[:, j].numpy(), atol=1e-6)
