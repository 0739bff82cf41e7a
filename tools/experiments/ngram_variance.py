"""
CoCoNTs' central quantity, measured: how far each position's training target lies from the exact n-gram
distribution y_all of its context, E_i |y_i - y_all(c_i)|^2 over the train positions that have a context, for

  - the observed token, onehot(NT): the usual target;
  - the compact target y_S + (1 - m) onehot(t), as built (ngram.build_targets), and averaged over E epochs, either
    with the build's one draw of the tail tokens (what training sees today: the same t every epoch) or with the tail
    tokens drawn afresh each epoch (seeds seed .. seed + E - 1);
  - the labelled ablation that puts the leftover mass on the observed token, y_S + (1 - m) onehot(NT), which is
    biased towards S: its bias |E[y] - y_all|^2 per context is reported beside it.

No training: every figure is exact arithmetic on the targets. Closed forms (ngram.py's docstring): the compact
target's expected squared distance is (1 - m)^2 - |y_tail|^2, the observed token's 1 - |y_all|^2.

    python -m tools.experiments.ngram_variance            # shakespeare_char (n = 5) and wiki (n = 3), r = 4, 8, 16
"""

import os
import sys

import numpy as np

from data.dataset import load_meta, load_tokens
from data.prepare import ensure_prepared
from ngram import build_targets
from tools.experiments.common import ROOT

DATASETS = {"shakespeare_char": 5, "wiki": 3}  # each with the context of its n-gram experiment (config/ngram/)
RS, EPOCHS, SEED = (4, 8, 16), (1, 4, 16), 1337


def distances(tokens, n, r, eot, epochs):
    """Mean squared distances to y_all over the positions with a context, per target kind (see the docstring)."""
    built = [build_targets(tokens, n, r, SEED + e, eot) for e in range(max(epochs))]
    first = built[0]
    context = first["row_context"].astype(np.int64) - 1  # of each position; -1: none
    ptr, counts, next_ids = first["ptr"], first["counts"].astype(np.float64), first["next_ids"].astype(np.int64)
    pair_context = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    total = np.add.reduceat(counts, ptr[:-1])
    y = counts / total[pair_context]  # y_all of each (context, next token) pair
    rank = np.arange(len(y)) - ptr[pair_context]  # pairs are most frequent first within their context
    in_tail = rank >= r
    y_all_sq = np.bincount(pair_context, y * y)
    y_tail_sq = np.bincount(pair_context, np.where(in_tail, y * y, 0.0), minlength=len(total))
    tail_mass = np.bincount(pair_context, np.where(in_tail, y, 0.0), minlength=len(total))  # 1 - m

    # y_all[v] and "v in the tail" of a (context, token) pair, looked up by one sorted key
    V = int(max(tokens.max(), next_ids.max())) + 1
    keys = pair_context * V + next_ids
    order = np.argsort(keys)
    keys, y_sorted, tail_sorted = keys[order], y[order], in_tail[order]

    def y_tail_of(c, v):
        at = np.minimum(np.searchsorted(keys, c * V + v), len(keys) - 1)
        hit = keys[at] == c * V + v
        return np.where(hit & tail_sorted[at], y_sorted[at], 0.0), np.where(hit, y_sorted[at], 0.0)

    positions = np.flatnonzero(context >= 0)
    c = context[positions]
    nt = np.asarray(tokens[positions + 1]).astype(np.int64)
    tm, tail_sq = tail_mass[c], y_tail_sq[c]
    nt_tail, nt_all = y_tail_of(c, nt)
    rows = {"observed token": np.mean(1 - 2 * nt_all + y_all_sq[c])}
    # the leftover mass on the observed token: tm e_NT - y_tail
    rows["observed-token tail (biased)"] = np.mean(tm ** 2 - 2 * tm * nt_tail + tail_sq)
    # its bias per context: tm y_all - y_tail, squared and averaged over the positions
    rows["its bias"] = np.mean(tm ** 2 * y_all_sq[c] - 2 * tm * tail_sq + tail_sq)
    dealt = np.stack([b["tail_ids"][positions].astype(np.int64) for b in built], axis=1)  # (positions, epochs)
    for E in epochs:
        for name, draws in (("one draw", np.repeat(dealt[:, :1], E, axis=1)), ("a draw per epoch", dealt[:, :E])):
            if E == 1 and name != "one draw":
                continue
            # |tm / E sum_e onehot(t_e) - y_tail|^2, expanded
            same = sum((draws[:, a] == draws[:, b]).astype(np.float64) for a in range(E) for b in range(E))
            drawn_tail = sum(y_tail_of(c, draws[:, e])[0] for e in range(E))
            label = "compact, as built" if E == 1 else f"compact, mean over {E} epochs, {name}"
            rows[label] = np.mean((tm / E) ** 2 * same - 2 * tm / E * drawn_tail + tail_sq)
    rows["compact, closed form"] = np.mean(tm ** 2 - tail_sq)
    return rows, len(positions)


def run(results_dir):
    lines = ["# CoCoNTs' variance: each target's mean squared distance to y_all", "",
             "`python -m tools.experiments.ngram_variance`; every train position with a context; seeds "
             f"{SEED}..{SEED + max(EPOCHS) - 1} for a draw per epoch. 'one draw': the build's tail tokens, read every "
             "epoch (what training does); 'a draw per epoch': the tail tokens dealt afresh each epoch; 'mean over E "
             "epochs': the target a position gets, averaged over E epochs.", ""]
    for name, n in DATASETS.items():
        data_dir = ensure_prepared(name)
        meta = load_meta(data_dir)
        tokens = np.asarray(load_tokens(data_dir, "train"))
        table = {r: distances(tokens, n, r, meta["eot_token"], EPOCHS) for r in RS}
        positions = next(iter(table.values()))[1]
        lines += [f"## {name} (n = {n}, {positions:,} positions with a context)", "",
                  "| target | " + " | ".join(f"r = {r}" for r in RS) + " |", "|---|" + "---|" * len(RS)]
        for row in table[RS[0]][0]:
            lines.append(f"| {row} | " + " | ".join(f"{table[r][0][row]:.4f}" for r in RS) + " |")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(results_dir, "ngram_variance.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "results"))
