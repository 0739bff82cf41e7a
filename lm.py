"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.
"""

import torch.nn as nn
from torch.nn import functional as F

from planner import PlanConditioner


class LanguageModel(nn.Module):

    def __init__(self, gpt, settings):
        super().__init__()
        self.gpt = gpt
        self.label_smoothing = settings.get("label_smoothing", 0.0)
        self.plan = PlanConditioner(settings, gpt.config) if settings.get("plan_mode", "none") != "none" else None
        if settings.get("plan_freeze_lm", False):
            self.gpt.requires_grad_(False)

    def forward(self, x, y, extra):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports.
        """
        attn_add, plan_loss, plan_stats = self.plan(extra) if self.plan is not None else (None, None, {})
        logits = self.logits(x, extra, attn_add)
        flat_logits, flat_y = logits.flatten(0, 1), y.flatten()
        ce = F.cross_entropy(flat_logits, flat_y)
        stats = {"ce": ce.detach(), **plan_stats}
        loss = ce
        if self.training and self.label_smoothing > 0:
            loss = F.cross_entropy(flat_logits, flat_y, label_smoothing=self.label_smoothing)
        if plan_loss is not None:
            loss = loss + plan_loss
        return loss, stats

    def logits(self, x, extra, attn_add=None):
        return self.gpt.head(self.gpt.body(x, attn_add)[-1])

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        attn_add_fn = self.plan.generation_hook() if self.plan is not None else None
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache, attn_add_fn=attn_add_fn)
