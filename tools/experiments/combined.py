"""
The techniques taken apart: which one does a gain come from, and which mix is best? On the main job's settings
(`python train.py`: shakespeare_char, 4 layers, 128 wide, 3000 steps), over paired seeds, eight arms: the plain GPT
(config/plain.py), each technique alone, all three, and all three but each one. The main job is 'all but depth
ensemble' since this table's five-seed sequel (tools/experiments/ensemble_seeds.py) found the ensemble hurts there.

    python -m tools.experiments.combined [small|gpu]

Writes results/combined{,_gpu}.md, a .png of each arm's gain over the plain GPT, and each arm's validation loss (per
seed and mean) to results/combined{,_gpu}.json, which the main job prints its own result beside.
"""

import json
import math
import os
import sys

from tools.experiments.common import (MAIN_JOB_ITERS, ROOT, SEEDS, TECHNIQUES, VERDICT_NOTE, main_job_dir,
                                      markdown_table, mean_sd, paired_columns, per_seed, plot_gains, read_score,
                                      train_arm)

SUITES = {
    "small": dict(args=[], max_iters=MAIN_JOB_ITERS),
    "gpu": dict(args=["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=256", "--batch_size=64",
                      "--dropout=0.2", "--learning_rate=6e-4", "--min_lr=6e-5", "--eval_interval=250"],
                max_iters=5000),
}
ALL = "all three"
MAIN_JOB = "all but depth ensemble"  # what python train.py runs
ARMS = {"plain": [], **{f"{name} alone": [name] for name in TECHNIQUES}, ALL: list(TECHNIQUES),
        **{f"all but {name}": [other for other in TECHNIQUES if other != name] for name in TECHNIQUES}}


STORED = os.path.join(ROOT, "results", "combined.json")  # what run() writes for the small suite


def stored_scores():
    """Each arm's stored validation loss, per seed and mean ({arm: {"seeds": {seed: loss}, ...}}): the main job's
    closing line, the GPU check and the experiments that reuse these runs read them."""
    with open(STORED) as f:
        return json.load(f)


def arm_flags(techniques):
    return [flag for name in techniques for flag in TECHNIQUES[name]]


def run(suite, results_dir):
    plan = SUITES[suite]
    runs, scores = {}, {}
    for arm, techniques in ARMS.items():
        dirs = [main_job_dir(arm, seed, suite) for seed in SEEDS]
        runs[arm] = [train_arm(d, [*arm_flags(techniques), *plan["args"]], plan["max_iters"], seed)
                     for d, seed in zip(dirs, SEEDS)]
        scores[arm] = [read_score(d) for d in dirs]
    table = report(runs, scores)
    name = "combined" if suite == "small" else f"combined_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# The techniques taken apart ({suite} suite, shakespeare_char, {plan['max_iters']} steps)\n\n"
                f"{table}\n{VERDICT_NOTE} Training seconds: without evaluations, on the machine and load of the "
                "run. Routing and the ensemble's ceiling (the per-token best late layer, chosen in hindsight) are "
                "means over seeds on the same validation split; 'router's share' is (final layer alone - mixture) / "
                "(final layer alone - ceiling), per seed. 'plan gain' is how much the loss rises when each sentence "
                "is conditioned on another sentence's plan.\n")
    with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
        json.dump({arm: {"val_loss": mean_sd(per_seed(s))[0], "val_ppl": math.exp(mean_sd(per_seed(s))[0]),
                         "seeds": dict(zip(map(str, SEEDS), per_seed(s)))} for arm, s in scores.items()}, f, indent=1)
    plot_gains({arm: per_seed(s) for arm, s in scores.items()}, "plain", os.path.join(results_dir, f"{name}.png"),
               "shakespeare_char: the techniques taken apart")
    print(table)


def report(runs, scores):
    losses = {arm: per_seed(s) for arm, s in scores.items()}
    rows = []
    for arm in ARMS:
        label = arm + (" (the main job)" if arm == MAIN_JOB else "")
        rows.append([label, *paired_columns(losses[arm], losses["plain"]),
                     *paired_columns(losses[arm], losses[ALL])[1:], f"{math.exp(mean_sd(losses[arm])[0]):.2f}",
                     ensemble_cells(scores[arm]), planner_cells(scores[arm]),
                     f"{runs[arm][0][-1]['trainable_params']:,}",
                     f"{sum(r[-1]['elapsed_s'] for r in runs[arm]) / len(SEEDS):.0f}"])
    return markdown_table(["arm", "val loss", "vs plain", "verdict", "vs all three", "verdict", "val ppl",
                           "ensemble: routing / final layer alone / ceiling / router's share",
                           "planner: accuracy / majority / plan gain", "trainable params",
                           "training seconds per seed"], rows)


def ensemble_cells(scores):
    if "val_best_layer_ce" not in scores[0]:
        return "-"
    routes = sorted(k for k in scores[0] if k.startswith("val_route"))
    final = max((k for k in scores[0] if k.startswith("val_layer") and k.endswith("_ce")),
                key=lambda k: int(k[len("val_layer"):-len("_ce")]))
    mean = {k: mean_sd(per_seed(scores, k))[0] for k in [*routes, final, "val_best_layer_ce"]}
    shares = [(s[final] - s["val_loss"]) / (s[final] - s["val_best_layer_ce"]) for s in scores]
    share, sd = mean_sd(shares)
    return (f"{' / '.join(f'{mean[k]:.2f}' for k in routes)} / {mean[final]:.4f} / {mean['val_best_layer_ce']:.4f} / "
            f"{100 * share:.0f}% ± {100 * sd:.0f}%")


def planner_cells(scores):
    if "val_plan_acc" not in scores[0]:
        return "-"
    acc, majority, gain = (mean_sd(per_seed(scores, k))[0] for k in ("val_plan_acc", "val_plan_majority_acc",
                                                                      "val_plan_gain"))
    return f"{acc:.3f} / {majority:.3f} / {gain:+.4f}"


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
