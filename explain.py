"""
See what each technique does to a text: one self-contained HTML page (no script, no network: it opens from the
file system) and the same figures as PNG files, written beside a checkpoint of train.py.

    python explain.py --out_dir=out        # reads out/ckpt.pt, writes out/explain.html and out/explain_*.png

The page has one section per technique the checkpoint was trained with, each on a passage of validation text:
  - every model: each token shaded by its loss;
  - the depth ensemble: each token shaded by the router's weight on each late layer, the tokens a non-final layer
    gets right while the final one gets them wrong marked, and each late layer's validation loss;
  - the planner: the passage's sentences with their true label, the planner's top labels, and the loss of each
    sentence under its plan and under a uniform plan; train sentences nearest each label's centroid as a legend;
  - the n-gram targets: at a few train positions, the stored compact target, the exact distribution of the same
    context and the model's prediction.
The passage is read in consecutive windows of block_size tokens, each on its own, as in training.
"""

import base64
import html
import io
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.nn import functional as F

import ngram
from configurator import configure
from data.dataset import load_meta, load_tokens
from data.prepare import ensure_prepared
from data.vocabulary import get_codec
from data.sentences import PlanData
from lm import load_checkpoint, load_language_model, pick_device

# -----------------------------------------------------------------------------
SETTINGS = dict(
    out_dir="out",  # reads out_dir/ckpt.pt; writes out_dir/explain.html and out_dir/explain_*.png
    passage_tokens=320,  # length of the validation passage, rounded down to whole windows of block_size
    ngram_positions=4,  # train positions whose n-gram targets are drawn
    eval_iters=20,  # validation batches behind the per-layer losses
    batch_size=12,
    seed=1337,  # picks the passage and the n-gram positions
    device="auto",
)
# -----------------------------------------------------------------------------


def main(argv):
    s = dict(SETTINGS)
    configure(s, argv)
    checkpoint = load_checkpoint(Path(s["out_dir"]) / "ckpt.pt")
    config = checkpoint["config"]
    model = load_language_model(checkpoint, pick_device(s["device"]))
    data_dir = ensure_prepared(config["dataset"], config.get("tokenizer", "char"))
    meta = load_meta(data_dir)
    plan_data = PlanData(data_dir, config["plan_k"], config["plan_embedder"], config["plan_seed"]) \
        if model.plan is not None else None
    reader = Reader(model, data_dir, plan_data, meta)
    passage = reader.passage(s["passage_tokens"], s["seed"])
    sections = [token_loss_section(reader, passage)]
    if model.mod is not None:
        sections.append(ensemble_section(reader, passage, s))
    if model.plan is not None:
        sections.append(planner_section(reader, passage))
    if config["ngram_mode"] != "off":
        sections.append(ngram_section(reader, config, s))
    path = write_page(Path(s["out_dir"]), sections, f"{config['dataset']}, iteration {checkpoint['iter_num']}")
    print(f"wrote {path} and its figures as {Path(s['out_dir']) / 'explain_*.png'}")
    return path


class Reader:
    """Runs the model on windows of a split and returns per-position quantities, with the techniques' inputs."""

    def __init__(self, model, data_dir, plan_data, meta):
        self.model, self.plan_data, self.data_dir, self.meta = model, plan_data, data_dir, meta
        self.tokens = {split: load_tokens(data_dir, split) for split in ("train", "val")}
        self.block_size = model.gpt.config.block_size
        self.device = model.gpt.lm_head.weight.device
        self.decode = get_codec(meta)[1]

    @torch.no_grad()
    def read(self, split, starts, plan_mode=None):
        """Windows of block_size tokens at starts (list of ints): inputs x, targets y, per-position loss, logits,
        routing weights and normalised late states (None without the ensemble) and the planner's inputs.
        plan_mode='uniform' replaces the plan by the uniform one."""
        T = self.block_size
        data = self.tokens[split]
        x = torch.tensor(np.stack([data[i:i + T] for i in starts]).astype(np.int64), device=self.device)
        y = torch.tensor(np.stack([data[i + 1:i + 1 + T] for i in starts]).astype(np.int64), device=self.device)
        extra, attn_add = {}, None
        if self.plan_data is not None:
            extra = {k: v.to(self.device) for k, v in self.plan_data.batch(
                split, torch.tensor(starts), T, self.model.plan.context).items()}
            mode = self.model.plan.mode
            self.model.plan.mode = plan_mode or mode
            try:
                attn_add = self.model.plan(extra)[0]
            finally:
                self.model.plan.mode = mode
        hidden = self.model.gpt.body(x, attn_add)
        weights = normed = None
        if self.model.mod is not None:
            logits, weights, normed = self.model.mod(hidden, self.model.gpt)
        else:
            logits = self.model.gpt.head(hidden[-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y)
        return dict(x=x, y=y, loss=loss, logits=logits, weights=weights, normed=normed, extra=extra)

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


# --- sections -----------------------------------------------------------------------------------------------------
def token_loss_section(reader, passage):
    texts = reader.token_texts(passage["y"].flatten())
    loss = passage["loss"].flatten().tolist()
    top = max(max(loss), 1e-9)
    spans = "".join(token_span(t, f"rgba(214,39,40,{l / top:.3f})", f"loss {l:.2f}") for t, l in zip(texts, loss))
    fig = Figure(figsize=(9, 2.5))
    ax = fig.add_subplot()
    ax.plot(loss, lw=0.8, color="tab:red")
    ax.set(xlabel="token of the passage", ylabel="loss (nats)", title="Per-token loss")
    return section("Per-token loss", "explain_loss.png", fig,
                   "Each token of the passage is shaded by the model's loss on it (darker is more surprising), "
                   "with the loss in its tooltip. The mean over the passage is "
                   f"{np.mean(loss):.3f} nats per token.", passage_div(spans, passage))


def ensemble_section(reader, passage, s):
    mod, first = reader.model.mod, reader.model.mod.first
    weights = passage["weights"].flatten(0, 1).float()
    y = passage["y"].flatten()
    lm_head = reader.model.gpt.lm_head
    right = [(lm_head(n).flatten(0, 1).argmax(-1) == y) for n in passage["normed"]]
    texts = reader.token_texts(y)
    rows = []
    for j in range(mod.k):
        rescued = right[j] & ~right[-1] if j < mod.k - 1 else torch.zeros_like(y, dtype=torch.bool)
        spans = "".join(token_span(t, f"rgba(31,119,180,{w:.3f})", f"layer {first + j}: weight {w:.3f}",
                                   f' data-w="{w:.6f}"', "rescue" if r else "")
                        for t, w, r in zip(texts, weights[:, j].tolist(), rescued.tolist()))
        rows.append(f"<h3>layer {first + j}{' (final)' if j == mod.k - 1 else ''}: mean weight "
                    f"{weights[:, j].mean():.3f}</h3>" + passage_div(spans, passage, f"layer{first + j}"))
    stats = validation_stats(reader, s)
    layers = list(range(first, first + mod.k))
    stats[f"layer{layers[-1]}_lens"] = stats[f"layer{layers[-1]}_ce"]  # the final layer's own norm is the final norm
    fig = Figure(figsize=(9, 3.2))
    heat, bars = fig.subplots(1, 2, width_ratios=[3, 1])
    heat.imshow(weights.T.cpu().numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    heat.set(yticks=range(mod.k), yticklabels=[f"layer {j}" for j in layers], xlabel="token of the passage",
             title="Routing weight per late layer")
    width = 0.38
    bars.bar(np.arange(mod.k) - width / 2, [stats[f"layer{j}_ce"] for j in layers], width, label="own norm")
    bars.bar(np.arange(mod.k) + width / 2, [stats[f"layer{j}_lens"] for j in layers], width, label="final norm")
    bars.axhline(stats["ce"], color="k", lw=0.8, ls="--", label="mixture")
    shown = [stats[f"layer{j}_{kind}"] for j in layers for kind in ("ce", "lens")] + [stats["ce"]]
    margin = 0.5 * (max(shown) - min(shown)) + 0.01  # the layers differ by hundredths: zoom in on them
    bars.set_ylim(min(shown) - margin, max(shown) + margin)
    bars.set(xticks=range(mod.k), xticklabels=layers, xlabel="layer", ylabel="validation loss",
             title="Loss per layer")
    bars.legend(fontsize=7)
    fig.tight_layout()
    table = "<table><tr><th>layer</th><th>val loss, own norm</th><th>val loss, final norm</th></tr>" + "".join(
        f"<tr><td>{j}</td><td>{stats[f'layer{j}_ce']:.3f}</td><td>{stats[f'layer{j}_lens']:.3f}</td></tr>"
        for j in layers) + f"<tr><td>mixture</td><td colspan=2>{stats['ce']:.3f}</td></tr></table>"
    return section("Depth ensemble", "explain_ensemble.png", fig,
                   "One copy of the passage per late layer, each token shaded by the weight the router gives that "
                   "layer for predicting it: where the model trusts which depth. A boxed token is one this layer "
                   "predicts right (its top token) while the final layer gets it wrong: what the ensemble can "
                   "rescue. The table gives each late layer's validation loss through its own trained norm and "
                   "through the final norm (the logit lens), beside the mixture's.", "".join(rows) + table)


@torch.no_grad()
def validation_stats(reader, s):
    """The model's evaluation statistics (as train.py logs them) over eval_iters seeded validation batches."""
    generator = torch.Generator().manual_seed(s["seed"])
    T, sums = reader.block_size, {}
    for _ in range(s["eval_iters"]):
        starts = torch.randint(len(reader.tokens["val"]) - T - 1, (s["batch_size"],), generator=generator).tolist()
        batch = reader.read("val", starts)
        _, stats = reader.model(batch["x"], batch["y"], batch["extra"])
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value.float().item() / s["eval_iters"]
    return sums


def planner_section(reader, passage):
    plan, data = reader.model.plan, reader.plan_data
    uniform = reader.read("val", passage["starts"], plan_mode="uniform")["loss"].flatten()
    loss = passage["loss"].flatten()
    target = np.concatenate([np.arange(i + 1, i + 1 + reader.block_size) for i in passage["starts"]])
    sentence = torch.from_numpy(data.token_sentence["val"][target].astype(np.int64))
    ids = sentence.unique().tolist()
    probs = None
    if plan.planner is not None:
        with torch.no_grad():
            context, pos = data.context("val", torch.tensor(ids), plan.context)
            probs = F.softmax(plan.planner(context.to(reader.device), pos.to(reader.device)).float(), -1).cpu()
    texts = reader.token_texts(passage["y"].flatten())
    rows, shown, with_plan, without = [], set(), [], []
    for n, sid in enumerate(ids):
        mine = (sentence == sid).nonzero().flatten().tolist()
        label = int(data.labels["val"][sid])
        shown.add(label)
        guesses = "-"
        if probs is not None:
            top = probs[n].topk(3)
            shown.update(top.indices.tolist())
            guesses = ", ".join(f"{k} ({p:.2f})" for p, k in zip(top.values.tolist(), top.indices.tolist()))
        with_plan.append(loss[mine].mean().item())
        without.append(uniform[mine].mean().item())
        text = html.escape("".join(texts[t] for t in mine)).replace("\n", "&#8629;")
        rows.append(f"<tr><td>{text}</td><td>{label}</td><td>{guesses}</td><td>{with_plan[-1]:.3f}</td>"
                    f"<td>{without[-1]:.3f}</td></tr>")
    table = ("<table><tr><th>sentence</th><th>true label</th><th>planner's top labels</th><th>loss, its plan</th>"
             "<th>loss, uniform plan</th></tr>" + "".join(rows) + "</table>")
    fig = Figure(figsize=(9, 3))
    ax = fig.add_subplot()
    at = np.arange(len(ids))
    ax.bar(at - 0.2, with_plan, 0.4, label=f"its plan ({plan.mode})")
    ax.bar(at + 0.2, without, 0.4, label="uniform plan")
    ax.set(xlabel="sentence of the passage", ylabel="mean loss (nats)", title="Loss per sentence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return section("Planner", "explain_planner.png", fig,
                   "The passage split into the sentences the planner sees. For each: its true label (the k-means "
                   "cluster of its embedding), the planner's three most likely labels given the sentences before it "
                   "(the plan the model was conditioned on), and the model's mean loss on the sentence's tokens "
                   "under that plan and under a uniform plan. A plan that helps lowers the loss. The legend "
                   "shows, for each label named here, the train sentences nearest its centroid.",
                   table + label_legend(reader, sorted(shown)))


def label_legend(reader, labels, per_label=3):
    data = reader.plan_data
    embeddings, spans = data.embeddings["train"], data.sentences["train"]["sentence_span"]
    items = []
    for label in labels:
        distance = ((embeddings - data.centroids[label]) ** 2).sum(1)
        nearest = distance.topk(min(per_label, len(distance)), largest=False).indices.tolist()
        examples = " | ".join(html.escape(reader.decode(reader.tokens["train"][spans[i][0]:spans[i][1]]).strip())
                              for i in nearest)
        items.append(f"<li><b>{label}</b>: {examples}</li>")
    return "<h3>What the labels mean</h3><ul>" + "".join(items) + "</ul>"


def ngram_section(reader, config, s):
    tokens = reader.tokens["train"]
    n, r = config["ngram_n"], config["ngram_r"]
    eot = reader.meta["eot_token"]
    exact = ngram.load_targets("all", reader.data_dir, tokens, n, r, config["seed"], eot)
    compact = ngram.load_targets("compact", reader.data_dir, tokens, n, r, config["seed"], eot) \
        if config["ngram_mode"] == "compact" else None
    support = np.append(0, np.diff(exact.ptr))  # row_context counts from 1; 0: no context
    has_choice = np.flatnonzero(support[exact.row_context] >= 3)
    rows = np.random.default_rng(s["seed"]).choice(has_choice, min(s["ngram_positions"], len(has_choice)),
                                                   replace=False)
    columns = [("stored compact target", compact)] if compact is not None else []
    columns += [("exact distribution", exact), ("model's prediction", None)]
    fig = Figure(figsize=(3.2 * len(columns), 2.2 * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for row, ax_row in zip(sorted(rows.tolist()), axes):
        context = "".join(reader.token_texts(tokens[row - n + 2:row + 1]))
        for (name, targets), ax in zip(columns, ax_row):
            if targets is None:
                ids, probs = model_prediction(reader, row, r + 1)
            else:  # most frequent first; the compact target's last entry is its tail token
                ids, probs = (a.reshape(-1)[:r + 1] for a in targets(np.array([row])))
            labels = [repr(t)[1:-1] for t in reader.token_texts(ids)]
            colors = ["tab:green" if targets is None else "tab:blue"] * len(ids)
            if targets is not None and targets is compact:
                labels[-1], colors[-1] = labels[-1] + " (tail)", "tab:orange"
            shown = np.flatnonzero(probs > 0)
            ax.bar(range(len(shown)), probs[shown], color=[colors[i] for i in shown])
            ax.set_xticks(range(len(shown)), [labels[i] for i in shown], fontsize=7)
            ax.set_title(f"{name}\nafter {context!r}", fontsize=8)
            ax.set_ylim(0, 1)
    fig.tight_layout()
    return section("N-gram targets", "explain_ngram.png", fig,
                   f"At {len(rows)} train positions, the target the model was trained towards besides the observed "
                   f"token: the corpus's distribution of the token after the same {n - 1}-token context. The exact "
                   "distribution is every next token in proportion to its count; the compact target keeps the top "
                   f"{r} exactly and puts the remaining mass on one tail token (the observed one, or one borrowed "
                   "from the tail), so that it equals the exact one on average. Beside them, the model's own "
                   "prediction at the same position (top tokens).", "")


def model_prediction(reader, row, top):
    """The model's top next-token probabilities at train position row (predicting tokens[row + 1])."""
    start = max(0, row - reader.block_size + 1)
    logits = reader.read("train", [start])["logits"][0, row - start].float()
    probs = F.softmax(logits, -1).topk(top)
    return probs.indices.cpu().numpy(), probs.values.cpu().numpy()


# --- the page -----------------------------------------------------------------------------------------------------
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


def write_page(out_dir, sections, subtitle):
    parts = []
    for sec in sections:
        (out_dir / sec["png_name"]).write_bytes(sec["png"])
        image = base64.b64encode(sec["png"]).decode("ascii")
        parts.append(f'<section id="{sec["png_name"][len("explain_"):-len(".png")]}"><h2>{sec["title"]}</h2>'
                     f'<p class="how">{sec["how_to_read"]}</p>{sec["body"]}'
                     f'<img alt="{sec["title"]}" src="data:image/png;base64,{image}"></section>')
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>explain: {html.escape(subtitle)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
.passage {{ font-family: monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ddd;
  padding: 0.5em; margin-bottom: 1em; }}
.t.rescue {{ outline: 2px solid #d62728; }}
.how {{ color: #444; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>What the techniques do to a text</h1><p>{html.escape(subtitle)}</p>
{"".join(parts)}
</body></html>
"""
    path = out_dir / "explain.html"
    path.write_text(page, encoding="utf-8")
    return path


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
