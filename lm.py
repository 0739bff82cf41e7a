"""
The language model as train.py trains it and sample.py samples it: the GPT of model.py plus whichever techniques
the settings switch on. Everything that trains lives in this one module so that DDP and torch.compile wrap a
single forward, and one state_dict holds the whole run.

With every technique off, `LanguageModel` computes exactly what `GPT.forward` computes.

Each technique is one file (ngram.py, mod.py, planner.py) that only this module imports, and only where it is
there: delete one and the plain GPT still trains, evaluates, saves and samples (tests/test_standalone.py). The rest
of the repository finds the techniques in TECHNIQUES, never the other way round: each offers settings_problems(s)
to training/settings_checks.py, health_warning(record) and report_line(record, s) to training/run_report.py, and
plot_panel(records, s) to training/plot.py.
"""

import importlib
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError
from data.sentences import PlanData
from model import GPT, GPTConfig
from training.lora import LORA_TARGETS, LoRA
from training.replanner import Replanner


def optional(name):
    """The technique module `name`, or None when its file is not there. A present file that fails to import still
    fails: only the module's own absence makes it optional."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


ngram, mod, planner = optional("ngram"), optional("mod"), optional("planner")
# In the order the run reports them: its settings problems, its lines and its plot's panels.
TECHNIQUES = tuple(technique for technique in (mod, planner, ngram) if technique is not None)


def switched_on(s):
    """The names of the techniques the settings switch on. A checkpoint older than a technique lacks its switch:
    off."""
    return {name for name, on in (("ngram", s.get("ngram_mode", "off") != "off"), ("mod", s.get("mod_k", 0) > 1),
                                  ("planner", s.get("plan_mode", "none") != "none")) if on}


def missing_problems(s):
    """A technique the settings switch on whose file is not here cannot be quietly left out."""
    present = {technique.__name__ for technique in TECHNIQUES}
    return [f"the settings switch on {name}.py, which is not in this copy of the repository: switch it off (as "
            f"config/plain.py does) or put the file back" for name in sorted(switched_on(s) - present)]


def settings_problems(s):
    """What is wrong with the techniques' settings of train.py: each present technique checks its own."""
    return missing_problems(s) + [problem for technique in TECHNIQUES for problem in technique.settings_problems(s)]


def depth_problem(s, n_layer):
    """What is wrong with the settings for a GPT of n_layer blocks, or None: training/tuning.py asks it of a
    checkpoint's depth, which the settings checks cannot know."""
    return mod.depth_problem(s["mod_k"], n_layer) if mod is not None else None


class LanguageModel(nn.Module):

    def __init__(self, gpt, ensemble=None, plan=None, lora=None, freeze_gpt=False, train_ln_f=False, ngram_alpha=0.0,
                 label_smoothing=0.0):
        """gpt: the GPT (model.py). ensemble: mod.DepthEnsemble over gpt's late layers, or None. plan:
        planner.PlanConditioner, or None. lora: lora.LoRA adapters hooked into gpt, or None. freeze_gpt: only the
        techniques' own parameters (and LoRA's) train, and gpt's final LayerNorm where train_ln_f. ngram_alpha: the
        n-gram target's weight in the loss of a batch that carries one (ngram.py). label_smoothing: the classic soft
        target, for batches without an n-gram one. from_settings builds these from train.py's settings."""
        super().__init__()
        self.gpt = gpt
        self.label_smoothing = label_smoothing
        self.ngram_alpha = ngram_alpha
        self.mod = ensemble
        self.plan = plan
        if freeze_gpt:
            gpt.requires_grad_(False)
            gpt.transformer.ln_f.requires_grad_(train_ln_f)
        self.lora = lora

    @classmethod
    def from_settings(cls, gpt, s):
        """The LanguageModel of train.py's settings s (a checkpoint keeps them as its 'config'): the one place that
        reads them. Only the switches of a technique that is off are read (switched_on)."""
        missing = missing_problems(s)
        if missing:
            raise ConfigError("; ".join(missing))
        on, base = switched_on(s), s.get("base", "train")
        ensemble = mod.DepthEnsemble(gpt, s["mod_k"], s["mod_lambda"], s["mod_distill_frac"],
                                     s["mod_router_entropy"]) if "mod" in on else None
        plan = planner.PlanConditioner(s["plan_mode"], s["plan_k"], planner.EMBEDDERS[s["plan_embedder"]],
                                       s["plan_context"], s["plan_tau"], s["plan_lambda"], gpt.config.n_layer,
                                       gpt.config.n_embd) if "planner" in on else None
        lora = LoRA(gpt, s["lora_rank"], s["lora_alpha"], s.get("lora_targets", LORA_TARGETS)) if base == "lora" \
            else None
        return cls(gpt, ensemble, plan, lora, freeze_gpt=base != "train", train_ln_f=s.get("train_ln_f", False),
                   ngram_alpha=s.get("ngram_alpha", 0.0),
                   label_smoothing=s.get("label_smoothing", 0.0))

    def logits(self, x, extra, plan_mode=None):
        """Next-token logits (B, T, V) for inputs x with the techniques that are on, and what they computed on the
        way: 'hidden' (every block's output), 'weights' and 'normed' (the ensemble's routing weights and normalised
        late states, or None), 'plan_loss' and 'plan_stats' (the planner's). Training, evaluation, scoring, sampling
        and tools/explain.py all read the model through here. plan_mode conditions this call on another plan
        (tools/explain.py's uniform plan) without changing the model."""
        attn_add, plan_loss, plan_stats = self.plan(extra, plan_mode) if self.plan is not None else (None, None, {})
        hidden = self.gpt.body(x, attn_add)
        weights = normed = None
        if self.mod is not None:  # the depth ensemble's mixed logits are the model's prediction
            logits, weights, normed = self.mod(hidden, self.gpt)
        else:
            logits = self.gpt.head(hidden[-1])
        return logits, dict(hidden=hidden, weights=weights, normed=normed, plan_loss=plan_loss, plan_stats=plan_stats)

    def forward(self, x, y, extra, plan_gain=True):
        """Training loss for inputs x and next tokens y (B, T), and a dict of scalars to log.

        extra holds the per-position data a technique gathered with the batch (empty when all are off).
        stats['ce'] is always the plain next-token cross-entropy: the number validation reports. plan_gain: in eval
        mode, also measure what another sentence's plan costs (a second forward); only validation reports it.
        """
        logits, parts = self.logits(x, extra)
        loss, stats = self.next_token_loss(logits, y, extra)
        stats.update(parts["plan_stats"])
        plans_per_sentence = self.plan is not None and self.plan.mode in ("oracle", *planner.PLANNER_MODES)
        if plan_gain and not self.training and plans_per_sentence:
            # what the LM loses when each sentence gets another sentence's plan: how much it reads its own
            shuffled, _ = self.logits(x, extra, planner.SHUFFLED)
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
        sentence, re-planned from the text as it is written (training/replanner.py: it needs the run's PlanData and
        vocabulary)."""
        logits_fn = (lambda hidden: self.mod(hidden, self.gpt)[0]) if self.mod is not None else None
        attn_add_fn = Replanner(self.plan, plan_data, vocab) if self.plan is not None else None
        return self.gpt.generate(idx, max_new_tokens, temperature, top_k, use_cache, logits_fn=logits_fn,
                                 attn_add_fn=attn_add_fn)


@torch.no_grad()
def mean_stats(model, batches, autocast=nullcontext(), plan_gain=True):
    """Mean of every scalar the model reports over batches of (x, y, extra), each weighted by its number of
    windows, in eval mode: what train.py's evaluations, its score and tools/explain.py's tables report. plan_gain:
    as LanguageModel.forward's (False where only the losses are read)."""
    model.eval()
    sums, windows = {}, 0
    for x, y, extra in batches:
        with autocast:
            _, stats = model(x, y, extra, plan_gain)
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value.float().item() * len(x)
        windows += len(x)
    model.train()
    return {name: total / windows for name, total in sums.items()}


def load_language_model(checkpoint, device):
    """The LanguageModel a checkpoint of train.py holds, in eval mode on device."""
    model = LanguageModel.from_settings(GPT(GPTConfig(**checkpoint["model_args"])), checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


# --- what the techniques read with every batch --------------------------------------------------------------------
def load_batch_data(s, data_dir, train_tokens, eot_token, prepare_once=lambda prepare: prepare()):
    """What the techniques that are on read with every batch, each prepared once beside the dataset: 'ngram', the
    train split's n-gram targets (ngram.load_targets), and 'plan', the sentences, labels and codebook (PlanData).
    prepare_once(prepare) runs a preparation; train.py's runs it on rank zero first."""
    data, on = {}, switched_on(s)
    if "ngram" in on:
        data["ngram"] = prepare_once(lambda: ngram.load_targets(
            s["ngram_mode"], data_dir, train_tokens, s["ngram_n"], s["ngram_r"], s["seed"], eot_token,
            s["ngram_memory_mb"], s["ngram_workers"]))
    if "planner" in on:
        data["plan"] = prepare_once(lambda: PlanData(data_dir, s["plan_k"], s["plan_embedder"], s["plan_seed"]))
    return data


def batch_extra(data, split, ix, block_size, plan_context):
    """The techniques' per-position data (LanguageModel.forward's extra) for the windows of block_size tokens that
    start at positions ix (a tensor) of a split, from load_batch_data's data; plan_context: the sentences the
    planner reads."""
    extra = {}
    if split == "train" and "ngram" in data:  # validation is scored on the observed token only
        ids, probs = data["ngram"](ix.numpy()[:, None] + np.arange(block_size))
        extra["ngram_ids"], extra["ngram_probs"] = torch.from_numpy(ids), torch.from_numpy(probs)
    if "plan" in data:
        extra.update(data["plan"].batch(split, ix, block_size, plan_context))
    return extra


def initialise_techniques(model, data, s, init_checkpoint=None):
    """The starting weights of a new run's techniques that start from the data: the planner's codebooks and planner
    (planner.initialise_plan, which also takes them from init_checkpoint's when it has them)."""
    if model.plan is not None:
        planner.initialise_plan(model.plan, data["plan"], s, init_checkpoint)
