"""
Plain vs all three: the main job (`python train.py`: shakespeare_char, n-gram targets + depth ensemble + planner)
next to the same model, steps and batches with every technique off (config/plain.py), over paired seeds.

    python experiments/combined.py [small|gpu]

Writes results/combined{,_gpu}.md and .png, and each arm's validation loss and perplexity (mean over seeds) to
results/combined{,_gpu}.json, which the main job prints its own beside. Each technique alone is measured by its own
experiment (ngram, mod, planner).
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.common import (ROOT, SEEDS, VERDICT_NOTE, markdown_table, mean_sd, paired_columns, plot_curves,
                                read_score, train_arm)

SUITES = {
    "small": dict(args=[], max_iters=3000),
    "gpu": dict(args=["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=256", "--batch_size=64",
                      "--dropout=0.2", "--learning_rate=6e-4", "--min_lr=6e-5", "--eval_interval=250"],
                max_iters=5000),
}
# train_arm starts every arm from config/plain.py; the flags switch train.py's defaults for each technique back on.
ARMS = {"plain": [], "all three (the main job)": ["--ngram_mode=compact", "--mod_k=2", "--plan_mode=soft",
                                                  "--plan_lambda=1.0"]}


# The table of plain vs all three on the main job's settings, and the command that writes it.
RESULTS = os.path.join(ROOT, "results", "combined.json")
COMMAND = "python experiments/run.py --suite small --only combined"


def beside_plain(val_ppl, results_path=RESULTS):
    """The main job's validation perplexity on the whole split beside the plain GPT's (mean over seeds) from the
    results this experiment wrote, or the command that writes them."""
    mine = f"validation perplexity {val_ppl:.2f} (whole split) with all three techniques"
    if not os.path.isfile(results_path):
        return f"{mine}; for the plain GPT's on the same settings, run `{COMMAND}` (it writes {results_path})"
    with open(results_path) as f:
        plain = json.load(f)["plain"]["val_ppl"]
    return (f"{mine}; the plain GPT on the same settings: {plain:.2f}, mean over seeds ({results_path}, from "
            f"`{COMMAND}`)")


def run(suite, results_dir):
    plan = SUITES[suite]
    out = os.path.join(ROOT, "out", f"combined-{suite}")
    runs = {arm: [train_arm(os.path.join(out, f"seed{seed}", str(i)), [*flags, *plan["args"]], plan["max_iters"],
                            seed) for seed in SEEDS]
            for i, (arm, flags) in enumerate(ARMS.items())}
    scores = {arm: [read_score(os.path.join(out, f"seed{seed}", str(i)))["val_loss"] for seed in SEEDS]
              for i, arm in enumerate(ARMS)}
    rows = [[arm, *paired_columns(losses, scores["plain"]), f"{math.exp(mean_sd(losses)[0]):.2f}",
             f"{runs[arm][0][-1]['trainable_params']:,}",
             f"{sum(r[-1]['elapsed_s'] for r in runs[arm]) / len(SEEDS):.0f}"]
            for arm, losses in scores.items()]
    table = markdown_table(["arm", "val loss", "vs plain", "verdict", "val ppl", "trainable params",
                            "training seconds per seed"], rows)
    name = "combined" if suite == "small" else f"combined_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# Plain vs all three techniques ({suite} suite, shakespeare_char, {plan['max_iters']} steps)\n\n"
                f"{table}\n{VERDICT_NOTE} Training seconds: without evaluations, on the machine and load of the "
                "run.\n")
    with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
        json.dump({arm: {"val_loss": mean_sd(losses)[0], "val_ppl": math.exp(mean_sd(losses)[0]),
                         "seeds": dict(zip(map(str, SEEDS), losses))} for arm, losses in scores.items()}, f, indent=1)
    plot_curves(runs, os.path.join(results_dir, f"{name}.png"), "shakespeare_char: plain vs all three")
    print(table)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
