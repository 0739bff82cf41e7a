"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.
"""

import torch.nn as nn
from torch.nn import functional as F

import ngram


class LanguageModel(nn.Module):

    def __init__(self, gpt, settings):
        super().__init__()
        self.gpt = gpt
        self.label_smoothing = settings.get("label_smoothing", 0.0)
        self.ngram_alpha = settings.get("ngram_alpha", 0.0)

    def forward(self, x, y, extra):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports.
        """
        logits = self.logits(x, extra)
        if self.training and "ngram_ids" in extra:
            loss, ce = ngram.soft_target_loss(logits, y, extra["ngram_ids"], extra["ngram_probs"], self.ngram_alpha)
            return loss, {"ce": ce.detach()}
        flat_logits, flat_y = logits.flatten(0, 1), y.flatten()
        ce = F.cross_entropy(flat_logits, flat_y)
        stats = {"ce": ce.detach()}
        if self.training and self.label_smoothing > 0:
            return F.cross_entropy(flat_logits, flat_y, label_smoothing=self.label_smoothing), stats
        return ce, stats

    def logits(self, x, extra):
        return self.gpt.head(self.gpt.body(x)[-1])

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache)
