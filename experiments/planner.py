"""
The planner experiment on wiki: does conditioning on a sentence plan lower validation perplexity, and does
end-to-end ('soft') fine-tuning of the planner beat the argmax ('hard') of paper 1?

Stages (each a command; finished ones are skipped when the suite runs again):
  1. base LM, plain GPT                          python train.py config/plain.py config/planner/small.py
  2. planner pre-training on the labels          python pretrain_planner.py config/planner/pretrain.py
  3. base LM + adapters on the pre-trained planner's argmax labels ('hard'), from 1 and 2
  4. joint fine-tuning in 'soft' or 'st' (and 'hard' again, the control) from 3
Controls from 1 with the same number of steps after the base as 3 + 4: 'fixed' (label 0 everywhere: the extra
parameters without a plan), 'uniform' (the mean label embedding: the soft control), 'oracle' (the true label of
the sentence being written: an upper bound that sees the future), 'none' (no plan). Stages 3 and 4 run with the
base LM frozen ('frozen'), as the paper freezes its pretrained GPT-2 ('none' is then the base itself), and, in the
gpu suite, again with the LM trained too ('joint'), since a base trained briefly is far from converged. The small
suite runs only 'frozen' to stay within its hour on 2 cores: at its scale every 'joint' arm ends within 0.001 nats
of the others (docs/planner.md), so that variant resolves nothing there; name it to run it anyway.

    python experiments/planner.py [small|gpu] [frozen] [joint]   # results/planner_<variant>{,_gpu}.md and .png
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch

from data.common import ensure_prepared
from data.sentences import PlanData
from experiments.common import ROOT, markdown_table, plot_curves, read_log, train_arm
from planner import Planner
from pretrain_planner import evaluate_planner

SUITES = {
    "small": dict(config="config/planner/small.py", base_iters=800, planner_iters=1000, stage_iters=100,
                  variants=["frozen"]),
    "gpu": dict(config="config/planner/gpu.py", base_iters=5000, planner_iters=3000, stage_iters=1000,
                variants=["frozen", "joint"]),
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


VARIANTS = {  # how stages 3 and 4 treat the base LM
    "frozen": "config/planner/tune.py",  # as the paper, which freezes a pretrained GPT-2
    "joint": "config/planner/tune_lm.py",  # the LM trains too: here the base is small and far from converged
}


def run(suite, results_dir, variants=None):
    cfg = SUITES[suite]
    out = os.path.join(ROOT, "out", f"planner-{suite}")
    stage = cfg["stage_iters"]
    base = train_arm(f"{out}/base", [cfg["config"]], cfg["base_iters"])
    planner = pretrain_planner(f"{out}/planner", cfg["planner_iters"])
    for variant in variants or cfg["variants"]:
        runs, bests = train_arms(f"{out}/{variant}", [cfg["config"], VARIANTS[variant]], base, stage,
                                 variant == "frozen")
        rows = []
        for arm, what in ARMS.items():
            best = bests[arm]
            scores = planner_scores(f"{out}/{variant}/{arm}/best.pt") if arm in ("hard", "st", "soft") else None
            acc, top5 = (f"{scores['val_plan_acc']:.3f}", f"{scores['val_plan_top5']:.3f}") if scores else ("-", "-")
            rows.append([arm, what, f"{best['val_ppl']:.2f}", f"{best['val_loss']:.4f}", acc, top5])
        table = markdown_table(["arm", "position t is conditioned on", "val ppl", "val loss", "planner acc",
                                "planner top-5"], rows)
        lm = f"{'frozen' if variant == 'frozen' else 'trained too'} ({VARIANTS[variant]})"
        note = (f"\nBase LM: {cfg['base_iters']} steps ({cfg['config']}); every other arm then trains {2 * stage} "
                f"more steps from it on the same batches, in two runs of {stage} ('hard', 'st', 'soft': the first in "
                f"'hard'), with the base LM {lm}; the second run starts from the first's checkpoint with the best "
                f"validation loss, and the table shows the second's best (best.pt). 'none' is "
                f"{'the base itself' if variant == 'frozen' else 'its plain continuation'}. Planner accuracy is over "
                f"every validation sentence: the pre-trained planner ({cfg['planner_iters']} steps) scores "
                f"{planner['val_plan_acc']:.3f} (top-5 {planner['val_plan_top5']:.3f}); always answering the most "
                f"frequent train label scores {planner['val_majority_acc']:.3f}. 'oracle' is an upper bound, not a "
                "language model: it reads the label of the sentence it is predicting.\n")
        name = f"planner_{variant}{'' if suite == 'small' else '_' + suite}"
        plot_curves(runs, os.path.join(results_dir, f"{name}.png"),
                    f"sentence planner on wiki ({suite}, LM {variant}): steps after the base LM")
        with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
            f.write(f"# Planner on wiki ({suite} suite, LM {variant} in stages 3-4)\n\n" + table + note)
        print(table + note)


def train_arms(out, tune, base, stage, frozen):
    """Every arm of one variant (in out/<arm>), from the base LM beside out; returns arm -> log records, their
    iterations counted from the base, and arm -> the record of its best checkpoint. Every arm is two runs of
    `stage` steps, so each restarts its optimizer once: a control runs twice in its own mode; 'hard', 'st' and
    'soft' share a first run in 'hard' (stage 3). The second run starts from the first's best checkpoint."""
    suite_dir = os.path.dirname(out)
    from_base = tune + [f"--init_from={suite_dir}/base/ckpt.pt"]
    runs = {"none": [dict(base[-1], iter=0), dict(base[-1], iter=2 * stage)]} if frozen else {}
    bests = {"none": base[-1]} if frozen else {}
    for mode in [arm for arm in ARMS if arm not in runs]:
        first = "hard" if mode in ("hard", "st", "soft") else mode
        planner = [f"--plan_init_planner={suite_dir}/planner/planner.pt"] if first == "hard" else []
        stage3 = train_arm(f"{out}/{first}_stage3", from_base + [f"--plan_mode={first}", *planner], stage)
        stage4 = train_arm(f"{out}/{mode}", tune + [f"--init_from={out}/{first}_stage3/best.pt", f"--plan_mode={mode}"],
                           stage)
        runs[mode] = stage3 + [dict(r, iter=r["iter"] + stage) for r in stage4[1:]]
        bests[mode] = min(stage4, key=lambda r: r["val_loss"])  # the first of equals, as best.pt keeps it
    return runs, bests


def planner_scores(checkpoint_path):
    """Accuracy and top-5 of the planner inside a train.py checkpoint (ckpt.pt or best.pt), over every validation
    sentence."""
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
        command = [sys.executable, os.path.join(ROOT, "pretrain_planner.py"), "config/planner/pretrain.py",
                   f"--out_dir={out_dir}", f"--max_iters={max_iters}"]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        records = read_log(out_dir)
    return records[-1]


if __name__ == "__main__":
    unknown = [word for word in sys.argv[2:] if word not in VARIANTS]
    if sys.argv[1:2] not in ([], ["small"], ["gpu"]) or unknown:
        sys.exit(f"usage: python experiments/planner.py [small|gpu] [{'] ['.join(VARIANTS)}]")
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"), sys.argv[2:] or None)
