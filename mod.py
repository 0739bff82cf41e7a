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
    hidden state;
  - the prediction is the mixture of logits  logits = sum_j g_j * l_j;
  - the loss is CE(logits, y) + lambda * sum over the non-final late layers of KL(P_final || P_j), a distillation
    from the final layer's distribution (the teacher, detached) that teaches the earlier late layers to speak the
    output language.
The paper tunes a pretrained model this way, alone ("MoD only": base frozen, only the norms and the router train,
a few thousand parameters) or on top of another tuning method (full fine-tuning, LoRA).

Decisions where the paper is silent (ours; docs/mod.md gives the reasons and the measurements):
  - One vocabulary matmul for the mixture: lm_head is linear without bias, so
    sum_j g_j * lm_head(n_j) == lm_head(sum_j g_j * n_j); the mixed logits cost one head call.
  - The router starts at zero, so routing starts uniform.
  - The loss also subtracts router_entropy * mean over tokens of H(g) = -sum_j g_j log g_j (0.01 by default).
    Without it the router collapses onto one late layer: the final layer learns only through the mixture, its
    gradient scaled by its routing weight g_final (the teacher is detached), so once the router leans away from it
    the final layer is starved, falls behind and is left for good. The term is the smallest remedy our ablation
    found that holds over a whole run.
  - The distillation is the paper's forward KL(P_final || P_j), teacher detached, temperature 1, computed in
    training on a random share `distill_frac` of the positions (every position in evaluation, one layer at a
    time). It moves the late layers and their norms, never the shared LM head, which also makes the teacher.
  - k = 1 is the plain model: no ensemble is built.
  - What the base GPT does (trains, frozen, frozen under LoRA adapters) is train.py's `base` setting; LoRA, the
    baseline the paper combines MoD with, is in training/lora.py. Under a frozen base the final layer's norm is
    ln_f, which belongs to the GPT and stays frozen unless train_ln_f is set; the tuning configs set it, so that
    every late layer's norm trains alike (config/mod/tune_mod_only.py says why).

Layers are named by their 0-based block index j in logs: layer{j}_ce is the CE of layer j through its trained norm,
layer{j}_lens through ln_f (the untrained "logit lens"), layer{j}_rescue the share of tokens that layer j gets
right (argmax) while the final layer gets them wrong, route{j} the mean routing weight. best_layer_ce is the
ensemble's ceiling: the mean over tokens of min_j CE_j, the loss of a router that always picked, in hindsight, the
late layer that is best for that token.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F


def depth_problem(mod_k, n_layer):
    """What is wrong with an ensemble of the last mod_k layers of a GPT of n_layer blocks, or None: asked of the
    settings, and again by train.py of a tuned checkpoint's n_layer."""
    if not 0 <= mod_k <= n_layer:
        return f"mod_k must be between 0 and n_layer ({n_layer}), got {mod_k}"
    return None


def settings_problems(s):
    """What is wrong with the ensemble settings of train.py, each naming the setting and the fix."""
    problems = []
    if s["init_from"] in ("scratch", "resume"):  # else n_layer is the checkpoint's: train.build_model asks then
        depth = depth_problem(s["mod_k"], s["n_layer"])
        if depth:
            problems.append(depth)
    if s["mod_lambda"] < 0 or s["mod_router_entropy"] < 0 or not 0.0 < s["mod_distill_frac"] <= 1.0:
        problems.append(f"mod_lambda and mod_router_entropy must be >= 0 and mod_distill_frac in (0, 1], got "
                        f"{s['mod_lambda']}, {s['mod_router_entropy']} and {s['mod_distill_frac']}")
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


def report_line(record, s):
    """The ensemble's line in the run's report of an evaluation (training/run_report.py), or None when it is off: the
    routing weight of each late layer, each layer's loss alone, the mixture's, and a perfect per-token router's."""
    routes = sorted((int(k[len("val_route"):]), v) for k, v in record.items() if k.startswith("val_route"))
    if not routes:
        return None
    n_layer = routes[-1][0] + 1  # the final layer is always in the ensemble
    weights = ", ".join(f"{w:.2f} on {layer_name(j, n_layer)}" for j, w in routes)
    alone = ", ".join(f"{record[f'val_layer{j}_ce']:.4f}" for j, _ in routes)
    return (f"depth ensemble: routing weight {weights}; each layer alone {alone}, the mixture "
            f"{record['val_loss']:.4f}, a perfect per-token router {record['val_best_layer_ce']:.4f}")


def layer_name(j, n_layer):
    """Block j (0-based) as a reader counts it: 'layer 3 of 4', the last one 'layer 4 of 4 (final)'."""
    return f"layer {j + 1} of {n_layer}" + (" (final)" if j == n_layer - 1 else "")


def plot_panel(records, s):
    """The ensemble's panel of loss.png (training/plot.py) as its title and {curve label: logged key}, or None when it
    is off: the mean routing weight of each late layer."""
    routes = sorted((k for k in records[-1] if k.startswith("val_route")), key=lambda k: int(k[len("val_route"):]))
    if not routes:
        return None
    return "depth ensemble: mean routing weight per late layer", {f"layer {k[len('val_route'):]}": k for k in routes}


class DepthEnsemble(nn.Module):
    """Norms and router of the ensemble over the last k layers; the GPT (its ln_f and lm_head) is passed in, not
    owned, so its weights stay in one place and the LM head is the shared, tied one."""

    def __init__(self, gpt, k, distill_lambda=0.5, distill_frac=0.125, router_entropy=0.01):
        super().__init__()
        self.k, self.first = k, gpt.config.n_layer - k
        self.distill_lambda, self.distill_frac = distill_lambda, distill_frac
        self.router_entropy = router_entropy
        ln_f = gpt.transformer.ln_f
        self.norms = nn.ModuleList()
        for _ in range(k - 1):  # fresh parameters (trainable even when the GPT is frozen) holding ln_f's values
            norm = nn.LayerNorm(gpt.config.n_embd, bias=ln_f.bias is not None).to(ln_f.weight.device)
            norm.load_state_dict(ln_f.state_dict())
            self.norms.append(norm)
        self.router = nn.Linear(gpt.config.n_embd, k)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)

    def forward(self, hidden, gpt):
        """hidden: every block's output (a list of n_layer tensors (..., n_embd)). Returns the mixed logits,
        the routing weights (..., k) and the k normalised late states, final layer last."""
        late = hidden[self.first:]
        # n_j = norm_j(h_j) for the non-final late layers, ln_f(h_final) for the final one
        normed = [norm(h) for norm, h in zip(self.norms, late[:-1])] + [gpt.transformer.ln_f(late[-1])]
        # exercise: mod-mixture
        # g = softmax(W_r x + b_r), x the final normalised state
        weights = F.softmax(self.router(normed[-1]).float(), dim=-1)
        # logits = sum_j g_j * lm_head(n_j) = lm_head(sum_j g_j * n_j): one vocabulary matmul
        mixed = sum(weights[..., j, None].to(n.dtype) * n for j, n in enumerate(normed))
        # end exercise
        return gpt.lm_head(mixed), weights, normed

    def aux_loss(self, gpt, hidden, normed, weights, y):
        """lambda * distillation - router_entropy * the routing weights' mean entropy, and the stats to log: during
        training only the distillation (on a random subset of positions), which a training step does not log; in
        evaluation every per-layer diagnostic on every position and the mean routing weights."""
        if self.training:
            stats = {}
            flat = [n.flatten(0, -2) for n in normed]
            count = max(1, round(self.distill_frac * flat[0].size(0)))
            pick = torch.randperm(flat[0].size(0), device=flat[0].device)[:count]
            # the teacher's head is detached too: the distillation moves the late layers, never the shared lm_head
            distill = self.distillation([F.linear(n[pick], gpt.lm_head.weight.detach()) for n in flat])
        else:
            stats = {f"route{self.first + j}": w for j, w in enumerate(weights.flatten(0, -2).mean(0).detach())}
            distill = self.evaluate_layers(gpt, hidden, normed, y, stats)
        stats["distill"] = distill.detach()
        # H(g) = -sum_j g_j log g_j, averaged over tokens
        entropy = torch.special.entr(weights).sum(-1).mean()
        # aux = lambda * sum_j KL(P_final || P_j) - router_entropy * H(g)
        return self.distill_lambda * distill - self.router_entropy * entropy, stats

    def distillation(self, layer_logits):
        """Sum over the non-final late layers of the mean KL between the final layer's distribution and theirs."""
        # exercise: mod-distillation
        logp = [F.log_softmax(logits.float(), dim=-1) for logits in layer_logits]
        # sum over j < final of KL(P_final || P_j), the final layer the (detached) teacher
        return sum(kl_div(logp[-1].detach(), student) for student in logp[:-1])
        # end exercise

    @torch.no_grad()
    def evaluate_layers(self, gpt, hidden, normed, y, stats):
        """Per-layer CE through the trained norm and through ln_f (the logit lens), the rescue rate, the per-token
        best layer's CE (the ceiling) and the distillation on every position, holding one non-final layer's logits
        at a time."""
        y = y.flatten()
        final_logp = F.log_softmax(gpt.lm_head(normed[-1]).flatten(0, -2).float(), dim=-1)
        final_right = final_logp.argmax(-1) == y
        best = F.nll_loss(final_logp, y, reduction="none")  # per token, min over the layers seen so far
        stats[f"layer{self.first + self.k - 1}_ce"] = best.mean()
        distill = 0.0
        for j, n in enumerate(normed[:-1]):
            layer = self.first + j
            logp = F.log_softmax(gpt.lm_head(n).flatten(0, -2).float(), dim=-1)
            ce = F.nll_loss(logp, y, reduction="none")
            stats[f"layer{layer}_ce"] = ce.mean()
            best = torch.minimum(best, ce)
            stats[f"layer{layer}_rescue"] = ((logp.argmax(-1) == y) & ~final_right).float().mean()
            distill = distill + kl_div(final_logp, logp)
            del logp
            stats[f"layer{layer}_lens"] = F.cross_entropy(gpt.head(hidden[layer]).flatten(0, -2).float(), y)
        # the ceiling: mean over tokens of min_j CE_j, the best late layer for each token chosen in hindsight
        stats["best_layer_ce"] = best.mean()
        return distill


def kl_div(teacher, student):
    """Mean over positions of KL(P_teacher || P_student), from log-probabilities."""
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")  # F.kl_div(q, p): KL(exp(p) || exp(q))
