"""
A sentence-level planner that conditions the GPT, trained end to end with it.

Cornille, Moens, Mai, "Learning to Plan for Language Modeling from Unlabeled Data" (COLM 2024), and
Cornille, Mai, Sun, Moens, "End-to-end Planner Training for Language Modeling" (2024).

The intuition: a writer decides what a sentence will do (state a fact, give an example, name the next speaker)
before writing its words. If a model is told that abstract plan of the sentence it is writing, its next-token
predictions should be sharper; a planner that reads the sentences so far can predict the plan before the sentence
is written, so the model can use it at generation time too.

The method:
  Labels without annotation (data preparation: data/sentences.py). Split every document into sentences, embed
  each sentence with a frozen encoder and cluster the train embeddings with k-means into K clusters. Sentence i's
  label is its cluster id; the K centroids c_1..c_K are the codebook.
  Planner. A small network reads the embeddings of the M sentences before sentence i (a learned start-of-document
  vector stands in for the text before the first sentence), adds a position encoding (how many sentences back),
  applies Linear, one TransformerEncoder layer with 2 heads, a masked mean-pool and a Linear to K logits s_i whose
  weight starts as the centroids. Its input never depends on sentence i or later text: no leak.
  Conditioning. In each of the top n_layer - 2 layers l (at least one), at every position t, the vector
      v_l = W_l e_l + b_l,        e_l = p @ E_l
  is added to the attention output before c_proj, where E_l (K x d_e) is the layer's own codebook (initialised to
  the centroids), W_l a d_e -> n_embd projection (zero bias at init) and p the plan of the sentence that token t+1
  belongs to: position t predicts token t+1, so the first token of a sentence is already predicted under that
  sentence's plan. The planner runs once per sentence of the batch, not per token.
  End to end. Paper 1 uses p = onehot(argmax s) ('hard'): the LM loss never reaches the planner. Paper 2 uses
  p = softmax(s / tau) ('soft'): e_l is the probability-weighted average of the label embeddings, and the LM loss
  trains the planner. The straight-through estimator ('st': forward onehot(argmax s), backward the softmax's
  gradient, p = p + (onehot - p).detach()) is the baseline the paper found not effective.

The papers train in stages (docs/planner.md has the commands): 1. a base LM, 2. the planner pre-trained on the
labels (tools/pretrain_planner.py), 3. the LM with adapters on the planner's 'hard' labels, 4. planner and LM fine-tuned
jointly in 'soft' from 2 and 3. The main job instead trains LM and planner together from the start, the planner
also learning its labels (plan_lambda * its cross-entropy in the loss).

plan_mode: 'none' (no adapter: exactly the plain GPT), 'fixed' (always label 0: the extra parameters without a
plan), 'uniform' (p = 1/K: the soft control), 'oracle' (the true label of the target sentence: an upper bound that
sees the future), 'hard', 'st', 'soft'. Where the papers are silent, the choices made here and why:
docs/planner.md. Re-planning while sampling: training/replanner.py.
"""

import os

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError
from data.sentences import EMBEDDERS

MODES = ("none", "fixed", "uniform", "oracle", "hard", "st", "soft")
PLANNER_MODES = ("hard", "st", "soft")  # the modes that run the planner
# Not a mode to train in: each sentence conditioned on another sentence's plan (of the same batch), which measures
# how much the LM relies on its own sentence's plan (val_plan_gain).
SHUFFLED = "shuffled"


# --- the planner --------------------------------------------------------------------------------------------------
class Planner(nn.Module):
    """Logits over the K labels of sentence i from the embeddings of the sentences before it."""

    def __init__(self, k, dim, context):
        super().__init__()
        self.start = nn.Parameter(torch.randn(dim) * 0.02)  # stands in for "the document starts here"
        self.input = nn.Linear(dim, dim)
        self.sentences_back = nn.Embedding(context, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=4 * dim, dropout=0.0,
                                                  batch_first=True)
        self.output = nn.Linear(dim, k)

    def forward(self, context, pos):
        """context (n, M, d_e): embeddings of sentences i-1, i-2, ... (zeros before the document's start); pos
        (n,): i, the sentence's index in its document. Slot pos holds the start vector when it is within M."""
        slot = torch.arange(context.size(1), device=context.device)
        valid = slot <= pos[:, None]
        x = torch.where((slot == pos[:, None])[..., None], self.start.to(context.dtype), context)
        h = self.encoder(self.input(x) + self.sentences_back(slot), src_key_padding_mask=~valid)
        h = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # the mean over the sentences it read
        # s_i[k] = h . c_k + b_k: the output layer starts as the codebook (initialise_planner)
        return self.output(h)


def initialise_planner(planner, centroids):
    """The output layer starts as the codebook: logit_k = h . c_k scores the label whose centroid h points to."""
    with torch.no_grad():
        planner.output.weight.copy_(centroids)
        planner.output.bias.zero_()


def planner_metrics(logits, labels, majority=None):
    """Cross-entropy, accuracy and top-5 accuracy of the planner's logits (n, K) against the labels (n,), and,
    given the most frequent train label, the accuracy of always answering it on the same sentences."""
    logits = logits.float()
    top5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices
    metrics = {"plan_ce": F.cross_entropy(logits, labels),
               "plan_acc": (logits.argmax(-1) == labels).float().mean(),
               "plan_top5": (top5 == labels[:, None]).any(-1).float().mean()}
    if majority is not None:
        metrics["plan_majority_acc"] = (labels == majority).float().mean()
    return metrics


# --- conditioning the GPT -----------------------------------------------------------------------------------------
class PlanConditioner(nn.Module):
    """The planner (in the modes that use it) and the per-layer codebooks and projections. forward(extra) returns
    the attn_add list for GPT.body, the optional planner loss and the planner's statistics (in training only its
    label cross-entropy)."""

    def __init__(self, mode, k, dim, context, tau, ce_weight, n_layer, n_embd):
        """mode: plan_mode, one of MODES but 'none'. k: the number of labels (K). dim: the width of the sentence
        embeddings (d_e, the labels' embedder's: EMBEDDERS). context: the sentences before sentence i the planner
        reads (M). tau: the softmax temperature of 'soft' and 'st'. ce_weight: the weight of the planner's label
        cross-entropy in the loss (plan_lambda; 0 leaves it out). n_layer, n_embd: the GPT's depth and width; the
        top n_layer - 2 layers (at least one) are conditioned."""
        super().__init__()
        self.mode, self.tau, self.ce_weight = mode, tau, ce_weight
        self.k, self.context = k, context
        conditioned = max(1, n_layer - 2)
        self.first_layer = n_layer - conditioned
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(self.k, dim)) for _ in range(conditioned)])
        self.projections = nn.ModuleList([nn.Linear(dim, n_embd) for _ in range(conditioned)])
        for projection in self.projections:
            nn.init.normal_(projection.weight, std=0.02)
            nn.init.zeros_(projection.bias)
        self.planner = Planner(self.k, dim, self.context) if self.mode in PLANNER_MODES else None
        if self.planner is not None and self.mode == "hard" and self.ce_weight == 0:
            self.planner.requires_grad_(False)  # argmax passes no gradient: a frozen planner, said explicitly
        # The most frequent train label: the accuracy a planner must beat to be planning at all.
        self.register_buffer("majority_label", torch.tensor(0))

    def initialise(self, centroids, train_labels):
        with torch.no_grad():
            for codebook in self.codebooks:
                codebook.copy_(centroids)
            self.majority_label.copy_(torch.bincount(train_labels, minlength=self.k).argmax())
        if self.planner is not None:
            initialise_planner(self.planner, centroids)

    def forward(self, extra, mode=None):
        """extra: the batch's sentences (PlanData.batch): their planner inputs (plan_context, plan_pos), their
        labels (plan_label) and, per position, the sentence it is planned by (plan_index). mode, when given,
        conditions on another plan than self.mode's (the planner still runs and reports)."""
        logits = self.planner(extra["plan_context"], extra["plan_pos"]) if self.planner is not None else None
        mode, index = mode or self.mode, extra["plan_index"]
        if mode == SHUFFLED:  # the sentence half a batch away: a plan of the same kind, for another sentence
            mode, index = self.mode, (index + len(extra["plan_label"]) // 2) % len(extra["plan_label"])
        vectors = self.plan_vectors(logits, extra["plan_label"], mode)
        # position t gets the vectors of the sentence token t+1 belongs to. A lookup, not v[index]: on a CPU with
        # several threads v[index]'s backward sums with atomic adds in no fixed order, and runs drift apart.
        attn_add = [None] * self.first_layer + [F.embedding(index, v) for v in vectors]
        if logits is None:
            return attn_add, None, {}
        # a training step logs none of the statistics, so it computes only what its loss needs
        stats = ({"plan_ce": F.cross_entropy(logits.float(), extra["plan_label"])} if self.training
                 else planner_metrics(logits, extra["plan_label"], self.majority_label))
        loss = self.ce_weight * stats["plan_ce"] if self.ce_weight > 0 else None
        return attn_add, loss, {name: value.detach() for name, value in stats.items()}

    def plan_vectors(self, logits, label, mode):
        """v_l = W_l (p @ E_l) + b_l for every sentence (n, n_embd), one per conditioned layer, from the planner's
        logits and the true labels (n,), under plan mode `mode`. A one-hot p is a row lookup, done as such."""
        if mode in ("fixed", "oracle", "hard"):
            # p = onehot(argmax s), onehot(true label) or onehot(label 0), so e_l = E_l[index]
            if mode == "hard":
                index = logits.argmax(-1)
            else:
                index = label if mode == "oracle" else torch.zeros_like(label)
            return [project(codebook[index]) for codebook, project in zip(self.codebooks, self.projections)]
        # exercise: plan-soft
        if mode == "uniform":
            # p = 1 / K
            p = torch.full((len(label), self.k), 1.0 / self.k, device=label.device)
        else:
            # p = softmax(s / tau)
            p = F.softmax(logits.float() / self.tau, dim=-1)
            if mode == "st":
                # forward onehot(argmax s), backward the gradient of softmax(s / tau)
                p = p + (F.one_hot(p.argmax(-1), self.k) - p).detach()
        # e_l = p @ E_l, then v_l = W_l e_l + b_l
        return [project(p.to(codebook.dtype) @ codebook) for codebook, project in zip(self.codebooks, self.projections)]
        # end exercise


# --- settings, health and starting weights ------------------------------------------------------------------------
def settings_problems(s):
    """What is wrong with the planner settings of train.py, each naming the setting and the fix."""
    mode = s["plan_mode"]
    if mode not in MODES:
        return [f"plan_mode must be one of {', '.join(MODES)}, got '{mode}'"]
    problems = []
    if s["plan_init_planner"] and mode not in PLANNER_MODES:
        problems.append(f"plan_init_planner is only read by the modes that run a planner ({', '.join(PLANNER_MODES)}),"
                        f" not by '{mode}'")
    if s["plan_init_planner"] and not os.path.isfile(s["plan_init_planner"]):
        problems.append(f"plan_init_planner: no file {s['plan_init_planner']}; run `python -m tools.pretrain_planner` "
                        f"first")
    if mode == "none":
        return problems
    if s["plan_embedder"] not in EMBEDDERS:
        problems.append(f"plan_embedder must be one of {', '.join(EMBEDDERS)}, got '{s['plan_embedder']}'")
    if s["plan_k"] < 2 or s["plan_context"] < 1:
        problems.append(f"plan_k must be at least 2 and plan_context at least 1, got {s['plan_k']} and "
                        f"{s['plan_context']}")
    if s["plan_tau"] <= 0:
        problems.append(f"plan_tau must be positive, got {s['plan_tau']}")
    if s["plan_lambda"] < 0 or (s["plan_lambda"] > 0 and mode not in PLANNER_MODES):
        problems.append(f"plan_lambda (the planner's cross-entropy weight) must be >= 0, and 0 in mode '{mode}', "
                        f"which has no planner; got {s['plan_lambda']}")
    if mode in PLANNER_MODES and s["plan_lambda"] == 0 and not s["plan_init_planner"] and s["init_from"] == "scratch":
        problems.append(untrained_planner_problem(mode, "the run starts from scratch"))
    return problems


def untrained_planner_problem(mode, why):
    # Pulled by the LM loss alone, a planner that starts untrained drifts anywhere (val_plan_acc far below the
    # majority label's in the main job), and the LM learns to read noise.
    return (f"plan_mode '{mode}' would condition the LM on an untrained planner ({why}): pre-train it (`python -m "
            "tools.pretrain_planner`, then plan_init_planner=<its planner.pt>), start from a checkpoint that has one "
            "(init_from), or train it on its labels alongside the LM with plan_lambda > 0 (the main job uses 1.0)")


# Below this (nats), conditioning each sentence on another sentence's plan changes nothing the LM does: it ignores its
# plan (a planner that gives every sentence the same plan scores exactly 0). Set under the plan gain of every run
# whose planner did its job, so that only a planner the LM ignores warns (docs/planner.md has those runs' figures).
NO_PLAN_GAIN = 0.001


def health_warning(record):
    """A warning when the LM does not read its plan (val_plan_gain below NO_PLAN_GAIN), else None. record is an
    evaluation's log record. Label accuracy at or below the majority label's is not by itself a failure: trained
    jointly, the planner can turn its labels into a code of its own that the LM reads, and the plan gain shows
    whether it does (drifted_from_labels says so in the run's planner line)."""
    if "val_plan_acc" not in record or "val_plan_gain" not in record:
        return None
    if record["val_plan_gain"] >= NO_PLAN_GAIN:
        return None
    return (f"the LM is not using its plan: given another sentence's plan its val loss moves by only "
            f"{record['val_plan_gain']:+.4f} nats (under {NO_PLAN_GAIN}), so the planner adds parameters and no "
            f"information (docs/planner.md)")


def drifted_from_labels(record):
    """True when the planner's label accuracy is no better than always answering the most frequent train label."""
    return record["val_plan_acc"] <= record["val_plan_majority_acc"]


def report_line(record, s):
    """The planner's line in the run's report of an evaluation (training/run_report.py), or None when the plan is off:
    how often it gets the label right beside the majority label, and how much the LM reads its plan. A planner no
    better than the majority after training has begun either speaks a code of its own, which the LM reads, or says
    nothing the LM reads (yet)."""
    if "val_plan_acc" in record:
        line = (f"planner: the next sentence's label right {record['val_plan_acc']:.3f} of the time (always "
                f"answering the most frequent label: {record['val_plan_majority_acc']:.3f}); conditioned on "
                f"another sentence's plan the val loss rises by {record['val_plan_gain']:+.4f}")
        if record["iter"] > 0 and drifted_from_labels(record):
            line += ("; no better than the majority: the plan is now the planner's own code, not its labels"
                     if record["val_plan_gain"] >= NO_PLAN_GAIN else
                     "; no better than the majority, and the LM does not read the plan (yet)")
        return line
    if "val_plan_gain" in record:
        return (f"plan (true labels): conditioned on another sentence's plan the val loss rises by "
                f"{record['val_plan_gain']:+.4f}")
    return None


def plot_panel(records, s):
    """The planner's panel of loss.png (training/plot.py) as its title and {curve label: logged key}, or None when off:
    how much the LM reads its plan (the val loss rise on another sentence's plan), and the planner's label accuracy
    beside always answering the majority label."""
    if "val_plan_acc" not in records[-1]:
        return None
    curves = {"plan gain (nats): what another sentence's plan costs": "val_plan_gain",
              "planner's label accuracy": "val_plan_acc"}
    if "val_plan_majority_acc" in records[-1]:
        curves["always the majority label"] = "val_plan_majority_acc"
    return "planner (validation)", curves


def initialise_plan(conditioner, data, s, init_checkpoint=None):
    """The starting weights of a new run: codebooks and planner output from the centroids, the majority label from
    the train labels; then the pre-trained planner of plan_init_planner (stage 2's); then the plan weights of
    init_from's checkpoint when it has them (stage 4 starts from stage 3's adapters and planner)."""
    conditioner.initialise(data.centroids, data.labels["train"])
    if s["plan_init_planner"]:
        load_pretrained_planner(conditioner.planner, s["plan_init_planner"], data.header, s["plan_context"])
    weights = {} if init_checkpoint is None else {k[len("plan."):]: v for k, v in init_checkpoint["model"].items()
                                                  if k.startswith("plan.")}
    if weights:
        keys = ("dataset", "plan_k", "plan_embedder", "plan_seed", "plan_context")
        differ = [f"{k}: checkpoint {init_checkpoint['config'].get(k)!r}, now {s[k]!r}" for k in keys
                  if init_checkpoint["config"].get(k) != s[k]]
        if differ:
            raise ConfigError("init_from's planner and codebooks were trained on other labels (" + "; ".join(differ)
                              + "): use the same plan settings, or start from a checkpoint without a planner")
        own = conditioner.state_dict()
        conditioner.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    if conditioner.planner is not None and not s["plan_init_planner"] and "planner.start" not in weights \
            and s["plan_lambda"] == 0:
        raise ConfigError(untrained_planner_problem(s["plan_mode"], f"init_from {s['init_from']} has no planner"))


def load_pretrained_planner(planner, path, header, context):
    """The planner of tools/pretrain_planner.py's planner.pt, which must come from the same labels and context."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["header"] != header or saved["plan_context"] != context:
        raise ConfigError(f"the planner in {path} was trained on other labels or another context ({saved['header']}, "
                          f"plan_context={saved['plan_context']}) than this run's ({header}, plan_context={context}): "
                          "pre-train it with the same dataset, plan_k, plan_embedder, plan_seed and plan_context")
    planner.load_state_dict(saved["planner"])
