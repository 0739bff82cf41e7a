"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.
"""

import torch.nn as nn
from torch.nn import functional as F

from mod import LoRA, DepthEnsemble


class LanguageModel(nn.Module):

    def __init__(self, gpt, settings):
        super().__init__()
        self.gpt = gpt
        self.label_smoothing = settings.get("label_smoothing", 0.0)
        mod_k, mod_tune = settings.get("mod_k", 0), settings.get("mod_tune", "full")
        self.mod = DepthEnsemble(gpt, mod_k, settings["mod_router_input"], settings["mod_router_bias"],
                                 settings["mod_lambda"], settings["mod_distill_frac"], settings["mod_kl"],
                                 settings["mod_detach_teacher"]) if mod_k > 1 else None
        if mod_tune != "full":  # the base is frozen; only the ensemble's and LoRA's own parameters train
            gpt.requires_grad_(False)
        self.lora = LoRA(gpt, settings["lora_rank"], settings["lora_alpha"]) if "lora" in mod_tune else None

    def forward(self, x, y, extra):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports.
        """
        hidden = self.gpt.body(x)
        if self.mod is not None:  # the depth ensemble's mixed logits are the model's prediction
            logits, weights, normed = self.mod(hidden, self.gpt)
        else:
            logits = self.gpt.head(hidden[-1])
        flat_logits, flat_y = logits.flatten(0, 1), y.flatten()
        ce = F.cross_entropy(flat_logits, flat_y)
        stats = {"ce": ce.detach()}
        loss = ce
        if self.training and self.label_smoothing > 0:
            loss = F.cross_entropy(flat_logits, flat_y, label_smoothing=self.label_smoothing)
        if self.mod is not None:
            distill, mod_stats = self.mod.aux_loss(self.gpt, hidden, normed, weights, y)
            loss = loss + distill
            stats.update(mod_stats)
        return loss, stats

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        logits_fn = (lambda hidden: self.mod(hidden, self.gpt)[0]) if self.mod is not None else None
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache, logits_fn=logits_fn)
