"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.
"""

import os
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

import ngram
from data.dataset import load_meta
from data.prepare import ensure_prepared
from lora import LoRA
from mod import DepthEnsemble
from model import GPT, GPTConfig
from planner import PlanConditioner


class LanguageModel(nn.Module):

    def __init__(self, gpt, settings):
        super().__init__()
        self.gpt = gpt
        self.label_smoothing = settings.get("label_smoothing", 0.0)
        self.ngram_alpha = settings.get("ngram_alpha", 0.0)
        mod_k = settings.get("mod_k", 0)
        self.mod = DepthEnsemble(gpt, mod_k, settings["mod_lambda"], settings["mod_distill_frac"],
                                 settings["mod_router_entropy"]) if mod_k > 1 else None
        self.plan = PlanConditioner(settings, gpt.config) if settings.get("plan_mode", "none") != "none" else None
        base = settings.get("base", "train")
        if base != "train":
            gpt.requires_grad_(False)  # the base is frozen; only the techniques' own parameters (and LoRA's) train
        self.lora = LoRA(gpt, settings["lora_rank"], settings["lora_alpha"]) if base == "lora" else None

    def forward(self, x, y, extra):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports.
        """
        attn_add, plan_loss, plan_stats = self.plan(extra) if self.plan is not None else (None, None, {})
        hidden = self.gpt.body(x, attn_add)
        if self.mod is not None:  # the depth ensemble's mixed logits are the model's prediction
            logits, weights, normed = self.mod(hidden, self.gpt)
        else:
            logits = self.gpt.head(hidden[-1])
        loss, stats = self.next_token_loss(logits, y, extra)
        stats.update(plan_stats)
        if self.mod is not None:
            distill, mod_stats = self.mod.aux_loss(self.gpt, hidden, normed, weights, y)
            loss = loss + distill
            stats.update(mod_stats)
        if plan_loss is not None:
            loss = loss + plan_loss
        return loss, stats

    def next_token_loss(self, logits, y, extra):
        """The training loss of the logits (against n-gram soft targets, smoothed, or plain) and its stats: the
        plain CE, and the CE against the n-gram target where the batch has one (train batches only)."""
        if "ngram_ids" in extra:
            return ngram.soft_target_loss(logits, y, extra["ngram_ids"], extra["ngram_probs"], self.ngram_alpha)
        flat_logits, flat_y = logits.flatten(0, 1), y.flatten()
        ce = F.cross_entropy(flat_logits, flat_y)
        if self.training and self.label_smoothing > 0:
            return F.cross_entropy(flat_logits, flat_y, label_smoothing=self.label_smoothing), {"ce": ce.detach()}
        return ce, {"ce": ce.detach()}

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        """Sample with the techniques in the loop: the ensemble's mixed logits, the planner's plan of each sentence."""
        logits_fn = (lambda hidden: self.mod(hidden, self.gpt)[0]) if self.mod is not None else None
        attn_add_fn = self.plan.generation_hook() if self.plan is not None else None
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache, logits_fn=logits_fn,
                                 attn_add_fn=attn_add_fn)


def load_checkpoint(path, fix="train first, or point init_from at an existing file"):
    """A checkpoint of train.py; fix says how the caller's settings point at another one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is truncated or not a "
                         f"checkpoint of this repository") from None


def checkpoint_vocab(checkpoint):
    """The vocabulary a checkpoint was trained with (a meta for data.common.get_codec). Checkpoints carry it; older
    ones name only their tokenizer, all that GPT-2 BPE needs, and their dataset, which a character one reads."""
    if "vocab" in checkpoint:
        return checkpoint["vocab"]
    if checkpoint.get("tokenizer") == "gpt2":
        return {"dataset": "GPT-2 BPE", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256, "stoi": None,
                "itos": None}
    config = checkpoint["config"]
    if "dataset" not in config:
        raise ValueError(f"the checkpoint names neither its vocabulary nor its dataset (its tokenizer: "
                         f"{checkpoint.get('tokenizer')!r}): it cannot be decoded or tuned here")
    try:
        return load_meta(ensure_prepared(config["dataset"], config.get("tokenizer", "char")))
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"this checkpoint predates checkpoints that carry their vocabulary, and its dataset "
                         f"'{config['dataset']}' cannot be read ({e}): put the dataset back, or train it "
                         f"again") from None


def load_language_model(checkpoint, device):
    """The LanguageModel a checkpoint of train.py holds, in eval mode on device."""
    model = LanguageModel(GPT(GPTConfig(**checkpoint["model_args"])), checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def pick_device(requested="auto", local_rank=None):
    """'auto' means CUDA (this process's GPU under DDP), then Apple's MPS, then the CPU. A named device must exist
    here: torch's own message for a missing one is about device indices or a build option."""
    if requested != "auto":
        try:
            named = torch.device(requested)
        except RuntimeError:
            named = None
        if named is None or named.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unknown device '{requested}': use auto, cpu, cuda, cuda:N or mps")
        kind = named.type
        present = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                   "mps": int(torch.backends.mps.is_available())}[kind]
        if (named.index or 0) >= present:
            raise ValueError(f"device '{requested}' is not on this machine ({present} {kind} device(s) found): use "
                             f"--device=auto, which picks the best one present, or --device=cpu")
        if requested == "cuda" and local_rank is not None:  # under DDP each process takes its own GPU
            return f"cuda:{local_rank}"
        return requested
    if torch.cuda.is_available():
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(device_type, requested="auto"):
    """The compute dtype's name and the autocast context that applies it. 'auto' is bfloat16 on CUDA where the
    GPU has it, float16 on older CUDA GPUs (train.py then scales the loss), and float32 elsewhere: on CPUs
    bfloat16 autocast is available (dtype=bfloat16) but rarely faster for models this small."""
    dtype = requested
    if dtype == "auto":
        on_cuda = device_type == "cuda"
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if on_cuda else "float32"
    if dtype == "float32":
        return dtype, nullcontext()
    return dtype, torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
