"""
What every experiment script shares: train one arm with train.py in a subprocess (skipped when its finished log is
already there, so an interrupted suite picks up where it stopped), read its log, plot curves, write a table.
"""

import os
import subprocess
import sys

from plot import draw_curves, new_figure, read_log, series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_arm(out_dir, args, max_iters):
    """Run `python train.py config/plain.py *args --out_dir=out_dir --max_iters=max_iters` unless out_dir already
    holds a log that reached max_iters; return the log's records. An unfinished arm is trained again from its start
    (--overwrite). Every arm starts from the plain GPT, so it has on exactly the techniques its own args switch
    on."""
    records = read_log(out_dir)
    if not records or records[-1]["iter"] < max_iters:
        command = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "plain.py"), *args,
                   "--overwrite", f"--out_dir={out_dir}", f"--max_iters={max_iters}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        records = read_log(out_dir)
    return records


def first_iter_reaching(records, loss, key="val_loss"):
    """The first logged iteration whose loss is at or below `loss`, or None if the run never got there."""
    return next((r["iter"] for r in records if r[key] <= loss), None)


def plot_curves(runs, path, title, key="val_loss", ylabel="validation loss (nats/token)"):
    """One line per arm: runs maps an arm's label to its log records."""
    fig, (ax,) = new_figure(1, height=4.5)
    draw_curves(ax, {label: series(records, key) for label, records in runs.items()}, title, ylabel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
