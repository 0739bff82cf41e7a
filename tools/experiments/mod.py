"""
Mixture-of-depths ensemble experiment (mod.py): does MoD replace a trainable module at far fewer parameters, as the
paper claims? Pretrain an 8-layer GPT on wiki, then tune it on sotu from the same checkpoint, with the same steps,
over paired seeds (a seed fixes the new parameters' initialisation and the batch order; the pretrained base is shared):
    ln_f alone                  frozen base, only the final LayerNorm trains: one norm, no ensemble (the control)
    MoD only                    frozen base; the router and every late layer's norm train (ln_f too), distillation on
    MoD only, no distillation   the same with mod_lambda = 0: the frozen final layer no longer teaches
    LoRA, MoD's size            rank 1 on the last two blocks' attn.c_proj: 512 parameters, MoD only's 514
    LoRA r=8                    rank 8 on every linear of every block (131,072)
    LoRA r=8 + ln_f             the same and the final LayerNorm: the control of LoRA r=8 + MoD, which trains it
    full                        every weight trains (the plain fine-tune)
    LoRA r=8 + MoD, full + MoD  the ensemble on top of a tuning module, each against that module alone

Each arm's learning rate is chosen from the same grid, LR_GRID, by the same rule: the rate whose run with
SELECTION_SEED (a seed none of the paired runs uses) ends with the lowest validation loss on its curve's fixed batches
(config/mod/tune.py's eval_iters, the same batches for every run; not the 120k-token score, which costs the ensemble's
arms five head calls a token), the grid followed past its edge (x3 a step) while the best is there; then the arm runs
with every seed of SEEDS at that rate, or, where one of them diverges, at the next best rate of the selection. min_lr
is a tenth of the rate, the schedule otherwise config/mod/tune.py's.

    python -m tools.experiments.mod            # the small CPU suite
    python -m tools.experiments.mod gpu        # larger configs for one CUDA GPU

Writes results/mod{,_gpu}.md (validation loss on 120k tokens over seeds, each arm against its own baseline, the
final layer's own loss, the per-token ceiling and the mean routing weight of each late layer, the chosen learning
rates), results/mod{,_gpu}.png (validation curves) and results/mod_layers{,_gpu}.png (each late layer's own
validation loss and routing weight over the tuning).
"""

import math
import os
import subprocess
import sys

from training.plot import draw_curves, new_figure, read_log, series
from tools.experiments.common import (ROOT, SEEDS, VERDICT_NOTE, markdown_table, mean_sd, paired_columns, per_seed,
                                      plot_curves, read_score, share_of_ceiling, train_arm, verdict)

MOD = ["--mod_k=2"]  # a quarter of the 8 layers
ARMS = {  # arm -> (flags on config/mod/tune.py, baseline)
    "ln_f alone": (["--base=frozen", "--train_ln_f=True"], "untuned"),
    "MoD only": (["--base=frozen", "--train_ln_f=True", *MOD], "untuned"),
    "MoD only, no distillation": (["--base=frozen", "--train_ln_f=True", *MOD, "--mod_lambda=0"], "untuned"),
    "LoRA, MoD's size": (["--base=lora", "--lora_rank=1", "--lora_targets=h.6.attn.c_proj,h.7.attn.c_proj"],
                         "untuned"),
    "LoRA r=8": (["--base=lora"], "untuned"),
    "LoRA r=8 + ln_f": (["--base=lora", "--train_ln_f=True"], "untuned"),
    "full": (["--base=train"], "untuned"),
    "LoRA r=8 + MoD": (["--base=lora", "--train_ln_f=True", *MOD], "LoRA r=8"),
    "full + MoD": (["--base=train", *MOD], "full"),
}
# What the paper's claim turns on, beyond each arm against its baseline: (arm, against).
COMPARISONS = [("MoD only", "ln_f alone"), ("MoD only", "LoRA, MoD's size"), ("MoD only", "LoRA r=8"),
               ("MoD only, no distillation", "MoD only"), ("MoD only, no distillation", "ln_f alone"),
               ("LoRA r=8 + MoD", "LoRA r=8 + ln_f")]
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
MAX_GRID_EXTENSIONS = 4
SELECTION_SEED = 1336
SUITES = {
    "small": dict(pretrain_iters=600, tune_iters=200, pretrain_args=[], tune_args=[]),
    "gpu": dict(pretrain_iters=5000, tune_iters=1000,
                pretrain_args=["--n_layer=12", "--n_head=8", "--n_embd=512", "--block_size=256", "--batch_size=32",
                               "--eval_interval=500", "--eval_iters=50", "--learning_rate=6e-4", "--warmup_iters=200"],
                tune_args=["--block_size=256", "--batch_size=32", "--eval_interval=100", "--eval_iters=50"]),
}


def run(suite, results_dir):
    plan = SUITES[suite]
    out = os.path.join(ROOT, "out", f"mod-{suite}")
    pretrained = os.path.join(out, "pretrain_wiki")
    train_arm(pretrained, [os.path.join(ROOT, "config", "mod", "pretrain_wiki.py"), *plan["pretrain_args"]],
              plan["pretrain_iters"])
    untuned = os.path.join(out, "untuned")  # the pretrained GPT scored on sotu: 0 tuning steps, no seed to vary
    train_arm(untuned, tune_args(plan, pretrained, ["--base=train"], LR_GRID[0]), 0)
    runs, scores, rates, diverged = {}, {"untuned": [read_score(untuned)] * len(SEEDS)}, {}, {}
    for arm, (flags, _) in ARMS.items():
        rates[arm], dirs, runs[arm], diverged[arm] = paired_runs(arm, flags, plan, out, pretrained)
        scores[arm] = [read_score(d) for d in dirs]
    suffix = "" if suite == "small" else f"_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    plot_curves(runs, os.path.join(results_dir, f"mod{suffix}.png"),
                f"tuning a wiki-pretrained GPT on sotu ({suite} suite)")
    ensembles = {arm: per_seed[0] for arm, per_seed in runs.items() if any(k.startswith("val_route")
                                                                             for k in per_seed[0][-1])}
    plot_layers(ensembles, os.path.join(results_dir, f"mod_layers{suffix}.png"))
    with open(os.path.join(results_dir, f"mod{suffix}.md"), "w") as f:
        f.write(report(runs, scores, rates, diverged, suite, plan))


def tune_args(plan, pretrained, flags, rate):
    return [os.path.join(ROOT, "config", "mod", "tune.py"), f"--init_from={os.path.join(pretrained, 'ckpt.pt')}",
            *flags, f"--learning_rate={rate:g}", f"--min_lr={rate / 10:g}", *plan["tune_args"]]


def paired_runs(arm, flags, plan, out, pretrained):
    """The arm's runs with every seed of SEEDS at the best rate of its selection (choose_rate) at which none
    diverges: a rate that diverges with one seed of three is no usable setting, so the next best is taken, its runs
    in folders of their own. Returns the rate, the run folders, their logs and the [(rate, seed)] that diverged."""
    diverged = []
    for rate in choose_rate(arm, flags, plan, out, pretrained):
        suffix = f"_lr{rate:g}" if diverged else ""
        dirs = [os.path.join(out, f"seed{seed}", slug(arm) + suffix) for seed in SEEDS]
        runs = []
        for d, seed in zip(dirs, SEEDS):
            records = trained_unless_diverged(d, tune_args(plan, pretrained, flags, rate), plan["tune_iters"], seed)
            if records is None:
                diverged.append((rate, seed))
                break
            runs.append(records)
        else:
            return rate, dirs, runs, diverged
    raise RuntimeError(f"{arm}: every rate of its selection diverged with some seed")


def trained_unless_diverged(out_dir, *args, **kwargs):
    """train_arm(out_dir, *args, **kwargs)'s log, or None where the run diverged: it failed after it began logging
    (train.py stops on a non-finite loss). A run that failed before it logged anything is broken, and raises."""
    try:
        return train_arm(out_dir, *args, **kwargs)
    except subprocess.CalledProcessError:
        if not read_log(out_dir):
            raise
        return None


def choose_rate(arm, flags, plan, out, pretrained):
    """The rates whose SELECTION_SEED run of the arm ended, best first (the lowest validation loss on its curve): of
    LR_GRID, and while the best is at an edge of the rates tried, of one more rate beyond it (x3), so that no arm is
    held at an edge of the grid. A rate whose run fails after it began logging (train.py stops on a non-finite
    loss) has diverged: it counts as infinitely bad, and is not returned."""
    losses = {}

    def loss_at(rate):
        if rate not in losses:
            d = os.path.join(out, "learning-rate", slug(arm), f"lr{rate:g}")
            records = trained_unless_diverged(d, tune_args(plan, pretrained, flags, rate), plan["tune_iters"],
                                              SELECTION_SEED, score=False)
            losses[rate] = records[-1]["val_loss"] if records else math.inf
        return losses[rate]

    best = min(LR_GRID, key=loss_at)
    while best in (min(losses), max(losses)) and len(losses) < len(LR_GRID) + MAX_GRID_EXTENSIONS:
        beyond = best * 3 if best == max(losses) else best / 3
        best = min(best, beyond, key=loss_at)
        if best != beyond:
            break
    return sorted((rate for rate, loss in losses.items() if math.isfinite(loss)), key=losses.get)


def slug(arm):
    return "".join(c if c.isalnum() or c in "=." else "_" for c in arm)


def report(runs, scores, rates, diverged, suite, plan):
    start = scores["untuned"][0]["val_loss"]
    losses = {arm: per_seed(arm_scores) for arm, arm_scores in scores.items()}
    rows = [[arm, baseline, f"{runs[arm][0][-1]['trainable_params']:,}", f"{rates[arm]:g}",
             *paired_columns(losses[arm], losses[baseline]), *ensemble_cells(scores[arm])]
            for arm, (_, baseline) in ARMS.items()]
    header = ["arm", "baseline", "trainable params", "learning rate", "val loss", "vs baseline", "verdict",
              "final layer alone", "ceiling: per-token best late layer", "router's share of the ceiling",
              "mean routing weights (layers)"]
    comparisons = "".join(f"- {a} against {b}: {paired_columns(losses[a], losses[b])[1]}, "
                          f"{verdict([x - y for x, y in zip(losses[a], losses[b])])}\n" for a, b in COMPARISONS)
    comparisons += "".join(f"- {arm}: " + ", ".join(f"rate {rate:g} diverged with seed {seed}" for rate, seed in failed)
                           + f"; so it runs at the next best rate of its selection, {rates[arm]:g}\n"
                           for arm, failed in diverged.items() if failed)
    return (f"# Depth ensemble: tuning on sotu ({suite} suite)\n\nFrom a GPT pretrained {plan['pretrain_iters']} "
            f"iterations on wiki, {plan['tune_iters']} tuning iterations per arm. Validation loss before tuning "
            f"('untuned'): {start:.4f} (ppl {math.exp(start):.1f}).\n\n" + markdown_table(header, rows) +
            f"\n{comparisons}\n{VERDICT_NOTE} Every arm is compared with the untuned model; the lines under the "
            "table pair the arms the paper's claim turns on. Each arm's learning rate is the one of "
            f"{', '.join(f'{r:g}' for r in LR_GRID)} whose run with seed {SELECTION_SEED} (not one of the paired "
            "seeds) ended with the lowest validation loss on its curve's fixed batches, followed past the grid's edge "
            f"(x3 a step, at most {MAX_GRID_EXTENSIONS}) while the best was there, and gave way to the next best where "
            "a paired seed diverged at it; min_lr is a tenth of the rate. Layers are numbered from 0; the routing "
            "weights, the final layer's own loss and the ceiling (the loss of a router that picks, for every token in "
            "hindsight, the late layer best for it) are means over seeds on the same 120k tokens; the router's share "
            "is (final layer alone - mixture) / (final layer alone - ceiling), per seed.\n")


def ensemble_cells(scores):
    """Final layer alone, the ceiling, the router's share of it, and the routing weights, for an arm's seeds."""
    layers = sorted((k for k in scores[0] if k.startswith("val_layer") and k.endswith("_ce")),
                    key=lambda k: int(k[len("val_layer"):-len("_ce")]))
    if not layers:
        return ["-"] * 4
    routes = [k.replace("layer", "route")[:-len("_ce")] for k in layers]
    final, ceiling = per_seed(scores, layers[-1]), per_seed(scores, "val_best_layer_ce")
    weights = " / ".join(f"{mean_sd(per_seed(scores, k))[0]:.2f}" for k in routes)
    return [f"{mean_sd(final)[0]:.4f}", f"{mean_sd(ceiling)[0]:.4f}",
            share_of_ceiling(per_seed(scores), final, ceiling),
            f"{weights} ({', '.join(k[len('val_route'):] for k in routes)})"]


def plot_layers(runs, path):
    """For each MoD arm: every late layer's validation loss through its own norm (and the mixture's and the
    ceiling's), and the mean routing weight of each late layer, over the tuning iterations."""
    fig = new_figure(2, len(runs), width=4.0, height=3.2)[0]
    axes = fig.axes
    for column, (label, records) in enumerate(runs.items()):
        loss_ax, route_ax = axes[column], axes[len(runs) + column]
        layers = sorted((k for k in records[-1] if k.startswith("val_layer") and k.endswith("_ce")),
                        key=lambda k: int(k[len("val_layer"):-len("_ce")]))
        curves = {"mixture": series(records, "val_loss"), "ceiling": series(records, "val_best_layer_ce"),
                  **{f"layer {k[len('val_layer'):-len('_ce')]}": series(records, k) for k in layers}}
        draw_curves(loss_ax, curves, label, "validation loss (nats/token)")
        draw_curves(route_ax, {f"layer {k[len('val_layer'):-len('_ce')]}": series(
            records, k.replace("layer", "route")[:-len("_ce")]) for k in layers}, "", "mean routing weight")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
