"""
What a run tells its user at each evaluation and at the end: the losses, one line per technique that is on (in
words, with the number that says whether it is doing its job beside the one it must beat), a warning the first time
a technique degenerates, and the final numbers, each named. With wandb_log on, every evaluation's scalars also go to
Weights & Biases (imported only then), as they go to log.jsonl.
"""

import json
import math
import os

from tqdm import tqdm

import lm

HEALTH_FROM = 0.2  # share of max_iters after which the techniques' health is judged
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
# The plain GPT's result on the main job's settings, which the main job's final line prints beside its own
PLAIN_RESULTS = os.path.join(ROOT, "results", "combined.json")
PLAIN_COMMAND = "python -m tools.experiments.run --suite small --only combined"  # what writes it


class Reporter:

    def __init__(self, s):
        self.s, self.warned = s, set()
        self.wandb = start_wandb(s) if s["wandb_log"] else None

    def evaluation(self, record):
        """Print an evaluation's record in words and warn about a degenerate technique (the warning is kept in the
        record: the plot marks it); mirror the record to wandb."""
        lines = [f"iter {record['iter']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
                 f"val ppl {record['val_ppl']:.2f} (plain cross-entropy on {self.s['eval_iters']} fixed batches)"]
        lines += [f"  {line}" for line in technique_lines(record, self.s)]
        tqdm.write("\n".join(lines))
        self.warn_degenerate(record)
        if self.wandb is not None:
            self.wandb.log(wandb_metrics(record), step=record["iter"])

    def warn_degenerate(self, record):
        """A technique that stops doing its job says so, once. Judged from HEALTH_FROM of the run on: a router
        still finding its layers or a planner still learning its labels in the first steps is not degenerate."""
        if record["iter"] < HEALTH_FROM * self.s["max_iters"]:
            return
        warnings = {t.__name__: w for t in lm.TECHNIQUES if (w := t.health_warning(record))}
        if warnings:
            record["warnings"] = list(warnings.values())
        for name, warning in warnings.items():
            if name not in self.warned:
                self.warned.add(name)
                tqdm.write(f"warning: {warning}")

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


def technique_lines(record, s):
    """One line in words per technique whose statistics the record holds (each technique's report_line); s: the
    run's settings."""
    return [line for t in lm.TECHNIQUES if (line := t.report_line(record, s))]


def plain_result(results_path=PLAIN_RESULTS):
    """The plain GPT's validation perplexity on the main job's settings, mean over seeds, as the combined experiment
    stored it (not a run of the caller's), or the command that stores it."""
    if not os.path.isfile(results_path):
        return f"for the plain GPT's on the same settings, run `{PLAIN_COMMAND}` (it writes {results_path})"
    with open(results_path) as f:
        plain = json.load(f)["plain"]
    return (f"the plain GPT on the same settings: perplexity {plain['val_ppl']:.2f}, the mean over "
            f"{len(plain['seeds'])} seeds stored in {os.path.relpath(results_path, ROOT)} by `{PLAIN_COMMAND}`, "
            f"not this run")


def final_numbers(val_loss, eval_iters, score=None, plain=None):
    """The run's last numbers in one line, each named: the curve's, the scored split's, and the plain GPT's (plain:
    a sentence on where the stored one comes from, or None)."""
    line = f"final: val loss {val_loss:.4f} on the curve's {eval_iters} fixed batches"
    if score is not None:
        line += (f"; {score['val_loss']:.4f} on {score['val_tokens']:,} tokens of the validation split, perplexity "
                 f"{math.exp(score['val_loss']):.2f}")
    return line + (f"; {plain}" if plain else "")


def wandb_metrics(record):
    """A log record's numbers under nanoGPT's wandb names (iter, train/loss, val/loss, lr, and mfu in percent), so a
    dashboard saved for nanoGPT reads this run; the others split the same way (val_route2 is val/route2,
    train_ngram_ce train/ngram_ce), and grad_norm is the last logged step's."""
    renamed = {"train_loss": "train/loss", "val_loss": "val/loss"}
    metrics = {renamed.get(k, k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k): v
               for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "mfu" in metrics:
        metrics["mfu"] = 100 * metrics["mfu"]
    if record.get("grad_norms"):
        metrics["grad_norm"] = record["grad_norms"][-1][1]
    return metrics


def start_wandb(s):
    try:
        import wandb
    except ImportError:
        raise ValueError("wandb_log=True needs wandb: pip install wandb (it is in requirements-dev.txt)") from None
    return wandb.init(project=s["wandb_project"], name=s["wandb_run_name"] or None, config=s, dir=s["out_dir"])
