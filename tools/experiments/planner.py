"""
The planner where a plan can be seen to help: the main job's settings (shakespeare_char, 4 layers, 128 wide, 3000
steps, LM and planner trained together from the start), over paired seeds. Every arm is scored against the
ceiling of its labels, 'oracle' (the true label of the sentence being written: what a perfect planner would give).

    python -m tools.experiments.planner [small|gpu]      # results/planner{,_gpu}.md and .png

1. The papers' comparison: none (the plain GPT), uniform (the mean label embedding: the adapters without a plan),
   hard (paper 1: the planner's argmax; only its own cross-entropy trains it), st (straight-through), soft (paper 2:
   the planner's distribution, so the LM loss trains the planner too), oracle. Every planner arm also learns its
   labels (plan_lambda = 1), as the main job does: a planner trained from scratch needs it.
2. From a pre-trained planner: the papers' LM-loss-only training (plan_lambda = 0), the setting in which a planner
   drifts off its labels, and the same start with its labels' loss kept, each judged by its share of the oracle.
'none' and 'soft' are the main job's 'plain' and 'planner alone' arms (tools/experiments/combined.py): same folders.
"""

import os
import subprocess
import sys

from tools.experiments.common import (MAIN_JOB_ITERS, ROOT, SEEDS, VERDICT_NOTE, main_job_dir, markdown_table, mean_sd,
                                      paired_columns, per_seed, plot_gains, read_log, read_score, share_of_ceiling,
                                      train_arm, verdict)

SUITES = {
    "small": dict(args=[], max_iters=MAIN_JOB_ITERS, planner_iters=2000),
    "gpu": dict(args=["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=256", "--batch_size=64",
                      "--dropout=0.2", "--learning_rate=6e-4", "--min_lr=6e-5", "--eval_interval=250"],
                max_iters=5000, planner_iters=5000),
}
PLANNER = ["--plan_lambda=1.0"]  # what every planner arm adds to its mode
ARMS = {  # arm -> (flags, what position t is conditioned on)
    "none": ([], "nothing (the plain GPT)"),
    "uniform": (["--plan_mode=uniform"], "the mean label embedding (the adapters without a plan)"),
    "fixed": (["--plan_mode=fixed"], "one learned label embedding (paper 1's FIX: the adapters, a constant plan)"),
    "hard": (["--plan_mode=hard", *PLANNER], "the planner's argmax label (paper 1)"),
    "st": (["--plan_mode=st", *PLANNER], "argmax forward, the softmax's gradient backward"),
    "soft": (["--plan_mode=soft", *PLANNER], "the planner's label distribution (paper 2)"),
    "oracle": (["--plan_mode=oracle"], "the true label of the sentence being written (the ceiling)"),
}
SHARED = {"none": "plain", "soft": "planner alone"}  # arms that are the main job's (tools/experiments/combined.py)
PRETRAINED = "--plan_init_planner={pretrained}"  # filled in with the stage-2 planner of the main job's labels
VARIANTS = {  # variant -> the flags of its soft arm beyond ARMS["soft"]
    # The papers' joint training: the LM loss alone moves a pre-trained planner. Does it leave its labels, and is
    # that a failure (the LM worse off) or a code the LM reads (the health warning's decision, docs/planner.md)?
    "pre-trained planner, LM loss only (paper 2)": [PRETRAINED, "--plan_lambda=0.0"],
    # The same start with the labels' loss kept (plan_lambda = 1): separates the pre-training from the LM-loss-only
    # training.
    "pre-trained planner, labels kept": [PRETRAINED],
}


def run(suite, results_dir):
    plan = SUITES[suite]
    scores = {}
    for arm, (flags, _) in ARMS.items():
        scores[arm] = train_over_seeds(arm, flags, suite, plan)
    variant_rows = []
    for variant, flags in VARIANTS.items():
        flags = [f.format(pretrained=pretrained_planner(suite, plan)) for f in flags]
        scores[variant] = train_over_seeds(variant, [*ARMS["soft"][0], *flags], suite, plan)
        variant_rows.append(variant_row(variant, scores[variant], scores["oracle"], scores["none"]))
    write_report(suite, results_dir, plan, scores, variant_rows)


def train_over_seeds(arm, flags, suite, plan):
    """An arm's scores for every seed (the main job's folders for the arms it shares)."""
    dirs = [main_job_dir(SHARED.get(arm, f"planner {arm}"), seed, suite) for seed in SEEDS]
    for d, seed in zip(dirs, SEEDS):
        train_arm(d, [*flags, *plan["args"]], plan["max_iters"], seed)
    return [read_score(d) for d in dirs]


def pretrained_planner(suite, plan):
    """Stage 2 on the main job's labels (tools/pretrain_planner.py, skipped when done); the path of its planner.pt."""
    out_dir = os.path.join(ROOT, "out", "main-job" if suite == "small" else f"main-job-{suite}", "planner")
    records = read_log(out_dir)
    if not (records and records[-1]["iter"] >= plan["planner_iters"] and os.path.isfile(f"{out_dir}/planner.pt")):
        command = [sys.executable, "-m", "tools.pretrain_planner", "--dataset=shakespeare_char",
                   f"--out_dir={out_dir}", f"--max_iters={plan['planner_iters']}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return os.path.join(out_dir, "planner.pt")


def planner_cells(scores):
    """Planner accuracy / the majority label's / plan gain, means over seeds, or '-' for an arm without a planner."""
    if "val_plan_acc" not in scores[0]:
        return ["-", "-", f"{mean_sd(per_seed(scores, 'val_plan_gain'))[0]:+.4f}" if "val_plan_gain" in scores[0]
                else "-"]
    return [f"{mean_sd(per_seed(scores, k))[0]:{fmt}}" for k, fmt in (
        ("val_plan_acc", ".3f"), ("val_plan_majority_acc", ".3f"), ("val_plan_gain", "+.4f"))]


def variant_row(variant, soft, oracle, none):
    losses = per_seed(soft)
    return [variant, *paired_columns(losses, per_seed(none)),
            share_of_ceiling(losses, per_seed(none), per_seed(oracle)), *planner_cells(soft)]


def write_report(suite, results_dir, plan, scores, variant_rows):
    losses = {arm: per_seed(s) for arm, s in scores.items()}
    rows = [[arm, what, *paired_columns(losses[arm], losses["none"]),
             share_of_ceiling(losses[arm], losses["none"], losses["oracle"]) if arm != "none" else "-",
             paired_columns(losses[arm], losses["uniform"])[1] if arm not in ("none", "uniform") else "-",
             *planner_cells(scores[arm])] for arm, (_, what) in ARMS.items()]
    comparisons = [("soft", "hard"), ("hard", "uniform"), ("st", "hard"), ("soft", "uniform"), ("oracle", "uniform")]
    verdicts = "".join(f"- {a} vs {b}: {paired_columns(losses[a], losses[b])[1]}, "
                       f"{verdict([x - y for x, y in zip(losses[a], losses[b])])}\n" for a, b in comparisons)
    table = markdown_table(["arm", "position t is conditioned on", "val loss", "vs none", "verdict",
                            "share of the oracle's gain", "vs uniform", "planner acc", "majority acc", "plan gain"],
                           rows)
    variants = markdown_table(["soft, changed", "val loss", "vs none", "verdict", "share of the oracle's gain",
                               "planner acc", "majority acc", "plan gain"], variant_rows)
    name = "planner" if suite == "small" else f"planner_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# The planner on the main job's settings ({suite} suite, shakespeare_char, {plan['max_iters']} "
                f"steps, LM and planner trained together)\n\n{table}\n{verdicts}\n"
                f"## From a pre-trained planner: the LM loss alone (the papers' joint training), or its labels kept\n\n"
                f"{variants}\n"
                f"{VERDICT_NOTE} 'Share of the oracle's gain' is (none - arm) / (none - oracle) per seed, mean ± sd. "
                "Planner accuracy is on the validation split's sentences, beside always answering the most frequent "
                "train label; 'plan gain' is how much the validation loss rises when each sentence is conditioned on "
                "another sentence's plan: what the LM reads from its own plan.\n")
    plot_gains(losses, "none", os.path.join(results_dir, f"{name}.png"),
               f"the planner on shakespeare_char ({suite} suite)")
    print(table + verdicts + variants)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
