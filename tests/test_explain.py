"""tools/explain.py on tiny models trained here: each section appears exactly when its technique is on and the summary
says in a sentence what each did, the page needs nothing from the network, the loss it reports is the whole
validation split's, the routing weights it shades with are the ones the model computes, every sentence of the
planner is shown whole, and the n-gram examples are where the compact target differs from the exact one."""

import html
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import ngram
import train
from data.dataset import load_tokens
from data.sentences import PlanData
from data.write import write_dataset
from lm import load_language_model
from test_combined import ALL, TECHNIQUES, TINY, documents
from tools import explain
from training import checkpoint as ckpt, run_report

SECTIONS = {"ngram": "ngram", "mod": "ensemble", "planner": "planner"}
NAMES = {"ngram": "the n-gram targets", "mod": "the depth ensemble", "planner": "the planner"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("sentences")
    write_dataset(path, {"train": documents(80, 0), "val": documents(10, 1)}, "char", "sentences", "the test")
    return str(path)


def trained(corpus, out_dir, flags):
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", "--max_iters=4", "--eval_interval=4",
                *flags])
    return out_dir


def page_of(out_dir):
    explain.main([f"--out_dir={out_dir}", "--passage_tokens=48", "--eval_iters=2", "--ngram_positions=2",
                  "--device=cpu"])
    return (out_dir / "explain.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def all_three(corpus, tmp_path_factory):
    out_dir = trained(corpus, tmp_path_factory.mktemp("all_three"), ALL)
    return out_dir, page_of(out_dir)


def text_of(fragment):
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


@pytest.mark.parametrize("technique", [None, *TECHNIQUES])
def test_each_section_and_sentence_appears_exactly_when_its_technique_is_on(corpus, tmp_path, technique):
    page = page_of(trained(corpus, tmp_path, TECHNIQUES[technique] if technique else []))
    sections = re.findall(r'<section id="(\w+)">', page)
    assert sections == ["loss"] + ([SECTIONS[technique]] if technique else [])
    for name in sections:
        assert (tmp_path / f"explain_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)\s*=\s*"[^"]*http', page)  # opens from the file system, offline
    title = text_of(re.search(r"<h1>(.*?)</h1>", page).group(1))
    summary = text_of(re.search(r'<div id="summary">(.*?)</div>', page, re.S).group(1))
    verdicts = re.findall(r"<li>(.*?)</li>", re.search(r'<div id="summary">(.*?)</div>', page, re.S).group(1))
    if technique is None:
        assert title == "A plain GPT on a text: no technique is on in this run"
        assert "No technique is on in this run" in summary and verdicts == []
    else:
        assert title == f"What {NAMES[technique]} did in this run"
        assert len(verdicts) == 1 and "What the techniques do" not in page
    assert "The stored results hold the plain GPT on shakespeare_char only" in summary  # another dataset here


def test_the_summary_loss_is_the_whole_validation_splits_read_from_score_json_when_it_is_the_checkpoints(
        corpus, tmp_path):
    out_dir = trained(corpus, tmp_path, ["--score_val_tokens=1000000000"])  # train.py scores the whole split
    score = json.loads((out_dir / "score.json").read_text())
    summary = lambda: text_of(re.search(r'<div id="summary">(.*?)</div>', page_of(out_dir), re.S).group(1))
    scored = summary()
    assert f"validation loss: {score['val_loss']:.4f} nats per token" in scored  # scored here as train.py scores
    assert f"over the whole validation split ({score['val_tokens']:,} tokens" in scored
    assert "read from score.json" in scored
    (out_dir / "score.json").write_text(json.dumps({**score, "val_loss": 9.8765}))
    assert "validation loss: 9.8765 nats per token" in summary()  # the checkpoint's own score is read, not redone
    (out_dir / "score.json").write_text(json.dumps({**score, "val_loss": 9.8765, "iter": score["iter"] - 1}))
    again = summary()
    assert f"validation loss: {score['val_loss']:.4f}" in again and "scored now by tools/explain.py" in again


def test_the_stored_plain_gpt_is_named_as_such_with_how_this_run_differs_from_it():
    plain = json.loads(open(run_report.PLAIN_RESULTS).read())["plain"]
    main_job = explain.plain_comparison(dict(train.DEFAULTS))
    assert f"perplexity {plain['val_ppl']:.2f}" in main_job and "not this run" in main_job
    assert "not like for like" not in main_job
    shorter = explain.plain_comparison({**train.DEFAULTS, "max_iters": 600})
    assert "differs from the main job in max_iters 600 (the main job's: 3000)" in shorter
    other = explain.plain_comparison({**train.DEFAULTS, "dataset": "wiki"})
    assert "perplexity" not in other and "config/plain.py" in other


ENSEMBLE = {"ce": 2.0, "layer3_ce": 2.05, "best_layer_ce": 1.95, "route2": 0.4, "route3": 0.6}


@pytest.mark.parametrize("function, args, words", [
    ("ensemble_verdict", (ENSEMBLE, 2, 2, 4), ["lowers the validation loss by 0.0500, 50% of the way",
                                               "0.40 on layer 3 of 4, 0.60 on layer 4 of 4 (final)"]),
    ("ensemble_verdict", ({**ENSEMBLE, "layer3_ce": 2.004}, 2, 2, 4), ["no visible effect", "by -0.0040"]),
    ("ensemble_verdict", ({**ENSEMBLE, "layer3_ce": 1.98}, 2, 2, 4), ["raises the validation loss by 0.0200"]),
    ("planner_verdict", ({"plan_gain": 0.05, "plan_acc": 0.3, "plan_majority_acc": 0.2}, 10.0, 64, "soft"),
     ["the model reads its plans", "rises by 0.0500", "spreads over 10.0 of the 64 labels (", "beside 0.200"]),
    ("planner_verdict", ({"plan_gain": -0.003, "plan_acc": 0.2, "plan_majority_acc": 0.2}, 40.0, 64, "soft"),
     ["no visible effect", "moves by -0.0030", "labels (exp of its entropy; 64 is uniform): near uniform",
      "most frequent label: no better"]),
    ("ngram_verdict", ({"ngram_ce": 2.3, "ce": 2.2, "gap": 0.1, "se": 0.01}, train.DEFAULTS),
     ["reads context beyond the target's 4 tokens", "a gap of +0.1000 ± 0.0100"]),
    ("ngram_verdict", ({"ngram_ce": 2.215, "ce": 2.2, "gap": 0.015, "se": 0.01}, train.DEFAULTS),
     ["no visible effect"]),  # above VISIBLE, but within twice its standard error
])
def test_each_technique_says_what_it_did_and_when_that_is_nothing_visible(function, args, words):
    verdict = getattr(explain, function)(*args)
    for w in words:
        assert w in verdict


def test_the_shaded_routing_weights_are_the_models_one_row_for_two_layers(all_three, corpus):
    out_dir, page = all_three
    checkpoint = ckpt.load(out_dir / "ckpt.pt")
    model = load_language_model(checkpoint, "cpu")
    T, mod = model.gpt.config.block_size, model.mod
    ensemble = re.search(r'<section id="ensemble">(.*?)</section>', page, re.S).group(1)
    start = int(re.search(r'data-name="layer\d+" data-start="(\d+)"', ensemble).group(1))
    starts = [start + w * T for w in range(48 // T)]
    val = load_tokens(corpus, "val")
    x = torch.tensor(np.stack([val[i:i + T] for i in starts]).astype(np.int64))
    config = checkpoint["config"]
    plan_data = PlanData(corpus, config["plan_k"], config["plan_embedder"], config["plan_seed"])
    with torch.no_grad():
        attn_add = model.plan(plan_data.batch("val", torch.tensor(starts), T, model.plan.context))[0]
        weights = mod(model.gpt.body(x, attn_add), model.gpt)[1].flatten(0, 1)
    rows = re.findall(r'data-name="layer(\d+)"[^>]*>(.*?)</div>', ensemble, re.S)
    assert [int(j) for j, _ in rows] == [mod.first]  # k = 2: the final layer's weight is the rest
    shaded = [float(w) for w in re.findall(r'data-w="([0-9.]+)"', rows[0][1])]
    assert np.allclose(shaded, weights[:, 0].numpy(), atol=1e-6)
    assert "Routing weight on layer 2 of 3 (mean" in ensemble and "layer 3 of 3 (final) gets the rest" in ensemble
    assert '<div class="scale">0 <span class="bar"' in ensemble  # a colour scale says what the shade means


def test_the_loss_per_layer_bars_start_at_zero_with_their_size_written():
    ax = Figure().add_subplot()
    stats = {**ENSEMBLE, "layer2_ce": 2.056, "layer2_lens": 2.3}
    explain.layer_loss_bars(ax, stats, [2, 3], {2: "layer 3 of 4", 3: "layer 4 of 4 (final)"})
    expected = [0.006, 0.25, -0.05, -0.1]  # own norm, logit lens, mixture, ceiling: each minus the final layer
    assert [p.get_x() for p in ax.patches] == [0.0] * 4
    assert np.allclose([p.get_width() for p in ax.patches], expected)
    assert [t.get_text().strip() for t in ax.texts] == ["+0.0060", "+0.2500", "-0.0500", "-0.1000"]
    assert ax.get_xlim()[0] < 0 < ax.get_xlim()[1]


def test_every_planner_sentence_is_shown_whole_and_labels_by_their_nearest_train_sentence(all_three, corpus):
    out_dir, page = all_three
    planner = re.search(r'<section id="planner">(.*?)</section>', page, re.S).group(1)
    start = int(re.search(r'data-start="(\d+)"', page).group(1))
    config = ckpt.load(out_dir / "ckpt.pt")["config"]
    data = PlanData(corpus, config["plan_k"], config["plan_embedder"], config["plan_seed"])
    val, train_tokens = load_tokens(corpus, "val"), load_tokens(corpus, "train")
    decode = explain.get_codec(explain.load_meta(corpus))[1]
    ids = sorted(set(data.token_sentence["val"][start:start + 48 + 1].tolist()))  # the first token's included
    spans = data.sentences["val"]["sentence_span"]
    shown = [text_of(cell).replace("\u21b5", "\n") for cell in re.findall(r'<td class="sentence">(.*?)</td>', planner)]
    assert shown == [decode(val[spans[i][0]:spans[i][1]]) for i in ids]
    rows = re.findall(r'<td class="sentence">.*?</td><td>(.*?)</td>', planner)
    for sid, cell in zip(ids, rows):
        label = int(data.labels["val"][sid])
        nearest = ((data.embeddings["train"] - data.centroids[label]) ** 2).sum(1).argmin()
        a, b = data.sentences["train"]["sentence_span"][nearest]
        assert text_of(cell).startswith(f"{label} \u201c{decode(train_tokens[a:b]).split()[0]}")


def test_the_ngram_examples_are_where_the_compact_target_differs_with_whitespace_shown(all_three, corpus):
    out_dir, page = all_three
    section = re.search(r'<section id="ngram">(.*?)</section>', page, re.S).group(1)
    config = ckpt.load(out_dir / "ckpt.pt")["config"]
    tokens = load_tokens(corpus, "train")
    n, r = config["ngram_n"], config["ngram_r"]
    targets = {mode: ngram.load_targets(mode, corpus, tokens, n, r, config["seed"], None)
               for mode in ("all", "compact")}
    rows = re.findall(r'<tr data-position="(\d+)"><td>(.*?)</td>', section)
    assert len(rows) == 2
    for position, context in rows:
        at = np.array([int(position)])
        exact_probs, compact_probs = targets["all"](at)[1].reshape(-1), targets["compact"](at)[1].reshape(-1)
        assert (exact_probs > 0).sum() > r + 1 and not np.allclose(exact_probs[:r + 1], compact_probs)
        assert context == explain.visible(explain.get_codec(explain.load_meta(corpus))[1](
            tokens[int(position) - n + 2:int(position) + 1])) and " " not in context
    assert explain.visible("a b\nc\td") == "a\u2423b\u21b5c\u21e5d"
    assert f"the chart shows its top {r + 1} only" in section


def test_the_ngram_examples_fall_back_to_any_context_on_a_corpus_without_varied_ones():
    # two contexts, each followed by 2 distinct tokens; positions 0 and 3 have none
    exact = SimpleNamespace(ptr=np.array([0, 2, 4]), row_context=np.array([0, 1, 2, 0, 1, 2]))
    assert explain.example_positions(exact, r=8, compact=True, count=4, seed=0) == ([1, 2, 4, 5], "any")
    exact.ptr = np.array([0, 2, 12])  # the second context now has 10 next tokens: more than r + 1 = 9
    assert explain.example_positions(exact, r=8, compact=True, count=3, seed=0) == ([2, 5], "differ")
