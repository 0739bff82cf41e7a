"""
Pictures of training runs, drawn from their log.jsonl (one record per evaluation, written by
train.py): loss.png of every run, and the curves the
experiments compare. Drawn on matplotlib Figures, never through pyplot: no global figure state, and the process's
backend stays what it was, so a notebook keeps its inline figures.
"""

import json
import os
import textwrap

import lm


def read_log(out_dir):
    """The records of out_dir/log.jsonl, one per evaluation; [] before a run has logged any."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:  # a line without its newline is one a killed run was writing
        return [json.loads(line) for line in f if line.endswith("\n")]


def plot_log(out_dir, title=None, settings=None):
    """Draw out_dir/log.jsonl into out_dir/loss.png, and return the Figure (a notebook shows it). The first panel
    has the training objective at every log_interval and the plain cross-entropy of each evaluation; then one panel
    per technique that is on, with its health figure over training and the evaluations where it degenerated
    marked (each technique's plot_panel: lm.TECHNIQUES). title: the run's settings that differ from the defaults
    (default: the folder's name); settings: the run's, or None when only its log is known."""
    records = read_log(out_dir)
    if not records:
        raise FileNotFoundError(f"no evaluations logged in {os.path.join(out_dir, 'log.jsonl')} yet: train first")
    panels = [(t, panel) for t in lm.TECHNIQUES if (panel := t.plot_panel(records, settings)) is not None]
    grad_norms = [pair for r in records for pair in r.get("grad_norms", [])]  # logs before it have none
    fig, axes = new_figure(1 + bool(grad_norms) + len(panels))
    steps = [pair for r in records for pair in r.get("train_losses", [])]
    if steps:
        axes[0].plot(*zip(*steps), lw=0.8, alpha=0.6, label="training objective (per step)")
    draw_curves(axes[0], {f"{split} CE (evaluations)": series(records, f"{split}_loss") for split in ("train", "val")},
                "loss", "nats/token")
    if grad_norms:  # the first thing to look at when a run diverges: spikes before the loss does
        axes[1].plot(*zip(*grad_norms), lw=0.8, label="before clipping (per step)")
        if settings is not None and settings["grad_clip"] > 0:
            axes[1].axhline(settings["grad_clip"], color="gray", ls="--", lw=0.8, label="grad_clip")
        axes[1].set(title="gradient norm", xlabel="iteration", ylabel="global L2 norm")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize=8)
    for ax, (technique, (panel_title, keys)) in zip(axes[1 + bool(grad_norms):], panels):
        curves = {label: series(records, key) for label, key in keys.items()}
        draw_curves(ax, curves, panel_title, "")
        degenerate = warned(records, technique.health_warning)
        if degenerate:  # marked on the panel's first curve
            marks = [(it, value) for it, value in zip(*next(iter(curves.values()))) if it in degenerate]
            ax.plot(*zip(*marks), "rx", ms=9, label="degenerate (the run warned)")
            ax.legend(fontsize=8)
    if title is None:
        title = os.path.basename(os.path.abspath(out_dir))
    fig.suptitle(textwrap.fill(title or "train.py's defaults", 100), fontsize=9)
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)
    return fig


def warned(records, health_warning):
    """The iterations whose record carries this technique's warning (run_report's Reporter put it there)."""
    return {r["iter"] for r in records if r.get("warnings") and health_warning(r) in r["warnings"]}


def series(records, key):
    """(iterations, values) of one logged key, over the records that have it."""
    return [r["iter"] for r in records if key in r], [r[key] for r in records if key in r]


def new_figure(rows, columns=1, width=7.0, height=3.0):
    """A matplotlib Figure with a grid of axes, made without pyplot: no global figure state, and the process's
    backend stays what it was (a notebook keeps its inline figures). fig.savefig renders it with Agg."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    return fig, fig.subplots(rows, columns, squeeze=False).ravel()


def draw_curves(ax, curves, title, ylabel):
    """One line per label: curves maps a label to (iterations, values)."""
    for label, (iters, values) in curves.items():
        ax.plot(iters, values, marker=".", label=label)
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
