"""
Pre-train the sentence planner of planner.py (stage 2 of docs/planner.md) on the labels of data/sentences.py: the
planner alone, with cross-entropy against the label of each train sentence, on the CPU (it is small). Logs the
validation accuracy and top-5 beside the majority-label baseline to out_dir/log.jsonl and writes out_dir/planner.pt
with the labels' header, for train.py's plan_init_planner.

    python -m tools.pretrain_planner config/planner/pretrain.py [--key=value ...]
"""

import json
import os
import sys

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from configurator import ConfigError, configure
from data.prepare import ensure_prepared
from data.files import write_atomically
from data.sentences import PlanData
from planner import Planner, initialise_planner, planner_metrics

# -----------------------------------------------------------------------------
dataset = "wiki"
out_dir = "out-planner/planner"  # planner.pt and log.jsonl are written here
plan_k = 64  # plan_k, plan_context, plan_embedder and plan_seed as in train.py: they name the labels
plan_context = 8
plan_embedder = "lsa"
plan_seed = 0
batch_size = 256  # sentences per step
max_iters = 2000
learning_rate = 1e-3
weight_decay = 0.01
eval_interval = 250
seed = 1337
# -----------------------------------------------------------------------------
SETTINGS = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str))]


def main(argv):
    """Pre-train with the settings above, overridden by argv (config files and --key=value)."""
    s = {k: globals()[k] for k in SETTINGS}
    configure(s, argv, help_from=__file__)
    data = PlanData(ensure_prepared(s["dataset"]), s["plan_k"], s["plan_embedder"], s["plan_seed"])
    torch.manual_seed(s["seed"])
    planner = Planner(s["plan_k"], data.centroids.size(1), s["plan_context"])
    initialise_planner(planner, data.centroids)
    optimizer = torch.optim.AdamW(planner.parameters(), lr=s["learning_rate"], weight_decay=s["weight_decay"])
    train_labels, val_labels = data.labels["train"], data.labels["val"]
    majority = torch.bincount(train_labels, minlength=s["plan_k"]).argmax()
    generator = torch.Generator().manual_seed(s["seed"])
    os.makedirs(s["out_dir"], exist_ok=True)
    log_path = os.path.join(s["out_dir"], "log.jsonl")
    open(log_path, "w").close()
    train_ce = []
    for it in tqdm(range(s["max_iters"] + 1), desc="planner", dynamic_ncols=True):
        if it % s["eval_interval"] == 0 or it == s["max_iters"]:
            record = {"iter": it, "train_ce": float(np.mean(train_ce)) if train_ce else None,
                      **evaluate_planner(planner, data, s["plan_context"]),
                      "val_majority_acc": (val_labels == majority).float().mean().item()}
            train_ce = []
            tqdm.write(json.dumps(record))
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if it == s["max_iters"]:
            break
        ids = torch.randint(len(train_labels), (s["batch_size"],), generator=generator)
        loss = F.cross_entropy(planner(*data.context("train", ids, s["plan_context"])), train_labels[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_ce.append(loss.item())
    path = os.path.join(s["out_dir"], "planner.pt")
    state = {"planner": planner.state_dict(), "header": data.header, "plan_context": s["plan_context"],
             "metrics": record}
    write_atomically(path, lambda f: torch.save(state, f))
    print(f"saved {path}")


@torch.no_grad()
def evaluate_planner(planner, data, m):
    """The planner's metrics over every validation sentence."""
    planner.eval()
    ids = torch.arange(len(data.labels["val"]))
    logits = torch.cat([planner(*data.context("val", part, m)) for part in ids.split(4096)])
    planner.train()
    return {f"val_{k}": v.item() for k, v in planner_metrics(logits, data.labels["val"]).items()}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
