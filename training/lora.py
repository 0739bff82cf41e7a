"""
LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), in its minimal form: the baseline the
mixture-of-depths ensemble experiment compares with and combines with (`base = "lora"` in train.py). Not a
technique of its own here: the base GPT is frozen and every adapted linear computes W x + (alpha / r) B A x.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError

LORA_TARGETS = "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"  # every linear of every block


class LoRA(nn.Module):
    """Adapters on the blocks' linears that `targets` names, with A random and B zero so that step 0 is the base
    model. targets: comma-separated ends of a linear's name in the blocks ('h.{i}.attn.c_proj' for block i's):
    'mlp.c_fc' adapts it in every block, 'h.7.mlp.c_fc' in block 7 alone (a count of trainable parameters can be
    matched that way). The adapters are added by forward hooks, so the GPT's own modules and state_dict keys stay as
    they are (a tuned run's 'gpt.*' weights remain a plain checkpoint); the adapters live here, under 'lora.*'."""

    def __init__(self, gpt, rank, alpha, targets=LORA_TARGETS):
        super().__init__()
        self.scale = alpha / rank
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        ends = [t.strip() for t in targets.split(",")]
        matched = set()
        for i, block in enumerate(gpt.transformer.h):
            for name, linear in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                                 ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
                full = f"h.{i}.{name}"
                chosen = [end for end in ends if full == end or full.endswith("." + end)]
                if not chosen:
                    continue
                matched.update(chosen)
                key = f"h{i}_{name.replace('.', '_')}"
                device = linear.weight.device
                self.A[key] = nn.Parameter(torch.empty(rank, linear.in_features, device=device))
                self.B[key] = nn.Parameter(torch.zeros(linear.out_features, rank, device=device))
                nn.init.kaiming_uniform_(self.A[key], a=math.sqrt(5))  # what nn.Linear uses for its weight
                linear.register_forward_hook(self.adapter(key))
        unmatched = [end for end in ends if end not in matched]
        if unmatched:
            raise ConfigError(f"lora_targets names no linear of the GPT's {len(gpt.transformer.h)} blocks: "
                              f"{', '.join(repr(e) for e in unmatched)}; name them as 'attn.c_attn', 'attn.c_proj', "
                              f"'mlp.c_fc', 'mlp.c_proj', or 'h.<block>.' and one of those")

    def adapter(self, key):
        def add_low_rank_update(linear, inputs, output):
            return output + self.scale * F.linear(F.linear(inputs[0], self.A[key]), self.B[key])
        return add_low_rank_update


def merge_lora(gpt_state, lora_state, scale):
    """The plain GPT weights a LoRA-tuned run stands for, W + scale * B A for every adapted linear: a new run that
    starts from a LoRA checkpoint (init_from) continues from the tuned model rather than from the frozen base its
    adapters sat on. gpt_state and lora_state are that run's 'gpt.*' and 'lora.*' entries, prefixes removed."""
    merged = dict(gpt_state)
    for key in (k[len("A."):] for k in lora_state if k.startswith("A.")):
        block, layer = key.split("_", 1)  # 'h3', 'attn_c_attn'
        weight = f"transformer.h.{block[1:]}.{layer.replace('_', '.', 1)}.weight"
        merged[weight] = gpt_state[weight] + scale * lora_state[f"B.{key}"] @ lora_state[f"A.{key}"]
    return merged
