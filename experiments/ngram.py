"""
Do n-gram soft targets train a better model in fewer steps? Four arms with the same model, seed and steps, on
shakespeare_char and wiki: the plain loss, label smoothing 0.1, AllNTs (exact n-gram target) and CoCoNTs
(compact target). Writes results/ngram.md (final validation loss and perplexity, and the step at which each arm
first reaches the plain arm's final validation loss) and results/ngram.png (validation-loss curves).

    python experiments/ngram.py          # 'small': the CPU-sized configs of config/ngram/
    python experiments/ngram.py gpu      # a larger model and longer runs for one CUDA GPU
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import read_config_file
from experiments.common import ROOT, first_iter_reaching, markdown_table, train_arm
from plot import draw_curves, new_figure, series

DATASETS = ("shakespeare_char", "wiki")
ARMS = {"off": "off.py", "label smoothing 0.1": "label_smoothing.py", "AllNTs": "all.py", "CoCoNTs": "compact.py"}
# The gpu suite: the same arms on a 6-layer, 384-wide model, 5000 steps.
GPU_OVERRIDES = ["--n_layer=6", "--n_head=6", "--n_embd=384", "--block_size=256", "--batch_size=64",
                 "--max_iters=5000", "--eval_interval=250", "--eval_iters=50", "--learning_rate=6e-4",
                 "--min_lr=6e-5", "--dropout=0.1"]


def run(suite, results_dir):
    overrides = {"small": [], "gpu": GPU_OVERRIDES}[suite]
    runs, rows = {}, []
    for dataset in DATASETS:
        base = os.path.join(ROOT, "config", "ngram", f"{dataset}.py")
        max_iters = read_config_file(base)["max_iters"] if suite == "small" else 5000
        runs[dataset] = {}
        for arm, config in ARMS.items():
            out_dir = os.path.join(ROOT, "out", f"ngram-{suite}", dataset, config[:-3])
            args = [base, os.path.join(ROOT, "config", "ngram", config), *overrides]
            runs[dataset][arm] = train_arm(out_dir, args, max_iters)
        baseline = runs[dataset]["off"][-1]["val_loss"]
        for arm, records in runs[dataset].items():
            final = records[-1]
            reached = first_iter_reaching(records, baseline)
            rows.append([dataset, arm, f"{final['val_loss']:.4f}", f"{final['val_ppl']:.2f}",
                         "never" if reached is None else f"{reached} ({reached / final['iter']:.0%})"])
    name = "ngram" if suite == "small" else f"ngram_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    table = markdown_table(["dataset", "arm", "final val loss", "val ppl", "first step at off's final val loss"], rows)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# n-gram soft targets ({suite} suite)\n\n{table}\nThe first step is found at eval resolution "
                "(config/ngram/*.py's eval_interval). The cost of each target is in `python bench.py --all`.\n")
    plot(runs, os.path.join(results_dir, f"{name}.png"))
    print(table)


def plot(runs, path):
    """One panel per dataset, one validation-loss curve per arm."""
    fig, axes = new_figure(1, columns=len(runs), width=6, height=4.5)
    for ax, (dataset, arms) in zip(axes, runs.items()):
        draw_curves(ax, {arm: series(records, "val_loss") for arm, records in arms.items()}, dataset,
                    "validation loss (nats/token)")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
