"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.
"""

from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

import ngram
from lora import LoRA
from mod import DepthEnsemble
from model import GPT, GPTConfig
from planner import PLANNER_MODES, SHUFFLED, PlanConditioner
from replanner import Replanner


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

    def logits(self, x, extra, plan_mode=None):
        """Next-token logits (B, T, V) for inputs x with the techniques that are on, and what they computed on the
        way: 'hidden' (every block's output), 'weights' and 'normed' (the ensemble's routing weights and normalised
        late states, or None), 'plan_loss' and 'plan_stats' (the planner's). Training, evaluation, scoring, sampling
        and explain.py all read the model through here. plan_mode conditions this call on another plan (explain.py's
        uniform plan) without changing the model."""
        attn_add, plan_loss, plan_stats = self.plan(extra, plan_mode) if self.plan is not None else (None, None, {})
        hidden = self.gpt.body(x, attn_add)
        weights = normed = None
        if self.mod is not None:  # the depth ensemble's mixed logits are the model's prediction
            logits, weights, normed = self.mod(hidden, self.gpt)
        else:
            logits = self.gpt.head(hidden[-1])
        return logits, dict(hidden=hidden, weights=weights, normed=normed, plan_loss=plan_loss, plan_stats=plan_stats)

    def forward(self, x, y, extra):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports.
        """
        logits, parts = self.logits(x, extra)
        loss, stats = self.next_token_loss(logits, y, extra)
        stats.update(parts["plan_stats"])
        if not self.training and self.plan is not None and self.plan.mode in ("oracle", *PLANNER_MODES):
            # what the LM loses when each sentence gets another sentence's plan: how much it reads its own
            shuffled, _ = self.logits(x, extra, SHUFFLED)
            stats["plan_gain"] = F.cross_entropy(shuffled.flatten(0, 1).float(), y.flatten()) - stats["ce"]
        if self.mod is not None:
            distill, mod_stats = self.mod.aux_loss(self.gpt, parts["hidden"], parts["normed"], parts["weights"], y)
            loss = loss + distill
            stats.update(mod_stats)
        if parts["plan_loss"] is not None:
            loss = loss + parts["plan_loss"]
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

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, plan_data=None, vocab=None):
        """Sample with the techniques in the loop: the ensemble's mixed logits, and the planner's plan of each
        sentence, re-planned from the text as it is written (replanner.py: it needs the run's PlanData and
        vocabulary)."""
        logits_fn = (lambda hidden: self.mod(hidden, self.gpt)[0]) if self.mod is not None else None
        attn_add_fn = Replanner(self.plan, plan_data, vocab) if self.plan is not None else None
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache, logits_fn=logits_fn,
                                 attn_add_fn=attn_add_fn)


@torch.no_grad()
def mean_stats(model, batches, autocast=nullcontext()):
    """Mean of every scalar the model reports over batches of (x, y, extra), each weighted by its number of
    windows, in eval mode: what train.py's evaluations, its score and explain.py's tables report."""
    model.eval()
    sums, windows = {}, 0
    for x, y, extra in batches:
        with autocast:
            _, stats = model(x, y, extra)
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value.float().item() * len(x)
        windows += len(x)
    model.train()
    return {name: total / windows for name, total in sums.items()}


def load_language_model(checkpoint, device):
    """The LanguageModel a checkpoint of train.py holds, in eval mode on device."""
    model = LanguageModel(GPT(GPTConfig(**checkpoint["model_args"])), checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
