"""
The planner in the papers' recipe, on wiki: a base LM trained first, then frozen while adapters (and the planner)
learn to condition it. Does conditioning on a sentence plan lower validation loss, does end-to-end ('soft')
fine-tuning of the planner beat the argmax ('hard') of paper 1, and do labels from a real sentence encoder (MiniLM)
do better than LSA's? Its ceiling is the 'oracle' arm (the true label of the sentence being written): at this scale
it moves the frozen LM by less than a thousandth of a nat, so this recipe cannot judge a planner here;
tools/experiments/planner.py is the setting whose ceiling resolves.

Stages (each a command; finished ones are skipped when the suite runs again):
  1. base LM, plain GPT                          python train.py config/plain.py config/planner/small.py
  2. planner pre-training on the labels          python -m tools.pretrain_planner config/planner/pretrain.py
  3. base LM frozen + adapters on the pre-trained planner's argmax labels ('hard'), from 1 and 2
  4. fine-tuning in 'soft' (the planner trains through its distribution) or 'hard' again, from 3's best checkpoint
Controls from 1 with the same steps after the base as 3 + 4: 'uniform' (the mean label embedding: the extra
parameters without a plan, the soft control), 'oracle' (the ceiling) and 'none' (the base itself).
The base LM stays frozen in 3 and 4, as the paper freezes its pretrained GPT-2, with the authors' recipe
(config/planner/tune.py). Stages 1 and 2 are shared; stages 3 and 4 run with every seed, for each label set (LSA,
MiniLM).

    python -m tools.experiments.planner_frozen [small|gpu]   # results/planner_frozen{,_gpu}.md and .png
"""

import os
import subprocess
import sys

from data.prepare import ensure_prepared
from data.sentences import PlanData
from training import checkpoint as ckpt
from tools.experiments.common import (ROOT, SEEDS, VERDICT_NOTE, markdown_table, paired_columns, plot_curves, read_log,
                                      read_score, share_of_ceiling, train_arm)
from planner import Planner
from tools.pretrain_planner import evaluate_planner

SUITES = {
    "small": dict(config="config/planner/small.py", base_iters=800, planner_iters=1000, stage_iters=100),
    "gpu": dict(config="config/planner/gpu.py", base_iters=5000, planner_iters=3000, stage_iters=1000),
}
ARMS = {  # arm -> what position t is conditioned on
    "none": "nothing (the base LM)",
    "uniform": "the mean label embedding",
    "hard": "the planner's argmax label (paper 1)",
    "soft": "the planner's label distribution (paper 2)",
    "oracle": "the true label of the sentence being written (the ceiling)",
}
EMBEDDERS = {"lsa": "LSA", "minilm": "MiniLM"}


def run(suite, results_dir):
    cfg = SUITES[suite]
    out = os.path.join(ROOT, "out", f"planner-{suite}")
    stage = cfg["stage_iters"]
    train_arm(f"{out}/base", [cfg["config"]], cfg["base_iters"])
    rows, curves = [], {}
    for embedder, name in EMBEDDERS.items():
        planner = pretrain_planner(f"{out}/planner_{embedder}", cfg["planner_iters"], embedder)
        tune = [cfg["config"], "config/planner/tune.py", f"--plan_embedder={embedder}"]
        scores, accuracy = {"none": [read_score(f"{out}/base")["val_loss"]] * len(SEEDS)}, {}
        for arm in [a for a in ARMS if a != "none"]:
            per_seed = [train_arms(out, embedder, tune, arm, stage, seed) for seed in SEEDS]
            curves[f"{name} {arm}"] = [records for records, _ in per_seed]
            scores[arm] = [read_score(best_dir)["val_loss"] for _, best_dir in per_seed]
            if arm in ("hard", "soft"):
                accuracy[arm] = sum(planner_scores(f"{d}/best.pt")["val_plan_acc"] for _, d in per_seed) / len(SEEDS)
        for arm, what in ARMS.items():
            rows.append([name, arm, what, *paired_columns(scores[arm], scores["none"]),
                         share_of_ceiling(scores[arm], scores["none"], scores["oracle"]) if arm != "none" else "-",
                         paired_columns(scores[arm], scores["uniform"])[1] if arm in ("hard", "soft") else "-",
                         f"{accuracy[arm]:.3f}" if arm in accuracy else "-", f"{planner['val_majority_acc']:.3f}"])
        rows.append([name, "(pre-trained planner)", "", "", "", "", "", "", f"{planner['val_plan_acc']:.3f}",
                     f"{planner['val_majority_acc']:.3f}"])
    header = ["labels", "arm", "position t is conditioned on", "val loss", "vs none", "verdict",
              "share of the oracle's gain", "vs uniform", "planner acc", "majority acc"]
    note = (f"\nBase LM: {cfg['base_iters']} steps ({cfg['config']}), shared. Each other arm trains {2 * stage} more "
            f"steps from it with the base LM frozen (config/planner/tune.py), in two runs of {stage} ('hard' and "
            "'soft' share their first, in 'hard', from the planner pre-trained on the labels for "
            f"{cfg['planner_iters']} steps); the second starts from the first's best checkpoint, and its best "
            "(best.pt) is scored. 'none' is the base itself. Planner accuracy is over every validation sentence "
            "(mean over seeds for 'hard' and 'soft'); 'majority acc' is always answering the most frequent train "
            f"label. {VERDICT_NOTE}\n")
    name = "planner_frozen" if suite == "small" else f"planner_frozen_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    plot_curves(curves, os.path.join(results_dir, f"{name}.png"),
                f"sentence planner on wiki ({suite}): steps after the base LM")
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(f"# Planner in the papers' recipe on wiki ({suite} suite, base LM frozen in stages 3-4)\n\n"
                + markdown_table(header, rows) + note)
    print(markdown_table(header, rows) + note)


def train_arms(suite_dir, embedder, tune, arm, stage, seed):
    """One arm of one seed and label set, from the base LM in suite_dir; returns its log records, iterations
    counted from the base, and the folder of the run whose best.pt is its result. Every arm is two runs of `stage`
    steps, so each restarts its optimizer once: a control runs twice in its own mode; 'hard' and 'soft' share a
    first run in 'hard' (stage 3). The second run starts from the first's best checkpoint."""
    out = f"{suite_dir}/seed{seed}/{embedder}"
    first = "hard" if arm in ("hard", "soft") else arm
    planner = [f"--plan_init_planner={suite_dir}/planner_{embedder}/planner.pt"] if first == "hard" else []
    stage3 = train_arm(f"{out}/{first}_stage3", tune + [f"--init_from={suite_dir}/base/ckpt.pt",
                                                         f"--plan_mode={first}", *planner], stage, seed, score=False)
    stage4 = train_arm(f"{out}/{arm}", tune + [f"--init_from={out}/{first}_stage3/best.pt", f"--plan_mode={arm}"],
                       stage, seed)
    return stage3 + [dict(r, iter=r["iter"] + stage) for r in stage4[1:]], f"{out}/{arm}"


def planner_scores(checkpoint_path):
    """Accuracy and top-5 of the planner inside a train.py checkpoint (ckpt.pt or best.pt), over every validation
    sentence."""
    checkpoint = ckpt.load(checkpoint_path)
    s = checkpoint["config"]
    data = PlanData(ensure_prepared(s["dataset"]), s["plan_k"], s["plan_embedder"], s["plan_seed"])
    planner = Planner(s["plan_k"], data.centroids.size(1), s["plan_context"])
    planner.load_state_dict({k[len("plan.planner."):]: v for k, v in checkpoint["model"].items()
                             if k.startswith("plan.planner.")})
    return evaluate_planner(planner, data, s["plan_context"])


def pretrain_planner(out_dir, max_iters, embedder):
    """Stage 2 on one label set, skipped when out_dir already holds a finished planner; returns its final
    validation record."""
    records = read_log(out_dir)
    if not (records and records[-1]["iter"] >= max_iters and os.path.isfile(f"{out_dir}/planner.pt")):
        command = [sys.executable, os.path.join(ROOT, "tools/pretrain_planner.py"), "config/planner/pretrain.py",
                   f"--out_dir={out_dir}", f"--max_iters={max_iters}", f"--plan_embedder={embedder}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        records = read_log(out_dir)
    return records[-1]


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
