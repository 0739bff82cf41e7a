"""
See what each technique did in a run: one self-contained HTML page (no script, no network: it opens from the
file system) and the same figures as PNG files, written beside a checkpoint of train.py.

    python -m tools.explain --out_dir=out        # reads out/ckpt.pt, writes out/explain.html and out/explain_*.png

The page opens with a summary: the run's loss on the validation split (read from score.json when train.py wrote
it for this checkpoint, else scored here the same way: consecutive block_size windows), the plain GPT's stored
result beside it where results/combined.json has one for the run's dataset, and one sentence per technique on
what it did in this run. A difference under VISIBLE nats per token (about 1% of perplexity; the stored plain
GPT's seeds alone spread its loss by about 0.005) is "no visible effect":
  - the depth ensemble: the mixture's validation loss against the final layer's alone, with the ceiling (the best
    late layer for each token, chosen in hindsight) beside them;
  - the planner: its plan gain, how much the validation loss rises when each sentence is conditioned on another
    sentence's plan; beside it how many of the K labels the planner's distribution spreads over (exp of its
    entropy: K is uniform; above NEAR_UNIFORM * K is called near uniform), and its label accuracy beside always
    naming the most frequent label;
  - the n-gram targets: on train batches, the model's CE against the n-gram target minus its CE against the
    observed token. A model that reads only the target's n-1 tokens of context scores both alike on average, so the
    gap is what the model takes from longer context, the part the n-gram term pulls back; it must also exceed twice
    its standard error over the batches.
Then one section per technique the checkpoint was trained with, each on a passage of validation text:
  - every model: each token shaded by its loss;
  - the depth ensemble: each token shaded by the router's weight on each non-final late layer (the final one gets
    the rest), the tokens a non-final layer gets right while the final one gets them wrong marked, and each late
    layer's validation loss as its difference from the final layer's, beside the mixture's and the ceiling's;
  - the planner: the passage's sentences, each whole, with their true label, the planner's top labels, and the loss
    of each sentence under its plan and under a uniform plan; labels are named by the train sentence nearest their
    centroid, and a legend gives three such sentences per label;
  - the n-gram targets: at a few train positions where the compact target differs from the exact distribution,
    both, and the model's prediction.
The passage is read in consecutive windows of block_size tokens, each on its own, as in training.
"""

import base64
import html
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.nn import functional as F

import lm
import train
from configurator import configure, is_setting
from data.dataset import load_meta, load_tokens
from data.files import write_atomically
from data.prepare import ensure_prepared
from data.vocabulary import get_codec
from lm import load_language_model, mean_stats, ngram
from training import checkpoint as ckpt, devices, run_report
from training.replanner import plan_data_of

# -----------------------------------------------------------------------------
out_dir = "out"  # reads out_dir/ckpt.pt; writes out_dir/explain.html and out_dir/explain_*.png
passage_tokens = 320  # length of the validation passage, rounded down to whole windows of block_size
ngram_positions = 4  # train positions whose n-gram targets are drawn
score_tokens = 250_000  # the summary's loss covers the validation split's first score_tokens (all of a shorter one)
eval_iters = 20  # train batches behind the n-gram gap of the summary
batch_size = 12  # windows per batch
seed = 1337  # picks the passage, the n-gram positions and the train batches
device = "auto"  # 'auto' picks cuda, then mps, then cpu
SETTINGS = {k: v for k, v in globals().items() if is_setting(k, v)}
# -----------------------------------------------------------------------------
VISIBLE = 0.01  # nats per token: a technique that moves a loss by less has no visible effect
NEAR_UNIFORM = 0.5  # a planner spread over more than this share of the labels is near uniform
ROW_TOKENS = 40  # tokens per row of the routing figure: few enough to write each one in its stripe
# The settings, besides the techniques', that make the stored plain GPT's result comparable with a run's.
MAIN_JOB_SETTINGS = ("init_from", "base", "n_layer", "n_head", "n_embd", "bias", "dropout", "block_size",
                     "batch_size", "gradient_accumulation_steps", "learning_rate", "max_iters", "lr_decay_iters",
                     "min_lr", "warmup_iters", "weight_decay", "label_smoothing")
WHITESPACE = str.maketrans({" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5"})  # ␣ ↵ ⇥
BLUE = (31, 119, 180)
RED = (214, 39, 40)


def main(argv):
    s = dict(SETTINGS)
    configure(s, argv, help_from=__file__)
    checkpoint = ckpt.load(Path(s["out_dir"]) / "ckpt.pt")
    config = checkpoint["config"]
    model = load_language_model(checkpoint, devices.pick_device(s["device"]))
    data_dir = ensure_prepared(config["dataset"], config.get("tokenizer", "char"))
    meta = load_meta(data_dir)
    plan_data = plan_data_of(config) if model.plan is not None else None
    targets = None
    if config["ngram_mode"] != "off":
        targets = ngram.load_targets(config["ngram_mode"], data_dir, load_tokens(data_dir, "train"),
                                     config["ngram_n"], config["ngram_r"], config["seed"], meta["eot_token"])
    reader = Reader(model, data_dir, plan_data, meta, targets)
    score = validation_score(reader, Path(s["out_dir"]), checkpoint["iter_num"], s)
    passage = reader.passage(s["passage_tokens"], s["seed"])
    sections, verdicts = technique_parts(reader, passage, score, config, s)
    summary = summary_html(config, score, verdicts, reader.block_size)
    subtitle = f"{config['dataset']}, iteration {checkpoint['iter_num']}"
    path = write_page(Path(s["out_dir"]), page_title(config), subtitle, summary,
                      [token_loss_section(reader, passage)] + sections)
    print(f"wrote {path} and its figures as {Path(s['out_dir']) / 'explain_*.png'}")
    return path


def technique_parts(reader, passage, score, config, s):
    """The section and the summary's sentence of each technique that is on."""
    model, sections, verdicts = reader.model, [], []
    n_layer = model.gpt.config.n_layer
    if model.mod is not None:
        sections.append(ensemble_section(reader, passage, score))
        verdicts.append(ensemble_verdict(score, model.mod.first, model.mod.k, n_layer))
    if model.plan is not None:
        sections.append(planner_section(reader, passage))
        verdicts.append(planner_verdict(score, plan_spread(reader), model.plan.k, model.plan.mode))
    if reader.ngram_targets is not None:
        sections.append(ngram_section(reader, config, s))
        verdicts.append(ngram_verdict(ngram_gap(reader, s), config))
    return sections, verdicts


class Reader:
    """Runs the model on windows of a split and returns per-position quantities, with the techniques' inputs."""

    def __init__(self, model, data_dir, plan_data, meta, ngram_targets=None):
        self.model, self.plan_data, self.data_dir, self.meta = model, plan_data, data_dir, meta
        self.ngram_targets = ngram_targets
        self.tokens = {split: load_tokens(data_dir, split) for split in ("train", "val")}
        self.block_size = model.gpt.config.block_size
        self.device = model.gpt.lm_head.weight.device
        self.decode = get_codec(meta)[1]

    def batch(self, split, starts):
        """Windows of block_size tokens at starts (list of ints): inputs x, targets y and the techniques' inputs,
        as train.py gathers them (the n-gram targets on train windows only)."""
        T = self.block_size
        data = self.tokens[split]
        x = torch.tensor(np.stack([data[i:i + T] for i in starts]).astype(np.int64))
        y = torch.tensor(np.stack([data[i + 1:i + 1 + T] for i in starts]).astype(np.int64))
        extra = {}
        if split == "train" and self.ngram_targets is not None:
            ids, probs = self.ngram_targets(np.array(starts)[:, None] + np.arange(T))
            extra.update(ngram_ids=torch.from_numpy(ids), ngram_probs=torch.from_numpy(probs))
        if self.plan_data is not None:
            extra.update(self.plan_data.batch(split, torch.tensor(starts), T, self.model.plan.context))
        return x.to(self.device), y.to(self.device), {k: v.to(self.device) for k, v in extra.items()}

    @torch.no_grad()
    def read(self, split, starts, plan_mode=None):
        """The batch at starts with the model's per-position loss, logits, routing weights and normalised late
        states (None without the ensemble). plan_mode='uniform' conditions on the uniform plan instead."""
        x, y, extra = self.batch(split, starts)
        self.model.eval()  # mean_stats leaves the model in train mode, where dropout is on
        logits, parts = self.model.logits(x, extra, plan_mode)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y)
        return dict(x=x, y=y, loss=loss, logits=logits, weights=parts["weights"], normed=parts["normed"], extra=extra)

    def passage(self, n_tokens, seed):
        """Consecutive windows of validation text from a seeded place, starting right after a line break."""
        T = self.block_size
        n_windows = max(1, n_tokens // T)
        data = self.tokens["val"]
        if len(data) <= n_windows * T + 1:
            n_windows = max(1, (len(data) - 2) // T)
        last_start = len(data) - n_windows * T - 1
        start = int(np.random.default_rng(seed).integers(0, last_start + 1))
        for i in range(max(1, start), min(start + 4 * T, last_start)):
            if self.decode(data[i - 1:i]).endswith("\n"):
                start = i
                break
        starts = [start + w * T for w in range(n_windows)]
        return dict(start=start, starts=starts, first=self.decode(data[start:start + 1]), **self.read("val", starts))

    def token_texts(self, ids):
        return [self.decode([int(t)]) for t in ids]


# --- the summary --------------------------------------------------------------------------------------------------
def validation_score(reader, out_dir, iter_num, s):
    """Every scalar the model reports, averaged over the consecutive block_size windows of the validation split's
    first score_tokens, as train.py scores it, with 'tokens' (how many) and 'source' (where it comes from):
    out_dir/score.json when train.py wrote it for this checkpoint's weights and these tokens, else scored now."""
    T = reader.block_size
    n_val = len(reader.tokens["val"])
    tokens, whole = (min(s["score_tokens"], n_val) - 1) // T * T, s["score_tokens"] >= n_val
    path = out_dir / "score.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if (saved.get("iter"), saved.get("weights"), saved.get("val_tokens")) == (iter_num, "ckpt.pt", tokens):
        stats = {k[len("val_"):]: v for k, v in saved.items() if k.startswith("val_") and k != "val_tokens"}
        stats["ce"] = stats.pop("loss")
        return dict(stats, tokens=tokens, whole=whole, n_val=n_val,
                    source="read from score.json, which train.py wrote for this checkpoint")
    starts = list(range(0, tokens, T))
    stats = mean_stats(reader.model, (reader.batch("val", starts[i:i + s["batch_size"]])
                                      for i in range(0, len(starts), s["batch_size"])))
    return dict(stats, tokens=tokens, whole=whole, n_val=n_val, source="scored now by tools/explain.py")


def summary_html(config, score, verdicts, block_size):
    """The summary: this run's validation loss, the stored plain GPT's beside it, and each technique's sentence."""
    where = "the whole validation split" if score["whole"] else \
        f"the first {score['tokens']:,} of the validation split's {score['n_val']:,} tokens"
    parts = [f"<p>This run's validation loss: <b>{score['ce']:.4f}</b> nats per token (perplexity "
             f"{math.exp(score['ce']):.2f}) over {where} ({score['tokens']:,} tokens in consecutive windows of "
             f"{block_size}), {score['source']}.</p>", f"<p>{html.escape(plain_comparison(config))}</p>"]
    if not verdicts:
        parts.append("<p>No technique is on in this run (ngram_mode 'off', mod_k below 2, plan_mode 'none'): it is "
                     "the plain GPT, and the page shows only its loss on each token of a passage.</p>")
    else:
        parts.append("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>")
        parts.append(f'<p class="how">A technique that moves a loss by less than {VISIBLE} nats per token (about 1% '
                     f"of perplexity) has no visible effect here. The ensemble and the planner are judged on these "
                     f"validation tokens, the n-gram targets on train batches, where the gap must also exceed twice "
                     f"its standard error over them; a planner whose distribution spreads over more than "
                     f"{NEAR_UNIFORM:.0%} of the labels is near uniform.</p>")
    return '<div id="summary">' + "".join(parts) + "</div>"


def plain_comparison(config):
    """One sentence on the plain GPT's stored result (results/combined.json, not this run), and on how this run's
    settings differ from those it was trained with."""
    main_job = train.DEFAULTS
    if (config["dataset"], config.get("tokenizer", "char")) != (main_job["dataset"], main_job["tokenizer"]):
        return (f"The stored results hold the plain GPT on {main_job['dataset']} only, not on {config['dataset']}: "
                f"to compare, train `python train.py config/plain.py` with this run's other settings.")
    sentence = f"Beside it, {run_report.plain_result()}."
    differ = [f"{k} {config.get(k)!r} (the main job's: {main_job[k]!r})" for k in MAIN_JOB_SETTINGS
              if config.get(k) != main_job[k]]
    if differ:
        sentence += f" This run differs from the main job in {', '.join(differ)}: the two are not like for like."
    return sentence


def page_title(config):
    on = [name for name, is_on in (("the n-gram targets", config["ngram_mode"] != "off"),
                                   ("the depth ensemble", config.get("mod_k", 0) > 1),
                                   ("the planner", config.get("plan_mode", "none") != "none")) if is_on]
    if not on:
        return "A plain GPT on a text: no technique is on in this run"
    return f"What {', '.join(on[:-1]) + ' and ' if len(on) > 1 else ''}{on[-1]} did in this run"


def ensemble_verdict(score, first, k, n_layer):
    """The depth ensemble's sentence: its mixture against the final layer alone, and the ceiling."""
    final, mixture, ceiling = score[f"layer{first + k - 1}_ce"], score["ce"], score["best_layer_ce"]
    gain = final - mixture
    routing = ", ".join(f"{score[f'route{first + j}']:.2f} on {lm.mod.layer_name(first + j, n_layer)}"
                        for j in range(k))
    if abs(gain) < VISIBLE:
        verdict = f"no visible effect: mixing the last {k} layers moves the validation loss by {signed(-gain)}"
    elif gain > 0:
        share = gain / (final - ceiling) if final > ceiling else 1.0
        verdict = (f"mixing the last {k} layers lowers the validation loss by {gain:.4f}, {share:.0%} of the way "
                   f"from the final layer alone to the ceiling")
    else:
        verdict = f"mixing the last {k} layers raises the validation loss by {-gain:.4f}: the router hurts"
    return (f"Depth ensemble: {verdict} (the mixture {mixture:.4f}, the final layer alone {final:.4f}, the ceiling, "
            f"a router that picked the best late layer for every token in hindsight, {ceiling:.4f}; routing weight "
            f"{routing}).")


def planner_verdict(score, spread, k, mode):
    """The planner's sentence: its plan gain, how spread its labels are, and its accuracy beside the majority's."""
    if "plan_gain" not in score:
        return (f"Planner ({mode}): every sentence gets the same plan in mode '{mode}', a control with the plan's "
                f"parameters but no plan, so there is no plan effect to measure.")
    gain = score["plan_gain"]
    if abs(gain) < VISIBLE:
        parts = [f"no visible effect: conditioned on another sentence's plan instead of its own, the validation loss "
                 f"moves by {signed(gain)}"]
    elif gain > 0:
        parts = [f"the model reads its plans: conditioned on another sentence's plan instead of its own, its "
                 f"validation loss rises by {gain:.4f}"]
    else:
        parts = [f"its plans mislead it: conditioned on another sentence's plan instead of its own, its validation "
                 f"loss falls by {-gain:.4f}"]
    if spread is not None:
        parts.append(f"the planner's distribution spreads over {spread:.1f} of the {k} labels (exp of its entropy; "
                     f"{k} is uniform){': near uniform' if spread > NEAR_UNIFORM * k else ''}")
    if "plan_acc" in score:
        acc, majority = score["plan_acc"], score["plan_majority_acc"]
        parts.append(f"it names the next sentence's label right {acc:.3f} of the time, beside {majority:.3f} for "
                     f"always naming the most frequent label{': no better' if acc <= majority else ''}")
    return f"Planner ({mode}): " + "; ".join(parts) + "."


def ngram_verdict(gap, config):
    """The n-gram targets' sentence: how much better the model predicts the observed token than the target."""
    context, alpha = config["ngram_n"] - 1, config["ngram_alpha"]
    numbers = (f"on train batches its cross-entropy is {gap['ngram_ce']:.4f} against the n-gram target and "
               f"{gap['ce']:.4f} against the observed token, a gap of {signed(gap['gap'])} ± {gap['se']:.4f}")
    if gap["gap"] >= max(VISIBLE, 2 * gap["se"]):
        verdict = (f"the model reads context beyond the target's {context} tokens, and the n-gram term (weight "
                   f"ngram_alpha = {alpha}) pulls it back towards {context}-token statistics: {numbers}")
    elif gap["gap"] <= -max(VISIBLE, 2 * gap["se"]):
        verdict = (f"the model scores the observed tokens worse than the n-gram target on average, which a model "
                   f"of the target's {context} tokens of context would not: {numbers}")
    else:
        verdict = (f"no visible effect: the model predicts no better than the target's {context} tokens of context "
                   f"allow, so the target asks of it what the observed token asks, with less noise ({numbers}); "
                   f"whether that made it learn faster takes a run with --ngram_mode=off")
    return f"N-gram targets ({config['ngram_mode']}, n = {config['ngram_n']}): {verdict}."


def ngram_gap(reader, s):
    """The model's CE against the n-gram target and against the observed token over eval_iters seeded train
    batches, and their gap's mean and standard error over the batches."""
    generator = torch.Generator().manual_seed(s["seed"])
    T, per_batch = reader.block_size, []
    for _ in range(s["eval_iters"]):
        starts = torch.randint(len(reader.tokens["train"]) - T - 1, (s["batch_size"],), generator=generator)
        per_batch.append(mean_stats(reader.model, [reader.batch("train", starts.tolist())], plan_gain=False))
    gaps = np.array([b["ngram_ce"] - b["ce"] for b in per_batch])
    se = gaps.std(ddof=1) / math.sqrt(len(gaps)) if len(gaps) > 1 else float("inf")
    return dict(ngram_ce=np.mean([b["ngram_ce"] for b in per_batch]), ce=np.mean([b["ce"] for b in per_batch]),
                gap=gaps.mean(), se=se)


def plan_spread(reader):
    """exp of the mean entropy of the planner's label distribution over the validation sentences: how many labels
    it spreads over (K: uniform, 1: certain); None without a planner."""
    if reader.model.plan.planner is None:
        return None
    probs = planner_probs(reader, torch.arange(len(reader.plan_data.labels["val"])))
    return math.exp(torch.special.entr(probs).sum(-1).mean().item())


@torch.no_grad()
def planner_probs(reader, ids):
    """The planner's distribution over the labels of validation sentences ids (n, K), from what it reads."""
    context, pos = reader.plan_data.context("val", ids, reader.model.plan.context)
    return F.softmax(reader.model.plan.planner(context.to(reader.device), pos.to(reader.device)).float(), -1).cpu()


# --- sections -----------------------------------------------------------------------------------------------------
def token_loss_section(reader, passage):
    texts = reader.token_texts(passage["y"].flatten())
    loss = passage["loss"].flatten().tolist()
    top = max(max(loss), 1e-9)
    spans = "".join(token_span(t, shade(RED, l / top), f"loss {l:.2f}") for t, l in zip(texts, loss))
    scale = colour_scale(RED, f"the token's loss as a share of the passage's highest, {top:.2f} nats")
    fig = Figure(figsize=(9, 2.5))
    ax = fig.add_subplot()
    ax.plot(loss, lw=0.8, color="tab:red")
    ax.set(xlabel="token of the passage", ylabel="loss (nats)", title="Per-token loss")
    return section("Per-token loss", "explain_loss.png", fig,
                   "Each token of the passage is shaded by the model's loss on it (darker is more surprising), "
                   "with the loss in its tooltip. The mean over the passage is "
                   f"{np.mean(loss):.3f} nats per token.", scale + passage_div(spans, passage))


def ensemble_section(reader, passage, score):
    mod, n_layer = reader.model.mod, reader.model.gpt.config.n_layer
    layers = list(range(mod.first, mod.first + mod.k))
    names = {j: lm.mod.layer_name(j, n_layer) for j in layers}
    weights = passage["weights"].flatten(0, 1).float().cpu()
    y = passage["y"].flatten()
    right = [(reader.model.gpt.lm_head(n).flatten(0, 1).argmax(-1) == y).cpu() for n in passage["normed"]]
    texts = reader.token_texts(y)
    rows = []
    for i, j in enumerate(layers[:-1]):  # the final layer's weight is the rest: with k = 2 one row says it all
        spans = "".join(token_span(t, shade(BLUE, w), f"{names[j]}: weight {w:.3f}", f' data-w="{w:.6f}"',
                                   "rescue" if r else "")
                        for t, w, r in zip(texts, weights[:, i].tolist(), (right[i] & ~right[-1]).tolist()))
        rows.append(f"<h3>Routing weight on {names[j]} (mean {weights[:, i].mean():.3f}; {names[layers[-1]]} gets "
                    f"the rest)</h3>" + colour_scale(BLUE, f"routing weight on {names[j]}")
                    + passage_div(spans, passage, f"layer{j}"))
    stats = dict(score)
    stats[f"layer{layers[-1]}_lens"] = stats[f"layer{layers[-1]}_ce"]  # the final layer's own norm is the final norm
    fig = ensemble_figure([passage["first"]] + texts, weights, stats, layers, names)
    table = layer_table(stats, layers, names)
    return section("Depth ensemble", "explain_ensemble.png", fig,
                   "The passage shaded by the weight the router gives each non-final late layer for predicting each "
                   "token (the final layer gets the rest): where the model trusts which depth. A boxed token is one "
                   "this layer predicts right (its top token) while the final layer gets it wrong: what the "
                   "ensemble can rescue. The table and the chart give each late layer's loss on the "
                   f"{score['tokens']:,} validation tokens of the summary, through its own trained norm and through "
                   "the final norm (the logit lens), beside the mixture's and the ceiling's (a router that picked "
                   "the best late layer for every token, in hindsight); the chart draws each as its difference from "
                   "the final layer alone, from zero, with its size written.", "".join(rows) + table)


def ensemble_figure(texts, weights, stats, layers, names):
    """The routing weight on each non-final late layer token by token (texts: the passage, its first token
    included, which has no weight: it is context only), over the loss per layer."""
    grid_rows = -(-len(texts) // ROW_TOKENS) + 1
    fig = Figure(figsize=(10, 0.3 * grid_rows * (len(layers) - 1) + 2.8), layout="constrained")
    axes = fig.subplots(len(layers), 1, height_ratios=[grid_rows] * (len(layers) - 1) + [9])
    for i, j in enumerate(layers[:-1]):
        image = routing_grid(axes[i], texts, np.append(np.nan, weights[:, i].numpy()), names[j])
    fig.colorbar(image, ax=axes[:-1], label="routing weight")
    layer_loss_bars(axes[-1], stats, layers, names)
    return fig


def layer_table(stats, layers, names):
    final = stats[f"layer{layers[-1]}_ce"]
    rows = [f"<tr><td>{names[j]}</td><td>{stats[f'layer{j}_ce']:.4f}</td><td>{stats[f'layer{j}_lens']:.4f}</td>"
            f"<td>{signed(stats[f'layer{j}_ce'] - final)}</td></tr>" for j in layers]
    rows += [f"<tr><td>{name}</td><td colspan=2>{stats[key]:.4f}</td><td>{signed(stats[key] - final)}</td></tr>"
             for name, key in (("the mixture (the model's prediction)", "ce"),
                               ("the ceiling (the best late layer per token)", "best_layer_ce"))]
    return ("<table><tr><th>validation loss</th><th>own norm</th><th>through the final norm (logit lens)</th>"
            "<th>own norm minus the final layer alone</th></tr>" + "".join(rows) + "</table>")


def routing_grid(ax, texts, weight, name):
    """The passage's tokens in rows of ROW_TOKENS, each cell shaded by its routing weight with its token in it (a
    token without a weight, NaN, unshaded and grey); returns the image, for its colour bar."""
    rows = -(-len(texts) // ROW_TOKENS)
    grid = np.full(rows * ROW_TOKENS, np.nan)
    grid[:len(weight)] = weight
    image = ax.imshow(grid.reshape(rows, ROW_TOKENS), cmap="Blues", vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    for i, (text, w) in enumerate(zip(texts, weight)):
        ax.text(i % ROW_TOKENS, i // ROW_TOKENS, visible(text), ha="center", va="center", fontsize=7,
                color="#999" if np.isnan(w) else "white" if w > 0.6 else "black")
    ax.set_xticks([])
    ax.set_yticks(range(rows), [f"token {r * ROW_TOKENS}" for r in range(rows)], fontsize=7)
    ax.set_title(f"Routing weight on {name}, token by token", fontsize=9)
    return image


def layer_loss_bars(ax, stats, layers, names):
    """Each late layer's validation loss, the mixture's and the ceiling's, as horizontal bars of their difference
    from the final layer alone: from zero, each with its size written."""
    final = stats[f"layer{layers[-1]}_ce"]
    entries = [(f"{names[j]}, own norm", stats[f"layer{j}_ce"], "tab:blue") for j in layers[:-1]]
    entries += [(f"{names[j]}, final norm (logit lens)", stats[f"layer{j}_lens"], "tab:cyan") for j in layers[:-1]]
    entries += [("the mixture", stats["ce"], "tab:green"), ("the ceiling", stats["best_layer_ce"], "tab:gray")]
    diffs = [value - final for _, value, _ in entries]
    at = np.arange(len(entries))
    ax.barh(at, diffs, color=[color for _, _, color in entries])
    for y, d in zip(at, diffs):
        ax.text(d, y, f" {signed(d)} ", ha="left" if d >= 0 else "right", va="center", fontsize=8)
    span = max(max(abs(d) for d in diffs), VISIBLE)
    ax.set_xlim(-1.4 * span if min(diffs) < 0 else -0.2 * span, 1.4 * span if max(diffs) > 0 else 0.2 * span)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(at, [label for label, _, _ in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"validation loss minus the final layer's alone ({final:.4f}), nats per token")
    ax.set_title(f"Loss per layer, as differences from {names[layers[-1]]} alone", fontsize=9)


def planner_section(reader, passage):
    plan, data = reader.model.plan, reader.plan_data
    uniform = reader.read("val", passage["starts"], plan_mode="uniform")["loss"].flatten().cpu()
    loss = passage["loss"].flatten().cpu()
    start, end = passage["start"], passage["start"] + len(loss) + 1  # the passage's tokens, its first one included
    sentence_of = data.token_sentence["val"][start:end]
    ids = sorted(set(sentence_of.tolist()))
    losses = sentence_losses(torch.from_numpy(sentence_of[1:].astype(np.int64)), ids, loss, uniform)
    labels = [int(data.labels["val"][sid]) for sid in ids]
    tops = [None] * len(ids)
    if plan.planner is not None:
        tops = [p.topk(3) for p in planner_probs(reader, torch.tensor(ids))]
    examples = nearest_train_sentences(reader, sorted(set(labels).union(
        *(t.indices.tolist() for t in tops if t is not None))))
    rows = []
    for n, (sid, label, top, pair) in enumerate(zip(ids, labels, tops, losses), 1):
        guesses = "-" if top is None else ", ".join(f"{label_name(k, examples)} ({p:.2f})"
                                                    for p, k in zip(top.values.tolist(), top.indices.tolist()))
        cells = "<td colspan=3>- (no token of it is predicted in the passage)</td>" if pair is None else \
            f"<td>{pair[0]:.3f}</td><td>{pair[1]:.3f}</td><td>{signed(pair[0] - pair[1], 3)}</td>"
        rows.append(f'<tr><td>{n}</td><td class="sentence">{sentence_html(reader, sid, start + 1, end)}</td>'
                    f"<td>{label_name(label, examples)}</td><td>{guesses}</td>{cells}</tr>")
    diffs = [(n, pair[0] - pair[1]) for n, pair in enumerate(losses, 1) if pair is not None]
    table = ("<table><tr><th>#</th><th>sentence</th><th>true label</th><th>planner's top labels</th><th>loss, its "
             "plan</th><th>loss, uniform plan</th><th>its plan minus uniform</th></tr>" + "".join(rows) + "</table>")
    return section("Planner", "explain_planner.png", plan_difference_figure(diffs, plan.mode),
                   "The passage split into the sentences the planner sees, each shown whole: the grey part of a "
                   "sentence is outside the passage's predicted tokens (before the passage, its first token, which "
                   "is context only, or after its end) and is not in its loss. For each: its true label (the "
                   "k-means cluster of its embedding), the planner's three most likely labels given the sentences "
                   "before it (the plan the model was conditioned on), and the model's mean loss on the sentence's "
                   "predicted tokens under that plan and under a uniform plan. A plan that helps lowers the loss. A "
                   "label is named by the train sentence nearest its centroid; the legend gives three of them.",
                   table + label_legend(examples))


def sentence_losses(predicted, ids, loss, uniform):
    """Per sentence ids, the mean loss of its predicted tokens (predicted: each one's sentence) under its plan and
    under a uniform plan; None for a sentence none of whose tokens is predicted."""
    return [(loss[mine].mean().item(), uniform[mine].mean().item()) if mine.any() else None
            for mine in (predicted == sid for sid in ids)]


def sentence_html(reader, sid, first, end):
    """Validation sentence sid whole, the part outside the predicted tokens [first, end) in grey."""
    a, b = (int(i) for i in reader.plan_data.sentences["val"]["sentence_span"][sid])
    cut = [a, min(max(a, first), b), max(min(b, end), a), b]
    parts = [html.escape(reader.decode(reader.tokens["val"][i:j])).replace("\n", "&#8629;")
             for i, j in zip(cut[:-1], cut[1:])]
    return f'<span class="outside">{parts[0]}</span>{parts[1]}<span class="outside">{parts[2]}</span>'


def nearest_train_sentences(reader, labels, per_label=3):
    """{label: the texts of the per_label train sentences nearest its centroid}."""
    data = reader.plan_data
    embeddings, spans = data.embeddings["train"], data.sentences["train"]["sentence_span"]
    examples = {}
    for label in labels:
        distance = ((embeddings - data.centroids[label]) ** 2).sum(1)
        nearest = distance.topk(min(per_label, len(distance)), largest=False).indices.tolist()
        examples[label] = [reader.decode(reader.tokens["train"][spans[i][0]:spans[i][1]]).strip() for i in nearest]
    return examples


def label_name(label, examples, words=5):
    """A label as its number and the first words of the train sentence nearest its centroid."""
    first = examples[label][0].split()
    return html.escape(f"{label} \u201c{' '.join(first[:words])}{'…' if len(first) > words else ''}\u201d")


def label_legend(examples):
    items = "".join(f"<li><b>{label}</b>: {' | '.join(html.escape(e) for e in texts)}</li>"
                    for label, texts in examples.items())
    return f"<h3>What the labels mean: the train sentences nearest each label's centroid</h3><ul>{items}</ul>"


def plan_difference_figure(diffs, mode):
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax = fig.add_subplot()
    numbers, values = zip(*diffs) if diffs else ((), ())
    ax.bar(numbers, values, color=["tab:green" if v < 0 else "tab:red" for v in values])
    for x, v in zip(numbers, values):
        ax.text(x, v, signed(v, 3), ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    span = max([abs(v) for v in values] + [VISIBLE])
    ax.set_ylim(-1.3 * span, 1.3 * span)
    ax.set(xlabel="sentence of the passage (# in the table)", ylabel="nats per token",
           title=f"Loss under its plan ({mode}) minus under a uniform plan: below zero, the plan helps")
    return fig


def ngram_section(reader, config, s):
    tokens, trained = reader.tokens["train"], reader.ngram_targets
    n, r = config["ngram_n"], config["ngram_r"]
    exact = trained if config["ngram_mode"] == "all" else ngram.load_targets(
        "all", reader.data_dir, tokens, n, r, config["seed"], reader.meta["eot_token"])
    compact = trained if config["ngram_mode"] == "compact" else None
    positions, kind = example_positions(exact, r, compact is not None, s["ngram_positions"], s["seed"])
    columns = [("stored compact target", compact)] if compact is not None else []
    columns += [("exact distribution", exact), ("model's prediction", None)]
    fig = Figure(figsize=(3.4 * len(columns), 2.3 * len(positions)), layout="constrained")
    axes = fig.subplots(len(positions), len(columns), squeeze=False)
    rows = []
    for position, ax_row in zip(positions, axes):
        context = visible("".join(reader.token_texts(tokens[position - n + 2:position + 1])))
        exact_ids, exact_probs = (a.reshape(-1) for a in exact(np.array([position])))
        for (name, targets), ax in zip(columns, ax_row):
            ngram_bars(ax, reader, name, targets, compact, position, r, len(exact_ids), context)
        rows.append(ngram_row(reader, position, context, exact_probs, r,
                              compact(np.array([position])) if compact is not None else None))
    tail_column = "<th>compact target's tail token</th>" if compact is not None else ""
    table = ('<table><tr><th>after</th><th>observed next</th><th>distinct next tokens</th>'
             f'<th>mass beyond the top {r}</th>' + tail_column + "</tr>" + "".join(rows) + "</table>")
    choice = {"differ": f"where the context has more than {r + 1} distinct next tokens, so the compact target "
                        "differs from the exact one",
              "several": "with at least 3 distinct next tokens",
              "any": "with a context (none here has 3 distinct next tokens or more)"}[kind]
    return section("N-gram targets", "explain_ngram.png", fig,
                   f"At {len(positions)} train positions {choice}, the target the model was trained towards besides "
                   f"the observed token: the corpus's distribution of the token after the same {n - 1}-token context "
                   "(whitespace shown as \u2423 space, \u21b5 newline, \u21e5 tab). The exact distribution is every "
                   f"next token in proportion to its count: the chart shows its top {r + 1} only, and its title how "
                   f"many there are. The compact target keeps the top {r} exactly and puts the remaining mass on one "
                   "tail token (the observed one, or one borrowed from the tail), so that it equals the exact one on "
                   "average. Beside them, the model's own prediction at the same position (its top tokens).", table)


def example_positions(exact, r, compact, count, seed):
    """count seeded train positions, sorted, whose context has more than r + 1 distinct next tokens, where the
    compact target (top r, then one tail token) differs from the exact distribution ('differ'), else at least 3
    ('several'), else any context ('any'); and which of those they are."""
    support = np.append(0, np.diff(exact.ptr))[exact.row_context]  # row_context counts from 1; 0: no context
    for kind, candidates in (("differ", np.flatnonzero(support > r + 1) if compact else []),
                             ("several", np.flatnonzero(support >= 3)), ("any", np.flatnonzero(support >= 1))):
        if len(candidates):
            break
    picked = np.random.default_rng(seed).choice(candidates, min(count, len(candidates)), replace=False)
    return sorted(picked.tolist()), kind


def ngram_bars(ax, reader, name, targets, compact, position, r, support, context):
    """One chart: a target's (or the model's) top entries at a train position, the compact target's tail orange."""
    if targets is None:
        ids, probs = model_prediction(reader, position, r + 1)
        title = f"model's prediction: top {r + 1}"
    else:  # most frequent first; the compact target's last entry is its tail token
        ids, probs = (a.reshape(-1)[:r + 1] for a in targets(np.array([position])))
        title = f"{name}: top {r} + tail" if targets is compact else f"{name}: top {min(r + 1, support)} of {support}"
    labels = [visible(t) for t in reader.token_texts(ids)]
    colors = ["tab:green" if targets is None else "tab:blue"] * len(ids)
    if targets is compact:
        labels[-1], colors[-1] = labels[-1] + " (tail)", "tab:orange"
    shown = np.flatnonzero(probs > 0)
    ax.bar(range(len(shown)), probs[shown], color=[colors[i] for i in shown])
    ax.set_xticks(range(len(shown)), [labels[i] for i in shown], fontsize=7)
    ax.set_title(f"{title}\nafter \u201c{context}\u201d", fontsize=8)
    ax.set_ylim(0, 1)


def ngram_row(reader, position, context, exact_probs, r, compact_target):
    observed = visible(reader.decode(reader.tokens["train"][position + 1:position + 2]))
    cells = [context, observed, str(int((exact_probs > 0).sum())), f"{1 - exact_probs[:r].sum():.3f}"]
    if compact_target is not None:
        ids, probs = (a.reshape(-1) for a in compact_target)
        cells.append(f"{visible(reader.decode(ids[-1:]))} gets {probs[-1]:.3f}")
    return f'<tr data-position="{position}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def model_prediction(reader, row, top):
    """The model's top next-token probabilities at train position row (predicting tokens[row + 1])."""
    start = max(0, row - reader.block_size + 1)
    logits = reader.read("train", [start])["logits"][0, row - start].float()
    probs = F.softmax(logits, -1).topk(top)
    return probs.indices.cpu().numpy(), probs.values.cpu().numpy()


# --- the page -----------------------------------------------------------------------------------------------------
def visible(text):
    """Whitespace as symbols a reader sees: \u2423 space, \u21b5 newline, \u21e5 tab."""
    return text.translate(WHITESPACE)


def signed(x, digits=4):
    """x with its sign, never '-0.000'."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def shade(rgb, alpha):
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def colour_scale(rgb, what):
    """A colour bar for a passage's shading: from 0 (unshaded) to 1 (full colour)."""
    return (f'<div class="scale">0 <span class="bar" style="background:linear-gradient(to right, {shade(rgb, 0)}, '
            f'{shade(rgb, 1)})"></span> 1: {html.escape(what)}</div>')


def token_span(text, color, tooltip, attributes="", css_class=""):
    shown = html.escape(text).replace("\n", "&#8629;<br>")
    return (f'<span class="t {css_class}" style="background:{color}" title="{html.escape(tooltip)}"'
            f"{attributes}>{shown}</span>")


def passage_div(spans, passage, name="passage"):
    """The passage's first token (context only, never predicted) unshaded, then the shaded predicted tokens."""
    first = html.escape(passage["first"]).replace("\n", "&#8629;<br>")
    return f'<div class="passage" data-name="{name}" data-start="{passage["start"]}">{first}{spans}</div>'


def section(title, png_name, fig, how_to_read, body):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return dict(title=title, png_name=png_name, png=buffer.getvalue(), how_to_read=how_to_read, body=body)


def write_page(out_dir, title, subtitle, summary, sections):
    parts = []
    for sec in sections:
        write_atomically(out_dir / sec["png_name"], lambda f: f.write(sec["png"]))
        image = base64.b64encode(sec["png"]).decode("ascii")
        parts.append(f'<section id="{sec["png_name"][len("explain_"):-len(".png")]}"><h2>{sec["title"]}</h2>'
                     f'<p class="how">{sec["how_to_read"]}</p>{sec["body"]}'
                     f'<img alt="{sec["title"]}" src="data:image/png;base64,{image}"></section>')
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}: {html.escape(subtitle)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
#summary {{ background: #f4f6f8; border: 1px solid #ccd; padding: 0.2em 1em; }}
.passage {{ font-family: monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ddd;
  padding: 0.5em; margin-bottom: 1em; }}
.t.rescue {{ outline: 2px solid #d62728; }}
.scale {{ font-size: 0.85em; margin: 0.3em 0; }}
.scale .bar {{ display: inline-block; width: 12em; height: 0.9em; border: 1px solid #999; vertical-align: middle; }}
.outside {{ color: #999; }}
.how {{ color: #444; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }}
td.sentence {{ font-family: monospace; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
{summary}
{"".join(parts)}
</body></html>
"""
    path = out_dir / "explain.html"
    write_atomically(path, lambda f: f.write(page.encode("utf-8")))
    return path


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
