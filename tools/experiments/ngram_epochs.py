"""
CoCoNTs' noise given time to average out: the compact target's share of the exact target's gain in a run that reads
each train position less than once and in one that reads it several times. On the main job's settings
(shakespeare_char, n = 5, r = 8, alpha = 0.5, 4 layers, 128 wide, batch 12 x 64), over paired seeds: the plain loss
('off'), AllNTs (the exact target, the compact one's ceiling) and CoCoNTs, in runs of 1000 steps (0.77M tokens read,
0.77 of an epoch) and of 3000 (the main job's: 2.3 epochs). A compact target whose deal of tail tokens costs it
part of the exact target's gain in one pass should take a larger share once every position has been read a few
times; one that already takes all of it has nothing left for a redrawn deal to recover.

    python -m tools.experiments.ngram_epochs

The 3000-step 'off' and 'compact' arms are the combined experiment's 'plain' and 'n-gram targets alone' runs
(tools/experiments/combined.py): their folders, or where a folder is gone, the score results/combined.json stores
(the table says which). Writes results/ngram_epochs.md.
"""

import json
import os
import sys

from tools.experiments.combined import stored_scores
from tools.experiments.common import (MAIN_JOB_ITERS, ROOT, SEEDS, VERDICT_NOTE, main_job_dir, markdown_table,
                                      paired_columns, share_of_ceiling, stored_or_trained)

ARMS = {"off": [], "AllNTs": ["--ngram_mode=all"], "CoCoNTs r=8": ["--ngram_mode=compact"]}
SHARED = {"off": "plain", "CoCoNTs r=8": "n-gram targets alone"}  # the combined experiment's arms at its length
LENGTHS = (1000, MAIN_JOB_ITERS)


def folder(arm, steps, seed):
    if steps == MAIN_JOB_ITERS:
        return main_job_dir(SHARED.get(arm, f"n-gram {arm}"), seed)
    return os.path.join(ROOT, "out", f"ngram-epochs-{steps}", f"seed{seed}", arm.replace(" ", "_").replace("=", ""))


def train_tokens():
    with open(os.path.join(ROOT, "data", "shakespeare_char", "meta.json")) as f:
        return json.load(f)["n_tokens"]["train"]


def score(arm, steps, seed, stored):
    """The arm's validation loss for a seed, and where it comes from."""
    shared = stored.get(SHARED.get(arm), {}) if steps == MAIN_JOB_ITERS else {}
    return stored_or_trained(folder(arm, steps, seed), ARMS[arm], steps, seed, shared)


def run(results_dir):
    stored = stored_scores()
    sections, sources = [], set()
    for steps in LENGTHS:
        losses = {}
        for arm in ARMS:
            scored = [score(arm, steps, seed, stored) for seed in SEEDS]
            losses[arm] = [loss for loss, _ in scored]
            sources.update(f"{arm} at {steps} steps" for _, source in scored if source != "trained here")
        rows = [[arm, *paired_columns(losses[arm], losses["off"]),
                 paired_columns(losses[arm], losses["AllNTs"])[1] if arm == "CoCoNTs r=8" else "-",
                 share_of_ceiling(losses[arm], losses["off"], losses["AllNTs"]) if arm == "CoCoNTs r=8" else "-"]
                for arm in ARMS]
        epochs = steps * 12 * 64 / train_tokens()
        sections.append(f"## {steps} steps ({epochs:.2f} epochs: each train position read {epochs:.2f} times on "
                        f"average)\n\n" + markdown_table(["arm", "val loss", "vs off", "verdict", "vs AllNTs",
                                                          "share of AllNTs' gain"], rows))
    text = ("# CoCoNTs against AllNTs, in one pass and in several\n\n`python -m tools.experiments.ngram_epochs`: "
            "shakespeare_char, the main job's settings with one target each (n = 5, r = 8, alpha = 0.5).\n\n"
            + "\n".join(sections) + f"\n{VERDICT_NOTE} The share is (off - CoCoNTs) / (off - AllNTs) per seed."
            + (f" Read from results/combined.json (the combined experiment's runs, commit 350dc6c): "
               f"{', '.join(sorted(sources))}." if sources else "") + "\n")
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "ngram_epochs.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results"))
