"""
Mixture-of-depths ensemble experiment (mod.py): pretrain a small GPT on wiki, then tune it on sotu five ways from
the same checkpoint, with the same steps, batches and seed:
    full        every weight trains (the plain fine-tune)
    full + MoD  every weight, plus the ensemble of the last 3 layers
    LoRA        rank-8 adapters on a frozen base
    LoRA + MoD  adapters plus the ensemble
    MoD only    frozen base; only the ensemble's router and norms train

    python experiments/mod.py            # the small CPU suite
    python experiments/mod.py gpu        # larger configs for one CUDA GPU

Writes results/mod{,_gpu}.md (validation loss, perplexity and trainable parameters of each arm),
results/mod{,_gpu}.png (validation curves) and results/mod_layers{,_gpu}.png (each late layer's own validation
loss and its mean routing weight over the tuning, for the MoD arms).
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.common import ROOT, markdown_table, plot_curves, train_arm

ARMS = {"full": "tune_full", "full + MoD": "tune_full_mod", "LoRA": "tune_lora", "LoRA + MoD": "tune_lora_mod",
        "MoD only": "tune_mod_only"}
SUITES = {
    "small": dict(pretrain_iters=600, tune_iters=200, pretrain_args=[], tune_args=[]),
    "gpu": dict(pretrain_iters=5000, tune_iters=1000,
                pretrain_args=["--n_layer=8", "--n_head=8", "--n_embd=512", "--block_size=256", "--batch_size=32",
                               "--eval_interval=500", "--eval_iters=50", "--learning_rate=6e-4", "--warmup_iters=200"],
                tune_args=["--block_size=256", "--batch_size=32", "--eval_interval=100", "--eval_iters=50"]),
}


def run(suite, results_dir):
    plan = SUITES[suite]
    out = os.path.join(ROOT, "out", f"mod-{suite}")
    config = os.path.join(ROOT, "config", "mod")
    pretrained = os.path.join(out, "pretrain_wiki")
    train_arm(pretrained, [os.path.join(config, "pretrain_wiki.py"), *plan["pretrain_args"]],
              plan["pretrain_iters"])
    init = f"--init_from={os.path.join(pretrained, 'ckpt.pt')}"
    tune = os.path.join(config, "tune.py")
    runs = {label: train_arm(os.path.join(out, name), [tune, os.path.join(config, f"{name}.py"), init,
                                                       *plan["tune_args"]], plan["tune_iters"])
            for label, name in ARMS.items()}
    suffix = "" if suite == "small" else f"_{suite}"
    os.makedirs(results_dir, exist_ok=True)
    plot_curves(runs, os.path.join(results_dir, f"mod{suffix}.png"),
                f"tuning a wiki-pretrained GPT on sotu ({suite} suite)")
    plot_layers({label: records for label, records in runs.items() if "MoD" in label},
                os.path.join(results_dir, f"mod_layers{suffix}.png"))
    with open(os.path.join(results_dir, f"mod{suffix}.md"), "w") as f:
        f.write(report(runs, suite, plan))


def report(runs, suite, plan):
    start = runs["full"][0]["val_loss"]
    late_layers = [k[len("val_route"):] for k in sorted(runs["full + MoD"][-1]) if k.startswith("val_route")]
    rows = []
    for label, records in runs.items():
        last = records[-1]
        final_layer = max((k for k in last if k.startswith("val_layer") and k.endswith("_ce")), default=None)
        rows.append([label, f"{last['trainable_params']:,}", f"{last['val_loss']:.3f}", f"{last['val_ppl']:.1f}",
                     f"{100 * (start - last['val_loss']) / (start - runs['full'][-1]['val_loss']):.0f}%",
                     f"{last[final_layer]:.3f}" if final_layer else "-",
                     " / ".join(f"{last[k]:.2f}" for k in sorted(last) if k.startswith("val_route")) or "-"])
    header = ["arm", "trainable params", "val loss", "val ppl", "share of full's gain", "final layer alone",
              f"mean routing weights (layers {', '.join(late_layers)})"]
    return (f"Tuning on sotu from a GPT pretrained {plan['pretrain_iters']} iterations on wiki ({suite} suite), "
            f"{plan['tune_iters']} tuning iterations per arm. Validation loss before tuning: {start:.3f} "
            f"(ppl {math.exp(start):.1f}).\n\n" + markdown_table(header, rows))


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
