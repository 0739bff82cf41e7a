"""
Step-time ratios of the techniques against the plain model. The arms run in turns within one process, so a
loaded machine slows numerator and denominator alike; the median step of each arm is reported.

    python bench.py                   # every dataset, CPU or GPU, whatever is there
    python bench.py --steps=20
"""

import statistics
import sys
import time

import numpy as np
import torch

import train
from data.common import ensure_prepared, load_meta, load_tokens
from lm import LanguageModel, pick_device, pick_precision
from model import GPT, GPTConfig, configure_optimizers

DEFAULTS = {k: getattr(train, k) for k in train.SETTINGS}


def real_batch(dataset, batch_size, block_size, device):
    tokens = load_tokens(ensure_prepared(dataset), "train")
    starts = np.random.default_rng(0).integers(len(tokens) - block_size - 1, size=batch_size)
    x = torch.from_numpy(np.stack([tokens[i:i + block_size] for i in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64))
    return x.to(device), y.to(device)


def median_step_times(arms, x, y, steps, device, autocast):
    """arms: name -> settings overrides. One optimizer step of each arm in turn, steps times (after 2 warm-up
    rounds); returns name -> median seconds per step."""
    models = {}
    for name, overrides in arms.items():
        torch.manual_seed(0)
        config = GPTConfig(n_layer=DEFAULTS["n_layer"], n_head=DEFAULTS["n_head"], n_embd=DEFAULTS["n_embd"],
                           block_size=x.size(1), vocab_size=overrides.pop("vocab_size"), bias=DEFAULTS["bias"])
        model = LanguageModel(GPT(config), {**DEFAULTS, **overrides}).to(device)
        models[name] = model, configure_optimizers(model, 0.1, 1e-4, (0.9, 0.99), device.split(":")[0])
    times = {name: [] for name in arms}
    for round_ in range(steps + 2):
        for name, (model, optimizer) in models.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast:
                loss, _ = model(x, y, {})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_mod(device, autocast, steps):
    """Mixture-of-depths ensemble, mod_k = 3, against the plain model: with the default distillation on a share
    of the positions (mod_distill_frac), and with the distillation on every position (the paper's loss)."""
    for dataset in ("shakespeare_char", "wiki"):
        vocab = load_meta(ensure_prepared(dataset))["vocab_size"]
        vocab = vocab if vocab < 1024 else -(-vocab // 64) * 64  # padded as train.py pads it
        x, y = real_batch(dataset, DEFAULTS["batch_size"], DEFAULTS["block_size"], device)
        arms = {"plain": {}, "mod_k=3": {"mod_k": 3},
                "mod_k=3, distill every position": {"mod_k": 3, "mod_distill_frac": 1.0}}
        seconds = median_step_times({k: {**v, "vocab_size": vocab} for k, v in arms.items()}, x, y, steps, device,
                                    autocast)
        for name in arms:
            print(f"mod {dataset:>16} (vocab {vocab}): {name:<32} {seconds[name] * 1e3:8.1f} ms/step  "
                  f"{seconds[name] / seconds['plain']:.2f}x plain")


if __name__ == "__main__":
    steps = int(sys.argv[1].split("=")[1]) if sys.argv[1:] and sys.argv[1].startswith("--steps=") else 10
    run_device = pick_device()
    dtype, run_autocast = pick_precision(run_device.split(":")[0])
    print(f"device {run_device}, {dtype}, {steps} steps per arm, model {DEFAULTS['n_layer']} layers x "
          f"{DEFAULTS['n_embd']}, batch {DEFAULTS['batch_size']} x {DEFAULTS['block_size']} tokens")
    bench_mod(run_device, run_autocast, steps)
