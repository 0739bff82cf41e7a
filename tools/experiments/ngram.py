"""
Do n-gram soft targets train a better model in fewer steps, and how much of the exact target's gain does the compact
one keep? On wiki (GPT-2 tokens), the same model, steps and batches per seed: the plain loss ('off'), AllNTs (the
exact target: the ceiling of the compact one) and CoCoNTs (compact target) at r = 8 and 16, and at r = 8 with
alpha = 1, each as a share of AllNTs' gain. (An earlier sweep also ran r = 4 and 32 and n = 4: docs/ngram.md.) Writes
results/ngram{,_gpu}.md (validation loss on the whole split over paired seeds, the compact target against the exact
one, and the step at which each arm first reaches off's final validation loss) and results/ngram{,_gpu}.png
(validation-loss curves, mean over seeds).

    python -m tools.experiments.ngram          # 'small': config/ngram/wiki.py
    python -m tools.experiments.ngram gpu      # a larger model and longer runs for one CUDA GPU
"""

import os
import sys

from configurator import read_config_file
from tools.experiments.common import (ROOT, SEEDS, VERDICT_NOTE, first_iter_reaching, markdown_table, paired_columns,
                                      plot_curves, read_score, share_of_ceiling, train_arm)

# arm -> (mode, n, r, alpha)
ARMS = {"off": ("off", 3, 8, 0.5), "AllNTs": ("all", 3, 8, 0.5),
        **{f"CoCoNTs r={r}": ("compact", 3, r, 0.5) for r in (8, 16)},
        "CoCoNTs r=8 alpha=1": ("compact", 3, 8, 1.0)}
# The gpu suite: the same arms on a 6-layer, 384-wide model, 5000 steps.
GPU_OVERRIDES = ["--n_layer=6", "--n_head=6", "--n_embd=384", "--block_size=256", "--batch_size=64",
                 "--eval_interval=250", "--eval_iters=50", "--learning_rate=6e-4", "--min_lr=6e-5", "--dropout=0.1"]


def run(suite, results_dir):
    base = os.path.join(ROOT, "config", "ngram", "wiki.py")
    max_iters = read_config_file(base)["max_iters"] if suite == "small" else 5000
    out = os.path.join(ROOT, "out", f"ngram-{suite}")
    runs, scores = {}, {}
    for arm, (mode, n, r, alpha) in ARMS.items():
        flags = [base, f"--ngram_mode={mode}", f"--ngram_n={n}", f"--ngram_r={r}", f"--ngram_alpha={alpha}",
                 *({"small": [], "gpu": GPU_OVERRIDES}[suite])]
        dirs = [os.path.join(out, f"seed{seed}", arm.replace(" ", "_").replace("=", "")) for seed in SEEDS]
        runs[arm] = [train_arm(d, flags, max_iters, seed) for d, seed in zip(dirs, SEEDS)]
        scores[arm] = [read_score(d)["val_loss"] for d in dirs]
    rows = []
    for arm, (mode, n, r, alpha) in ARMS.items():
        steps = [first_iter_reaching(records, off[-1]["val_loss"]) for records, off in zip(runs[arm], runs["off"])]
        rows.append([arm, n, "-" if mode != "compact" else r, alpha if mode != "off" else "-",
                     *paired_columns(scores[arm], scores["off"]),
                     paired_columns(scores[arm], scores["AllNTs"])[1] if mode == "compact" else "-",
                     share_of_ceiling(scores[arm], scores["off"], scores["AllNTs"]) if mode == "compact" else "-",
                     " / ".join("never" if s is None else str(s) for s in steps)])
    header = ["arm", "n", "r", "alpha", "val loss", "vs off", "verdict", "vs AllNTs (n=3, alpha=0.5)",
              "share of AllNTs' gain",
              f"first step at off's final val loss (of {max_iters}), per seed"]
    table = markdown_table(header, rows)
    name = "ngram" if suite == "small" else f"ngram_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# n-gram soft targets on wiki ({suite} suite, {max_iters} steps)\n\n{table}\n{VERDICT_NOTE} "
                "The first step is read from each seed's evaluation curve (config/ngram/wiki.py's eval_interval and "
                "eval_iters), against the 'off' arm of the same seed. The cost of each target is in "
                "`python -m tools.bench --all`.\n")
    plot_curves(runs, os.path.join(results_dir, f"{name}.png"), f"n-gram soft targets on wiki ({suite} suite)")
    print(table)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
