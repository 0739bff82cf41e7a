"""
The main job's ensemble settled: all three techniques against all three but the depth ensemble, on the main job's
settings, over five paired seeds (the combined experiment's three and two more), since three seeds left the
ensemble's cost on every seed unresolved. The verdict ('hurts') switched the ensemble off in the main job.

    python -m tools.experiments.ensemble_seeds

A seed whose run folder is gone but whose score results/combined.json stores (the combined experiment's) is read
from there, and the table says which; the others train (about 5 minutes each on 2 cores). Writes
results/ensemble_seeds.md.
"""

import math
import os
import sys

from tools.experiments.combined import ALL, ARMS, arm_flags, stored_scores
from tools.experiments.common import (MAIN_JOB_ITERS, ROOT, SEEDS, T95, main_job_dir, mean_sd, stored_or_trained,
                                      verdict)

SEEDS5 = (*SEEDS, 1340, 1341)
WITHOUT = "all but depth ensemble"


def score(arm, seed, stored):
    """The arm's validation loss for a seed, and where it comes from."""
    return stored_or_trained(main_job_dir(arm, seed), arm_flags(ARMS[arm]), MAIN_JOB_ITERS, seed, stored.get(arm, {}))


def run(results_dir):
    stored = stored_scores()
    rows, differences = [], []
    for seed in SEEDS5:
        (full, source), (without, _) = score(ALL, seed, stored), score(WITHOUT, seed, stored)
        differences.append(full - without)
        rows.append(f"| {seed} | {full:.4f} | {without:.4f} | {full - without:+.4f} | {source} |")
    mean, sd = mean_sd(differences)
    half = T95[len(differences)] * sd / math.sqrt(len(differences))
    text = "\n".join([
        "# The depth ensemble in the main job, over five paired seeds", "",
        f"`python -m tools.experiments.ensemble_seeds`: all three techniques (`--mod_k=2`) against all three but the "
        f"ensemble (the main job since this verdict), {MAIN_JOB_ITERS} steps, validation loss on the whole split.", "",
        "| seed | all three | all but the ensemble | what the ensemble adds | score from |", "|---|---|---|---|---|",
        *rows, "",
        f"The ensemble adds {mean:+.4f} ± {sd:.4f} nats (mean ± sd over {len(differences)} paired seeds; 95% "
        f"interval {mean - half:+.4f} to {mean + half:+.4f}): **{verdict(differences)}** ('hurts': the ensemble "
        "raises the loss).",
        ""])
    with open(os.path.join(results_dir, "ensemble_seeds.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results"))
