"""
Plain vs all three: the default run of train.py (shakespeare_char, n-gram targets + depth ensemble + planner) next
to the same model and steps with every technique off (config/plain.py), and with each technique alone, same seed
and batches. The ensemble is also run with k = 3, which the default avoids (see the table).

    python experiments/combined.py [small|gpu]

Writes results/combined{,_gpu}.md and results/combined{,_gpu}.png, and each arm's final validation loss and
perplexity to results/combined{,_gpu}.json (the main job, `python train.py`, prints its own beside the plain one).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.common import ROOT, markdown_table, plot_curves, train_arm

SUITES = {
    "small": dict(args=[], max_iters=3000),
    "gpu": dict(args=["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=256", "--batch_size=64",
                      "--dropout=0.2", "--learning_rate=6e-4", "--min_lr=6e-5", "--eval_interval=250"],
                max_iters=5000),
}
# train_arm starts every arm from config/plain.py; the flags are train.py's defaults for each technique.
NGRAM, MOD, PLANNER = ["--ngram_mode=compact"], ["--mod_k=2"], ["--plan_mode=soft", "--plan_lambda=1.0"]
ARMS = {"plain": [], "n-gram targets alone": NGRAM, "ensemble alone (k=2)": MOD,
        "ensemble alone (k=3)": ["--mod_k=3"], "planner alone (soft)": PLANNER,
        "all three (the default run)": NGRAM + MOD + PLANNER}


def run(suite, results_dir):
    plan = SUITES[suite]
    runs = {arm: train_arm(os.path.join(ROOT, "out", f"combined-{suite}", str(i)), [*flags, *plan["args"]],
                           plan["max_iters"])
            for i, (arm, flags) in enumerate(ARMS.items())}
    plain = runs["plain"][-1]["val_loss"]
    rows = [[arm, f"{r[-1]['val_loss']:.4f}", f"{r[-1]['val_loss'] - plain:+.4f}", f"{r[-1]['val_ppl']:.2f}",
             f"{r[-1]['trainable_params']:,}", f"{r[-1]['elapsed_s']:.0f}"] for arm, r in runs.items()]
    table = markdown_table(["arm", "val loss", "vs plain", "val ppl", "trainable params", "training seconds"], rows)
    name = "combined" if suite == "small" else f"combined_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# Plain vs all three techniques ({suite} suite, shakespeare_char, {plan['max_iters']} steps)\n\n"
                f"{table}\ntraining seconds: training time without evaluations, on the machine and load of the run.\n")
    with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
        json.dump({arm: {k: r[-1][k] for k in ("val_loss", "val_ppl")} for arm, r in runs.items()}, f, indent=1)
    plot_curves(runs, os.path.join(results_dir, f"{name}.png"), "shakespeare_char: plain vs all three")
    print(table)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
