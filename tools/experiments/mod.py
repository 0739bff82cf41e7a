"""
Mixture-of-depths ensemble experiment (mod.py): pretrain an 8-layer GPT on wiki, then tune it on sotu five ways from
the same checkpoint, with the same steps, and over paired seeds (a seed fixes the new parameters' initialisation and
the batch order; the pretrained base is shared):
    full        every weight trains (the plain fine-tune)
    full + MoD  every weight, plus the ensemble of the last 2 layers
    LoRA        rank-8 adapters on a frozen base
    LoRA + MoD  adapters plus the ensemble
    MoD only    frozen base; only the ensemble's router and norm train

    python -m tools.experiments.mod            # the small CPU suite
    python -m tools.experiments.mod gpu        # larger configs for one CUDA GPU

Writes results/mod{,_gpu}.md (validation loss on 120k tokens over seeds, each MoD arm against its own baseline, the
final layer's own loss and the mean routing weight of each late layer), results/mod{,_gpu}.png (validation curves)
and results/mod_layers{,_gpu}.png (each late layer's own validation loss and routing weight over the tuning).
"""

import math
import os
import sys

from training.plot import draw_curves, new_figure, series
from tools.experiments.common import (ROOT, SEEDS, VERDICT_NOTE, markdown_table, mean_sd, paired_columns, per_seed,
                                      plot_curves, read_score, share_of_ceiling, train_arm)

ARMS = {"full": "tune_full", "full + MoD": "tune_full_mod", "LoRA": "tune_lora", "LoRA + MoD": "tune_lora_mod",
        "MoD only": "tune_mod_only"}
BASELINE = {"full": "untuned", "full + MoD": "full", "LoRA": "untuned", "LoRA + MoD": "LoRA", "MoD only": "untuned"}
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
    config = os.path.join(ROOT, "config", "mod")
    pretrained = os.path.join(out, "pretrain_wiki")
    train_arm(pretrained, [os.path.join(config, "pretrain_wiki.py"), *plan["pretrain_args"]], plan["pretrain_iters"])
    init = f"--init_from={os.path.join(pretrained, 'ckpt.pt')}"
    tune = os.path.join(config, "tune.py")
    untuned = os.path.join(out, "untuned")  # the pretrained GPT scored on sotu: 0 tuning steps, no seed to vary
    train_arm(untuned, [tune, os.path.join(config, "tune_full.py"), init, *plan["tune_args"]], 0)
    runs, scores = {}, {"untuned": [read_score(untuned)] * len(SEEDS)}
    for label, name in ARMS.items():
        dirs = [os.path.join(out, f"seed{seed}", name) for seed in SEEDS]
        runs[label] = [train_arm(d, [tune, os.path.join(config, f"{name}.py"), init, *plan["tune_args"]],
                                 plan["tune_iters"], seed) for d, seed in zip(dirs, SEEDS)]
        scores[label] = [read_score(d) for d in dirs]
    suffix = "" if suite == "small" else f"_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    plot_curves(runs, os.path.join(results_dir, f"mod{suffix}.png"),
                f"tuning a wiki-pretrained GPT on sotu ({suite} suite)")
    plot_layers({label: per_seed[0] for label, per_seed in runs.items() if "MoD" in label},
                os.path.join(results_dir, f"mod_layers{suffix}.png"))
    with open(os.path.join(results_dir, f"mod{suffix}.md"), "w") as f:
        f.write(report(runs, scores, suite, plan))


def report(runs, scores, suite, plan):
    start = scores["untuned"][0]["val_loss"]
    losses = {label: [score["val_loss"] for score in per_seed] for label, per_seed in scores.items()}
    rows = []
    for label in ARMS:
        rows.append([label, BASELINE[label], f"{runs[label][0][-1]['trainable_params']:,}",
                     *paired_columns(losses[label], losses[BASELINE[label]]), *ensemble_cells(scores[label])])
    header = ["arm", "baseline", "trainable params", "val loss", "vs baseline", "verdict", "final layer alone",
              "ceiling: per-token best late layer", "router's share of the ceiling", "mean routing weights (layers)"]
    return (f"# Depth ensemble: tuning on sotu ({suite} suite)\n\nFrom a GPT pretrained {plan['pretrain_iters']} "
            f"iterations on wiki, {plan['tune_iters']} tuning iterations per arm. Validation loss before tuning "
            f"('untuned'): {start:.4f} (ppl {math.exp(start):.1f}).\n\n" + markdown_table(header, rows) +
            f"\n{VERDICT_NOTE} Each MoD arm is compared with the same tuning without the ensemble, 'MoD only' and the "
            "plain tunings with the untuned model. Layers are numbered from 0; the routing weights, the final "
            "layer's own loss and the ceiling (the loss of a router that picks, for every token in hindsight, the "
            "late layer best for it) are means over seeds on the same 120k tokens; the router's share is (final "
            "layer alone - mixture) / (final layer alone - ceiling), per seed.\n")


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
