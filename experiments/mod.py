"""
Mixture-of-depths ensemble experiment (mod.py): pretrain an 8-layer GPT on wiki, then tune it on sotu five ways from
the same checkpoint, with the same steps, and over paired seeds (a seed fixes the new parameters' initialisation and
the batch order; the pretrained base is shared):
    full        every weight trains (the plain fine-tune)
    full + MoD  every weight, plus the ensemble of the last 2 layers
    LoRA        rank-8 adapters on a frozen base
    LoRA + MoD  adapters plus the ensemble
    MoD only    frozen base; only the ensemble's router and norm train

    python experiments/mod.py            # the small CPU suite
    python experiments/mod.py gpu        # larger configs for one CUDA GPU

Writes results/mod{,_gpu}.md (validation loss on 120k tokens over seeds, each MoD arm against its own baseline, the
final layer's own loss and the mean routing weight of each late layer), results/mod{,_gpu}.png (validation curves)
and results/mod_layers{,_gpu}.png (each late layer's own validation loss and routing weight over the tuning).
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.common import (ROOT, SEEDS, VERDICT_NOTE, markdown_table, mean_sd, paired_columns, plot_curves,
                                read_score, train_arm)

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
        per_seed = scores[label]
        layers = sorted(k for k in per_seed[0] if k.startswith("val_layer") and k.endswith("_ce"))
        routes = sorted(k for k in per_seed[0] if k.startswith("val_route"))
        final_alone = f"{mean_sd([s[layers[-1]] for s in per_seed])[0]:.4f}" if layers else "-"
        weights = " / ".join(f"{mean_sd([s[k] for s in per_seed])[0]:.2f}" for k in routes) or "-"
        rows.append([label, BASELINE[label], f"{runs[label][0][-1]['trainable_params']:,}",
                     *paired_columns(losses[label], losses[BASELINE[label]]), final_alone,
                     f"{weights} ({', '.join(k[len('val_route'):] for k in routes)})" if routes else "-"])
    header = ["arm", "baseline", "trainable params", "val loss", "vs baseline", "verdict", "final layer alone",
              "mean routing weights (layers)"]
    return (f"# Depth ensemble: tuning on sotu ({suite} suite)\n\nFrom a GPT pretrained {plan['pretrain_iters']} "
            f"iterations on wiki, {plan['tune_iters']} tuning iterations per arm. Validation loss before tuning "
            f"('untuned'): {start:.4f} (ppl {math.exp(start):.1f}).\n\n" + markdown_table(header, rows) +
            f"\n{VERDICT_NOTE} Each MoD arm is compared with the same tuning without the ensemble, 'MoD only' and the "
            "plain tunings with the untuned model. Layers are numbered from 0; the routing weights and the final "
            "layer's own loss are means over seeds on the same 120k tokens.\n")


def plot_layers(runs, path):
    """For each MoD arm: every late layer's validation loss through its own norm (and the mixture's), and the
    mean routing weight of each late layer, over the tuning iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(4 * len(runs), 6.5), sharex=True, squeeze=False)
    for column, (label, records) in enumerate(runs.items()):
        iters = [r["iter"] for r in records]
        layers = sorted(k for k in records[-1] if k.startswith("val_layer") and k.endswith("_ce"))
        loss_ax, route_ax = axes[0, column], axes[1, column]
        loss_ax.plot(iters, [r["val_loss"] for r in records], "k-", label="mixture")
        for key in layers:
            loss_ax.plot(iters, [r[key] for r in records], marker=".", label=key[len("val_"):-len("_ce")])
            route = key.replace("layer", "route")[:-len("_ce")]
            route_ax.plot(iters, [r[route] for r in records], marker=".", label=route[len("val_"):])
        loss_ax.set_title(label)
        loss_ax.set_ylabel("validation loss (nats/token)")
        route_ax.set_ylabel("mean routing weight")
        route_ax.set_xlabel("iteration")
        for ax in (loss_ax, route_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "small", os.path.join(ROOT, "results"))
