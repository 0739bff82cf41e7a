"""
Mixture-of-Depths ensemble (Luo & Specia 2024, "Tuning Language Models by Mixture-of-Depths Ensemble",
arXiv:2410.13077): the last k layers of the GPT vote on the next token.

Not to be confused with Raposo et al. 2024, "Mixture-of-Depths", where a router lets tokens skip blocks to save
compute. Same name, different method: here every token runs every block, and the "depths" are an ensemble of
output heads at the late layers.

The method. Intermediate layers, trained to predict the next token, reach losses close to the final layer's and
get different tokens right. So with h_j the output of block j and J the last k blocks (the final one included):
  - each late layer gets its own normalisation: n_j = norm_j(h_j), a new LayerNorm per non-final late layer
    (initialised as a copy of ln_f), while the final layer keeps ln_f;
  - all of them share the LM head: l_j = lm_head(n_j);
  - a router gives per-token weights over the k layers, g = softmax(W_r x + b_r), with x the final normalised
    hidden state (or, as an option, the input to the late stack);
  - the prediction is the mixture of logits  logits = sum_j g_j * l_j;
  - the loss is CE(logits, y) + lambda * sum over the non-final late layers of KL(P_final || P_j), a distillation
    from the final layer's distribution (the teacher, detached) that teaches the earlier late layers to speak the
    output language.
The paper tunes a pretrained model this way, alone ("MoD only": base frozen, only the norms and the router train,
a few thousand parameters) or on top of another tuning method (full fine-tuning, LoRA).

Decisions where the paper is silent (ours):
  - One vocabulary matmul for the mixture: lm_head is linear without bias, so
    sum_j g_j * lm_head(n_j) == lm_head(sum_j g_j * n_j); the mixed logits cost one head call.
  - The router's weights start at zero, so routing starts uniform; `router_bias` optionally starts the final
    layer's routing logit higher.
  - The distillation needs each layer's own logits, k head calls on a 50k vocabulary. During training it is
    computed on a random subset of the batch's positions (`distill_frac`), an unbiased estimate of the mean KL
    that bounds both its memory and its cost; evaluation uses every position, one layer at a time.
  - The distillation moves the late layers and their norms, never the shared LM head: the head serves the
    mixture and the teacher too, so letting the students' KL pull it would move the teacher's distribution, which
    the detach is there to prevent. (It also saves the head's weight-gradient matmul for each student.)
  - KL direction and the teacher's detach are knobs (`kl`: 'forward' is KL(P_final || P_j), 'reverse' is
    KL(P_j || P_final)); temperature 1.
  - k = 1 is the plain model: no ensemble is built.
  - LoRA, the baseline the paper combines MoD with, is here in its minimal form (`LoRA` at the end of the file).

Layers are named by their 0-based block index j in logs: layer{j}_ce is the CE of layer j through its trained norm,
layer{j}_lens through ln_f (the untrained "logit lens"), layer{j}_rescue the share of tokens that layer j gets
right (argmax) while the final layer gets them wrong, route{j} the mean routing weight.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

TUNE_MODES = ("full", "mod_only", "lora", "lora_mod")


def settings_problems(s):
    """What is wrong with the ensemble (and LoRA) settings of train.py, each naming the setting and the fix."""
    problems = []
    tuning = s["init_from"] not in ("scratch", "resume")  # n_layer comes from the checkpoint: build_model checks
    if s["mod_k"] < 0 or (not tuning and s["mod_k"] > s["n_layer"]):
        problems.append(f"mod_k must be between 0 and n_layer ({s['n_layer']}), got {s['mod_k']}")
    if s["mod_router_input"] == "input" and not tuning and s["mod_k"] == s["n_layer"]:
        problems.append("mod_router_input='input' reads the input to the late stack, the embedding when mod_k "
                        "== n_layer: lower mod_k or use mod_router_input='final'")
    if s["mod_tune"] not in TUNE_MODES:
        problems.append(f"mod_tune must be one of {TUNE_MODES}, got '{s['mod_tune']}'")
    if s["mod_tune"] in ("mod_only", "lora_mod") and s["mod_k"] < 2:
        problems.append(f"mod_tune='{s['mod_tune']}' trains the depth ensemble: set mod_k to 2 or more")
    if s["mod_tune"] != "full" and s["init_from"] == "scratch":
        problems.append(f"mod_tune='{s['mod_tune']}' freezes the base model: tune a pretrained one with "
                        f"--init_from=<path of a ckpt.pt>, or use mod_tune='full'")
    if s["mod_router_input"] not in ("final", "input"):
        problems.append(f"mod_router_input must be 'final' or 'input', got '{s['mod_router_input']}'")
    if s["mod_kl"] not in ("forward", "reverse"):
        problems.append(f"mod_kl must be 'forward' or 'reverse', got '{s['mod_kl']}'")
    if s["mod_lambda"] < 0 or not 0.0 < s["mod_distill_frac"] <= 1.0:
        problems.append(f"mod_lambda must be >= 0 and mod_distill_frac in (0, 1], got {s['mod_lambda']} and "
                        f"{s['mod_distill_frac']}")
    if s["lora_rank"] < 1:
        problems.append(f"lora_rank must be at least 1, got {s['lora_rank']}")
    return problems


COLLAPSED = 0.95  # a late layer with this much of the mean routing weight: the ensemble is one layer


def health_warning(record):
    """A warning when the router has collapsed onto one late layer (mean routing weight over the validation tokens
    of at least COLLAPSED), else None. record is an evaluation's log record."""
    routes = {int(k[len("val_route"):]): v for k, v in record.items() if k.startswith("val_route")}
    if not routes:
        return None
    layer, weight = max(routes.items(), key=lambda item: item[1])
    if weight < COLLAPSED:
        return None
    return (f"the depth ensemble has collapsed onto layer {layer}: it holds {weight:.2f} of the routing weight, "
            f"so the other late layers add nothing (docs/mod.md)")


class DepthEnsemble(nn.Module):
    """Norms and router of the ensemble over the last k layers; the GPT (its ln_f and lm_head) is passed in, not
    owned, so its weights stay in one place and the LM head is the shared, tied one."""

    def __init__(self, gpt, k, router_input="final", router_bias=0.0, distill_lambda=0.5, distill_frac=0.125,
                 kl="forward", detach_teacher=True):
        super().__init__()
        n_layer = gpt.config.n_layer
        if not 2 <= k <= n_layer:
            raise ValueError(f"mod_k must be between 2 and n_layer ({n_layer}) for an ensemble, got {k}")
        if router_input == "input" and k == n_layer:
            raise ValueError("mod_router_input='input' reads the input to the late stack, which is the embedding "
                             "when mod_k == n_layer: lower mod_k or use mod_router_input='final'")
        self.k, self.first = k, n_layer - k
        self.router_input, self.distill_lambda, self.distill_frac = router_input, distill_lambda, distill_frac
        self.kl, self.detach_teacher = kl, detach_teacher
        ln_f = gpt.transformer.ln_f
        self.norms = nn.ModuleList()
        for _ in range(k - 1):  # fresh parameters (trainable even when the GPT is frozen) holding ln_f's values
            norm = nn.LayerNorm(gpt.config.n_embd, bias=ln_f.bias is not None).to(ln_f.weight.device)
            norm.load_state_dict(ln_f.state_dict())
            self.norms.append(norm)
        self.router = nn.Linear(gpt.config.n_embd, k)
        nn.init.zeros_(self.router.weight)
        with torch.no_grad():
            self.router.bias.zero_()
            self.router.bias[-1] = router_bias

    def forward(self, hidden, gpt):
        """hidden: every block's output (a list of n_layer tensors (..., n_embd)). Returns the mixed logits,
        the routing weights (..., k) and the k normalised late states, final layer last."""
        late = hidden[self.first:]
        normed = [norm(h) for norm, h in zip(self.norms, late[:-1])] + [gpt.transformer.ln_f(late[-1])]
        router_in = normed[-1] if self.router_input == "final" else hidden[self.first - 1]
        weights = F.softmax(self.router(router_in).float(), dim=-1)
        mixed = sum(weights[..., j, None].to(n.dtype) * n for j, n in enumerate(normed))
        return gpt.lm_head(mixed), weights, normed

    def aux_loss(self, gpt, hidden, normed, weights, y):
        """lambda * distillation, and the stats to log: during training only the cheap ones (the distillation on
        a random subset of positions), in evaluation every per-layer diagnostic on every position."""
        stats = {f"route{self.first + j}": w.detach() for j, w in enumerate(weights.flatten(0, -2).mean(0))}
        if self.training:
            flat = [n.flatten(0, -2) for n in normed]
            count = max(1, round(self.distill_frac * flat[0].size(0)))
            pick = torch.randperm(flat[0].size(0), device=flat[0].device)[:count]
            distill = self.distillation([F.linear(n[pick], gpt.lm_head.weight.detach()) for n in flat])
        else:
            distill = self.evaluate_layers(gpt, hidden, normed, y, stats)
        stats["distill"] = distill.detach()
        return self.distill_lambda * distill, stats

    def distillation(self, layer_logits):
        """Sum over the non-final late layers of the mean KL between the final layer's distribution and theirs."""
        logp = [F.log_softmax(logits.float(), dim=-1) for logits in layer_logits]
        teacher = logp[-1].detach() if self.detach_teacher else logp[-1]
        return sum(self.kl_div(teacher, student) for student in logp[:-1])

    def kl_div(self, teacher, student):
        """Mean over positions of KL(P_teacher || P_student) ('forward') or KL(P_student || P_teacher), from
        log-probabilities."""
        p, q = (teacher, student) if self.kl == "forward" else (student, teacher)
        return F.kl_div(q, p, log_target=True, reduction="batchmean")  # F.kl_div(q, p) is KL(exp(p) || exp(q))

    @torch.no_grad()
    def evaluate_layers(self, gpt, hidden, normed, y, stats):
        """Per-layer CE through the trained norm and through ln_f (the logit lens), the rescue rate and the
        distillation on every position, holding one non-final layer's logits at a time."""
        y = y.flatten()
        final_logp = F.log_softmax(gpt.lm_head(normed[-1]).flatten(0, -2).float(), dim=-1)
        final_right = final_logp.argmax(-1) == y
        stats[f"layer{self.first + self.k - 1}_ce"] = F.nll_loss(final_logp, y)
        distill = 0.0
        for j, n in enumerate(normed[:-1]):
            layer = self.first + j
            logp = F.log_softmax(gpt.lm_head(n).flatten(0, -2).float(), dim=-1)
            stats[f"layer{layer}_ce"] = F.nll_loss(logp, y)
            stats[f"layer{layer}_rescue"] = ((logp.argmax(-1) == y) & ~final_right).float().mean()
            distill = distill + self.kl_div(final_logp, logp)
            del logp
            stats[f"layer{layer}_lens"] = F.cross_entropy(gpt.head(hidden[layer]).flatten(0, -2).float(), y)
        return distill


class LoRA(nn.Module):
    """Minimal LoRA (Hu et al. 2021) on every block's c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj:
    W x + (alpha / r) * B A x, with A random and B zero so that step 0 is the base model. The adapters are added
    by forward hooks, so the GPT's own modules and state_dict keys stay as they are (a tuned run's 'gpt.*' weights
    remain a plain checkpoint); the adapters live here, under 'lora.*'."""

    def __init__(self, gpt, rank, alpha):
        super().__init__()
        self.scale = alpha / rank
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for i, block in enumerate(gpt.transformer.h):
            for name, linear in (("attn_c_attn", block.attn.c_attn), ("attn_c_proj", block.attn.c_proj),
                                 ("mlp_c_fc", block.mlp.c_fc), ("mlp_c_proj", block.mlp.c_proj)):
                key = f"h{i}_{name}"
                device = linear.weight.device
                self.A[key] = nn.Parameter(torch.empty(rank, linear.in_features, device=device))
                self.B[key] = nn.Parameter(torch.zeros(linear.out_features, rank, device=device))
                nn.init.kaiming_uniform_(self.A[key], a=math.sqrt(5))  # what nn.Linear uses for its weight
                linear.register_forward_hook(self.adapter(key))

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
