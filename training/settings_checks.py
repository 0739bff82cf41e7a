"""
train.py's settings that cannot work, caught before any work is done. configurator.py has already checked each
setting's name and type; these are the values and combinations that are wrong. Every message names the setting and
the fix, and all problems are reported at once.
"""

import os

import lm
from configurator import ConfigError
from training.hf import GPT2_NAMES, is_hf_source


def check(s):
    problems = size_problems(s) + start_problems(s) + optimizer_problems(s) + system_problems(s)
    # Each technique checks its own settings, in its own file.
    problems += lm.settings_problems(s)
    if problems:
        raise ConfigError("; ".join(problems))


def size_problems(s):
    problems = [f"{key} must be at least 1, got {s[key]}" for key in (
        "batch_size", "block_size", "eval_interval", "eval_iters", "log_interval", "gradient_accumulation_steps")
        if s[key] < 1]
    if s["max_iters"] < 0:
        problems.append(f"max_iters must be at least 0 (0 evaluates and saves the initial model), got {s['max_iters']}")
    return problems


def start_problems(s):
    """What the run starts from (init_from) and what of it trains (base)."""
    problems = []
    if not (s["init_from"] in ("scratch", "resume") or os.path.isfile(s["init_from"]) or is_hf_source(s["init_from"])):
        problems.append(f"init_from must be 'scratch', 'resume', an existing checkpoint file, one of {GPT2_NAMES} or "
                        f"a folder written by save_pretrained, got '{s['init_from']}'")
    if s["base"] not in ("train", "frozen", "lora"):
        problems.append(f"base must be 'train', 'frozen' or 'lora', got '{s['base']}'")
    if s["base"] != "train" and s["init_from"] == "scratch":
        problems.append(f"base='{s['base']}' freezes the base GPT: tune a pretrained one with "
                        f"--init_from=<path of a ckpt.pt>, or use base='train'")
    if s["base"] == "frozen" and s["mod_k"] < 2 and s["plan_mode"] == "none" and not s["train_ln_f"]:
        problems.append("base='frozen' with no technique on leaves nothing to train: set mod_k >= 2, a plan_mode or "
                        "train_ln_f=True, or use base='lora'")
    if s["train_ln_f"] and s["base"] == "train":
        problems.append("train_ln_f=True keeps the final LayerNorm training under a frozen base, but base='train' "
                        "trains every weight already: set base='frozen' or 'lora', or leave train_ln_f False")
    if s["lora_rank"] < 1:
        problems.append(f"lora_rank must be at least 1, got {s['lora_rank']}")
    return problems


def optimizer_problems(s):
    problems = []
    if not 0.0 <= s["label_smoothing"] < 1.0:
        problems.append(f"label_smoothing must be in [0, 1), got {s['label_smoothing']}")
    if s["learning_rate"] <= 0 or s["min_lr"] < 0:
        problems.append("learning_rate must be positive and min_lr non-negative")
    if s["decay_lr"] and s["min_lr"] > s["learning_rate"]:
        problems.append(f"min_lr ({s['min_lr']}) must not exceed learning_rate ({s['learning_rate']}): the cosine "
                        f"schedule decays from learning_rate down to min_lr; lower min_lr or set decay_lr=False")
    problems += [f"{key} must be in [0, 1) (AdamW's moment decay), got {s[key]}" for key in ("beta1", "beta2")
                 if not 0.0 <= s[key] < 1.0]
    if s["warmup_iters"] < 0:
        problems.append(f"warmup_iters must be at least 0, got {s['warmup_iters']}")
    return problems


def system_problems(s):
    problems = []
    if s["dtype"] not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got '{s['dtype']}'")
    if s["compile"] not in (None, True, False):
        problems.append(f"compile must be None (on for CUDA where Triton is installed), True or False, got "
                        f"{s['compile']!r}")
    return problems
