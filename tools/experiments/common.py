"""
What every experiment script shares: train one arm with train.py in a subprocess (skipped when its finished log and
score are already there, so an interrupted suite picks up where it stopped), read its log and its score on the
validation split, compare arms over paired seeds, plot curves, write a table.

How a table's verdict is reached (the README states the same rule): every arm runs with each seed of SEEDS, and a
seed fixes the initialisation and the order of the batches, so the arms of one seed are paired. For an arm against
its baseline, take the per-seed differences of the validation loss on the whole validation split (its first
SCORE_TOKENS where longer); the arm "helps" when the 95% Student-t interval of their mean lies below zero, "hurts"
when it lies above, and otherwise there is "no resolvable difference".
"""

import json
import math
import os
import subprocess
import sys

import numpy as np

from training.plot import draw_curves, new_figure, read_log, series

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
SEEDS = (1337, 1338, 1339)
SCORE_TOKENS = 120_000  # the whole validation split of shakespeare_char and wiki, the first 120k tokens of sotu's
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}  # by sample size


def train_arm(out_dir, args, max_iters, seed=SEEDS[0], score=True):
    """Run `python train.py config/plain.py *args --seed=seed --out_dir=out_dir --max_iters=max_iters`, scoring the
    kept weights on SCORE_TOKENS validation tokens (unless score is False: a stage that only feeds a later run),
    unless out_dir already holds a log that reached max_iters and the score; return the log's records. An unfinished
    arm is trained again from its start (--overwrite). Every arm starts from the plain GPT, so it has on exactly the
    techniques its own args switch on."""
    records = read_log(out_dir)
    if not records or records[-1]["iter"] < max_iters or (score and read_score(out_dir) is None):
        command = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "plain.py"), *args,
                   f"--seed={seed}", f"--score_val_tokens={SCORE_TOKENS if score else 0}", "--overwrite",
                   f"--out_dir={out_dir}", f"--max_iters={max_iters}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        records = read_log(out_dir)
    return records


def stored_or_trained(out_dir, args, max_iters, seed, stored):
    """A run's validation loss and where it comes from: its folder's score; where the folder is gone, the loss that
    `stored` (an arm of results/combined.json, {"seeds": {seed: loss}}) keeps for the seed; else the run, trained now
    (train_arm)."""
    if read_score(out_dir) is None and str(seed) in stored.get("seeds", {}):
        return stored["seeds"][str(seed)], "results/combined.json"
    train_arm(out_dir, args, max_iters, seed)
    return read_score(out_dir)["val_loss"], "trained here"


def read_score(out_dir):
    """The score.json train.py wrote after an arm's last step (its validation loss on SCORE_TOKENS), or None."""
    path = os.path.join(out_dir, "score.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def mean_sd(values):
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def per_seed(scores, key="val_loss"):
    """One value of each seed's score.json (scores: the arm's scores in SEEDS order)."""
    return [score[key] for score in scores]


def share_of_ceiling(values, baseline, ceiling):
    """'mean ± sd' over seeds of the share of the ceiling's gain an arm takes: (baseline - arm) / (baseline -
    ceiling), each seed's from its own baseline and ceiling (lower loss is better)."""
    shares = [(b - v) / (b - c) for v, b, c in zip(values, baseline, ceiling)]
    mean, sd = mean_sd(shares)
    return f"{100 * mean:.0f}% ± {100 * sd:.0f}%"


# The main job's settings (python train.py) from config/plain.py: the flags that switch each technique back on.
MAIN_JOB_ITERS = 3000
TECHNIQUES = {"n-gram targets": ["--ngram_mode=compact"], "depth ensemble": ["--mod_k=2"],
              "planner": ["--plan_mode=soft", "--plan_lambda=1.0"]}


def main_job_dir(name, seed, suite="small"):
    """The folder of one arm on the main job's settings, shared by the experiments that run it (combined, planner),
    so that an arm two experiments compare trains once."""
    slug = name.replace(" ", "_").replace("/", "-").replace("=", "")
    return os.path.join(ROOT, "out", "main-job" if suite == "small" else f"main-job-{suite}", f"seed{seed}", slug)


def verdict(differences):
    """The rule of the module docstring, on an arm's per-seed differences to its baseline (lower is better)."""
    mean, sd = mean_sd(differences)
    half_width = T95[len(differences)] * sd / math.sqrt(len(differences)) if len(differences) > 1 else math.inf
    if mean + half_width < 0:
        return "helps"
    if mean - half_width > 0:
        return "hurts"
    return "no resolvable difference"


def paired_columns(values, baseline):
    """The cells 'mean ± sd over seeds', 'paired difference to the baseline, mean ± sd' and the verdict, for one
    arm's per-seed values and its baseline's values on the same seeds."""
    differences = [v - b for v, b in zip(values, baseline)]
    (mean, sd), (diff, diff_sd) = mean_sd(values), mean_sd(differences)
    if not any(differences):
        return [f"{mean:.4f} ± {sd:.4f}", "(baseline)", ""]
    return [f"{mean:.4f} ± {sd:.4f}", f"{diff:+.4f} ± {diff_sd:.4f}", verdict(differences)]


VERDICT_NOTE = (f"Each arm ran with seeds {', '.join(map(str, SEEDS))}; a seed fixes initialisation and batch order, "
                "so arms are paired by seed. Validation loss is over the whole validation split, or its first 120k "
                "tokens where it is longer (score.json). "
                "'vs baseline' is the mean ± sd of the per-seed differences; the verdict is 'helps' (or 'hurts') "
                "when the 95% Student-t interval of that mean lies below (above) zero, else 'no resolvable "
                "difference'.")


def first_iter_reaching(records, loss, key="val_loss"):
    """The first logged iteration whose loss is at or below `loss`, or None if the run never got there."""
    return next((r["iter"] for r in records if r[key] <= loss), None)


def seed_mean(runs, key):
    """(iterations, mean over seeds) of one logged key: runs holds one arm's log records for each seed."""
    iters, _ = series(runs[0], key)
    return iters, list(np.mean([series(records, key)[1] for records in runs], axis=0))


def plot_curves(runs, path, title, key="val_loss", ylabel="validation loss (nats/token), mean over seeds"):
    """One line per arm: runs maps an arm's label to its log records for each seed."""
    fig, (ax,) = new_figure(1, height=4.5)
    draw_curves(ax, {label: seed_mean(per_seed, key) for label, per_seed in runs.items()}, title, ylabel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_gains(losses, baseline, path, title):
    """One bar per arm: the mean over seeds of its paired difference to the baseline arm, with the 95% interval the
    verdicts use (a bar whose interval crosses zero is no resolvable difference). losses maps an arm to its
    per-seed losses; the curves of such arms overlap too closely to read."""
    arms = [arm for arm in losses if arm != baseline]
    stats = [mean_sd([x - y for x, y in zip(losses[arm], losses[baseline])]) for arm in arms]
    fig, (ax,) = new_figure(1, height=0.45 * len(arms) + 1.2)
    half = [T95[len(losses[baseline])] * sd / math.sqrt(len(losses[baseline])) for _, sd in stats]
    ax.barh(range(len(arms)), [m for m, _ in stats], xerr=half, capsize=3, color="tab:blue", alpha=0.7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(arms)), arms, fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=f"val loss minus {baseline}'s (nats): mean over paired seeds, 95% interval")
    ax.grid(axis="x", alpha=0.3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
