"""
The planner experiment on wiki: does conditioning on a sentence plan lower validation perplexity, and does
end-to-end ('soft') fine-tuning of the planner beat the argmax ('hard') of paper 1?

Stages (each a command; finished ones are skipped when the suite runs again):
  1. base LM, plain GPT                          python train.py config/planner/small.py
  2. planner pre-training on the labels          python planner.py config/planner/pretrain.py
  3. frozen base + adapters on the planner's argmax labels ('hard'), from 1 and 2
  4. joint fine-tuning in 'soft' or 'st' (and 'hard' again, the control) from 3
Controls from 1 with the same number of steps after the base as 3 + 4: 'fixed' (label 0 everywhere: the extra
parameters without a plan), 'uniform' (the mean label embedding: the soft control), 'oracle' (the true label of
the sentence being written: an upper bound that sees the future). 'none' is the base itself: with the LM frozen
and no plan there is nothing to train.

    OMP_NUM_THREADS=1 python experiments/planner.py [small|gpu]
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch

from data.common import ensure_prepared
from experiments.common import ROOT, markdown_table, plot_curves, read_log, train_arm
from planner import Planner, PlanData, evaluate_planner

SUITES = {
    "small": dict(config="config/planner/small.py", base_iters=800, planner_iters=1000, stage_iters=100),
    "gpu": dict(config="config/planner/gpu.py", base_iters=5000, planner_iters=3000, stage_iters=1000),
}
ARMS = {  # arm -> what position t is conditioned on
    "none": "nothing (the base LM)",
    "fixed": "label 0 (a learned constant)",
    "uniform": "the mean label embedding",
    "hard": "the planner's argmax label (paper 1)",
    "st": "argmax forward, softmax gradient",
    "soft": "the planner's label distribution (paper 2)",
    "oracle": "the true label of the sentence being written (sees the future)",
}


def run(suite, results_dir):
    cfg = SUITES[suite]
    out = os.path.join(ROOT, f"out-planner-{suite}")
    stage = cfg["stage_iters"]
    base = train_arm(f"{out}/base", [cfg["config"]], cfg["base_iters"])
    planner = pretrain_planner(f"{out}/planner", cfg["planner_iters"])
    tune = [cfg["config"], "config/planner/tune.py"]
    from_base = tune + [f"--init_from={out}/base/ckpt.pt"]
    runs = {"none": [dict(base[-1], iter=0), dict(base[-1], iter=2 * stage)]}
    for mode in ("fixed", "uniform", "oracle"):
        runs[mode] = train_arm(f"{out}/{mode}", from_base + [f"--plan_mode={mode}"], 2 * stage)
    stage3 = train_arm(f"{out}/hard_stage3", from_base + ["--plan_mode=hard",
                                                          f"--plan_init_planner={out}/planner/planner.pt"], stage)
    for mode in ("hard", "st", "soft"):
        stage4 = train_arm(f"{out}/{mode}", tune + [f"--init_from={out}/hard_stage3/ckpt.pt", f"--plan_mode={mode}"],
                           stage)
        runs[mode] = stage3 + [dict(r, iter=r["iter"] + stage) for r in stage4[1:]]

    rows = []
    for arm, what in ARMS.items():
        last = runs[arm][-1]
        scores = planner_scores(f"{out}/{arm}/ckpt.pt") if arm in ("hard", "st", "soft") else None
        acc, top5 = (f"{scores['val_plan_acc']:.3f}", f"{scores['val_plan_top5']:.3f}") if scores else ("-", "-")
        rows.append([arm, what, f"{last['val_ppl']:.2f}", f"{last['val_loss']:.4f}", acc, top5])
    os.makedirs(results_dir, exist_ok=True)
    table = markdown_table(["arm", "position t is conditioned on", "val ppl", "val loss", "planner acc",
                            "planner top-5"], rows)
    note = (f"\nBase LM: {cfg['base_iters']} steps ({cfg['config']}); every other arm then trains {2 * stage} steps "
            f"with the base frozen ('hard', 'st', 'soft': {stage} in 'hard' then {stage} in their mode). Planner "
            f"accuracy is over every validation sentence: the pre-trained planner ({cfg['planner_iters']} steps) "
            f"scores {planner['val_plan_acc']:.3f} (top-5 {planner['val_plan_top5']:.3f}); "
            f"always answering the most frequent train label scores {planner['val_majority_acc']:.3f}. 'oracle' is an "
            "upper bound, not a language model: it reads the label of the sentence it is predicting.\n")
    with open(os.path.join(results_dir, f"planner{'' if suite == 'small' else '_' + suite}.md"), "w") as f:
        f.write(f"# Planner on wiki ({suite} suite)\n\n" + table + note)
    plot_curves(runs, os.path.join(results_dir, f"planner{'' if suite == 'small' else '_' + suite}.png"),
                f"sentence planner on wiki ({suite}): steps after the base LM")
    print(table + note)


def planner_scores(checkpoint_path):
    """Accuracy and top-5 of the planner inside a train.py checkpoint, over every validation sentence."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    s = checkpoint["config"]
    data = PlanData(ensure_prepared(s["dataset"]), s["plan_k"], s["plan_embedder"], s["plan_seed"])
    planner = Planner(s["plan_k"], data.centroids.size(1), s["plan_context"])
    planner.load_state_dict({k[len("plan.planner."):]: v for k, v in checkpoint["model"].items()
                             if k.startswith("plan.planner.")})
    return evaluate_planner(planner, data, s["plan_context"])


def pretrain_planner(out_dir, max_iters):
    """Stage 2, skipped when out_dir already holds a finished planner; returns its final validation record."""
    records = read_log(out_dir)
    if not (records and records[-1]["iter"] >= max_iters and os.path.isfile(f"{out_dir}/planner.pt")):
        command = [sys.executable, os.path.join(ROOT, "planner.py"), "config/planner/pretrain.py",
                   f"--out_dir={out_dir}", f"--max_iters={max_iters}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        records = read_log(out_dir)
    return records[-1]


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
