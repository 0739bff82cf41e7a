"""
A sentence-level planner that conditions the GPT, trained end to end with it.

Cornille, Moens, Mai, "Learning to Plan for Language Modeling from Unlabeled Data" (COLM 2024), and
Cornille, Mai, Sun, Moens, "End-to-end Planner Training for Language Modeling" (2024).

The method:
  1. Labels without annotation (data preparation: data/sentences.py). Split every document into sentences, embed
     each sentence with a frozen encoder and cluster the train embeddings with k-means into K clusters. Sentence
     i's label is its cluster id; the K centroids are the codebook.
  2. Planner. A small network reads the embeddings of the M sentences before sentence i (a learned
     start-of-document vector stands in for the text before the first sentence), adds a position encoding (how
     many sentences back), applies Linear, one TransformerEncoder layer with 2 heads, a masked mean-pool and a
     Linear to K logits s_i whose weight starts as the centroids. It is pre-trained with cross-entropy against the
     labels (`python pretrain_planner.py`). Its input never depends on sentence i or later text: no leak.
  3. Conditioning. In each of the top n_layer - 2 layers l (at least one), at every position t, the vector
         v_l = W_l e_l + b_l,        e_l = p @ E_l
     is added to the attention output before c_proj, where E_l (K x d_e) is the layer's own codebook (initialised
     to the centroids), W_l a d_e -> n_embd projection (zero bias at init) and p the plan of the sentence that
     token t+1 belongs to: position t predicts token t+1, so the first token of a sentence is already predicted
     under that sentence's plan. The planner runs once per sentence of the batch, not per token.
  4. End to end. Paper 1 uses p = onehot(argmax s) ('hard'): the LM loss never reaches the planner. Paper 2 uses
     p = softmax(s / tau) ('soft'): e_l is the probability-weighted average of the label embeddings, the LM loss
     trains the planner, and planner and LM are fine-tuned jointly from the hard-trained ones. The
     straight-through estimator ('st': forward onehot(argmax), backward the softmax's gradient,
     p = (onehot - p).detach() + p) is the baseline the paper found not effective.

plan_mode: 'none' (no adapter: exactly the plain GPT), 'fixed' (always label 0: the extra parameters without a
plan), 'uniform' (p = 1/K: the soft control), 'oracle' (the true label of the target sentence: an upper bound that
sees the future), 'hard', 'st', 'soft'. Where the papers are silent, the choices made here and why:
docs/planner.md.
"""

import os

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError
from data.dataset import load_meta
from data.prepare import ensure_prepared
from data.sentences import EMBEDDERS, PlanData, plan_codec, sentence_breaks, sentence_starts

MODES = ("none", "fixed", "uniform", "oracle", "hard", "st", "soft")
PLANNER_MODES = ("hard", "st", "soft")  # the modes that run the planner


# --- 2. the planner ---------------------------------------------------------------------------------------------
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
        h = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.output(h)


def initialise_planner(planner, centroids):
    """The output layer starts as the codebook: logit_k = h . c_k scores the label whose centroid h points to."""
    with torch.no_grad():
        planner.output.weight.copy_(centroids)
        planner.output.bias.zero_()


def planner_metrics(logits, labels, majority=None):
    """Cross-entropy, accuracy and top-5 accuracy over the sentences whose label is not -1 (padding), and, given
    the most frequent train label, the accuracy of always answering it on the same sentences. Padding is masked
    out of sums rather than indexed away: a boolean index has a data-dependent shape, which torch.compile cannot
    trace (a graph break at every step)."""
    logits = logits.float().flatten(0, -2)
    labels = labels.flatten()
    n_real = (labels >= 0).sum()
    top5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices
    metrics = {"plan_ce": F.cross_entropy(logits, labels, ignore_index=-1),
               "plan_acc": (logits.argmax(-1) == labels).sum() / n_real,  # a padding label -1 never matches
               "plan_top5": (top5 == labels[:, None]).any(-1).sum() / n_real}
    if majority is not None:
        metrics["plan_majority_acc"] = (labels == majority).sum() / n_real
    return metrics


# --- 3 and 4. conditioning the GPT ----------------------------------------------------------------------------
class PlanConditioner(nn.Module):
    """The planner (in the modes that use it) and the per-layer codebooks and projections. forward(extra) returns
    the attn_add list for GPT.body, the optional planner loss and the planner's statistics."""

    def __init__(self, settings, config):
        super().__init__()
        self.mode, self.tau, self.ce_weight = settings["plan_mode"], settings["plan_tau"], settings["plan_lambda"]
        self.k, self.context, dim = settings["plan_k"], settings["plan_context"], EMBEDDERS[settings["plan_embedder"]]
        self.data_settings = (settings["dataset"], settings.get("tokenizer", "char"), self.k, settings["plan_embedder"],
                              settings["plan_seed"])
        conditioned = max(1, config.n_layer - 2)
        self.first_layer = config.n_layer - conditioned
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(self.k, dim)) for _ in range(conditioned)])
        self.projections = nn.ModuleList([nn.Linear(dim, config.n_embd) for _ in range(conditioned)])
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

    def forward(self, extra):
        slot, label = extra["plan_slot"], extra["plan_label"]
        logits = None
        if self.planner is not None:
            context, pos = extra["plan_context"], extra["plan_pos"]
            logits = self.planner(context.flatten(0, 1), pos.flatten()).view(*pos.shape, self.k)
        vectors = self.plan_vectors(logits, label)
        index = slot[..., None].expand(-1, -1, vectors[0].size(-1))
        attn_add = [None] * self.first_layer + [v.gather(1, index) for v in vectors]
        if logits is None:
            return attn_add, None, {}
        stats = planner_metrics(logits, label, self.majority_label)
        loss = self.ce_weight * stats["plan_ce"] if self.ce_weight > 0 else None
        return attn_add, loss, {name: value.detach() for name, value in stats.items()}

    def plan_vectors(self, logits, label):
        """v_l = W_l (p @ E_l) + b_l for every sentence (..., n_embd), one per conditioned layer. A one-hot p is a
        row lookup, done as such; label is the true label (oracle) and gives the shape."""
        if self.mode in ("fixed", "oracle", "hard"):
            if self.mode == "hard":
                index = logits.argmax(-1)
            else:
                index = torch.zeros_like(label) if self.mode == "fixed" else label.clamp(min=0)
            return [project(codebook[index]) for codebook, project in zip(self.codebooks, self.projections)]
        if self.mode == "uniform":
            p = torch.full((*label.shape, self.k), 1.0 / self.k, device=label.device)
        else:
            p = F.softmax(logits.float() / self.tau, dim=-1)
            if self.mode == "st":
                p = p + (F.one_hot(p.argmax(-1), self.k) - p).detach()
        return [project(p.to(codebook.dtype) @ codebook) for codebook, project in zip(self.codebooks, self.projections)]

    def generation_hook(self):
        """attn_add_fn for GPT.generate: re-plans whenever the text so far ends a sentence."""
        if self.mode == "oracle":
            raise ConfigError("plan_mode 'oracle' conditions on the true label of the sentence being written, which "
                              "does not exist while generating: sample a model trained in 'hard', 'st' or 'soft'")
        dataset, tokenizer, k, embedder, seed = self.data_settings
        data_dir = ensure_prepared(dataset, tokenizer)
        return Replanner(self, PlanData(data_dir, k, embedder, seed), load_meta(data_dir))


def settings_problems(s):
    """What is wrong with the planner settings of train.py, each naming the setting and the fix."""
    problems = []
    mode = s["plan_mode"]
    if mode not in MODES:
        return [f"plan_mode must be one of {', '.join(MODES)}, got '{mode}'"]
    if s["plan_init_planner"] and mode not in PLANNER_MODES:
        problems.append(f"plan_init_planner is only read by the modes that run a planner ({', '.join(PLANNER_MODES)}),"
                        f" not by '{mode}'")
    if s["plan_init_planner"] and not os.path.isfile(s["plan_init_planner"]):
        problems.append(f"plan_init_planner: no file {s['plan_init_planner']}; run `python pretrain_planner.py` first")
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
    return (f"plan_mode '{mode}' would condition the LM on an untrained planner ({why}): pre-train it (`python "
            "planner.py`, then plan_init_planner=<its planner.pt>), start from a checkpoint that has one (init_from), "
            "or train it on its labels alongside the LM with plan_lambda > 0 (the main job uses 1.0)")


def health_warning(record):
    """A warning when the planner is no better than always answering the most frequent train label on the same
    validation sentences, else None. record is an evaluation's log record."""
    if "val_plan_acc" not in record or "val_plan_majority_acc" not in record:
        return None
    if record["val_plan_acc"] > record["val_plan_majority_acc"]:
        return None
    return (f"the planner is not planning: its label accuracy {record['val_plan_acc']:.3f} is not above the "
            f"{record['val_plan_majority_acc']:.3f} of always answering the most frequent label (docs/planner.md)")


def initialise_plan(conditioner, data, s, init_checkpoint=None):
    """The starting weights of a new run: codebooks and planner output from the centroids, the majority label from
    the train labels; then the pre-trained planner of plan_init_planner (stage 3); then the plan weights of
    init_from's checkpoint when it has them (stage 4 starts from stage 3's adapters and planner)."""
    conditioner.initialise(data.centroids, data.labels["train"])
    if s["plan_init_planner"]:
        saved = torch.load(s["plan_init_planner"], map_location="cpu")
        if saved["header"] != data.header or saved["plan_context"] != s["plan_context"]:
            raise ConfigError(f"the planner in {s['plan_init_planner']} was trained on other labels or another "
                              f"context ({saved['header']}, plan_context={saved['plan_context']}) than this run's "
                              f"({data.header}, plan_context={s['plan_context']}): pre-train it with the same "
                              "dataset, plan_k, plan_embedder, plan_seed and plan_context")
        conditioner.planner.load_state_dict(saved["planner"])
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


# --- generation ---------------------------------------------------------------------------------------------------
class Replanner:
    """attn_add_fn for GPT.generate: conditions every position on the plan of the sentence its next token belongs
    to, splitting the generated text into sentences as the data was split and embedding them with the labels'
    embedder. Per row it keeps the sentences finished so far (their plans) and re-splits only the open sentence,
    so the planner runs once per sentence, not per token. Splitting the open sentence alone splits as the whole
    document would: a sentence starts at whitespace, which ends every look-back of the splitter's rules.

    For the last position the next token is not written yet: it opens a new sentence when the text so far ends
    one (the splitter would break right after it), and that guessed sentence is planned from the open one."""

    def __init__(self, conditioner, data, meta):
        self.conditioner, self.data = conditioner, data
        self.encode, self.decode, self.token_nbytes = plan_codec(meta)
        self.eot = meta["eot_token"]
        self.device = conditioner.codebooks[0].device
        self.rows = None
        self.embedded = {}  # sentence text -> embedding, so each sentence is embedded once

    def __call__(self, window, start):
        if self.rows is None:
            self.rows = [self.new_row() for _ in range(window.size(0))]
            for row, tokens in zip(self.rows, window.tolist()):
                for token in tokens:  # the prompt, as if generated: its sentences end one by one
                    self.append(row, token)
        else:  # one call per generated token: the window's last token is the new one
            for row, token in zip(self.rows, window[:, -1].tolist()):
                self.append(row, token)
        first = len(self.rows[0]["tokens"]) - window.size(1) + start
        per_row = torch.stack([self.row_vectors(row, first) for row in self.rows])  # (B, T, layers, n_embd)
        return [None] * self.conditioner.first_layer + list(per_row.unbind(2))

    def new_row(self):
        """tokens: the text so far; sentence_of: each token's sentence; plans: (sentences, layers, n_embd), the
        plan vectors of every sentence so far; open_start: where the open sentence starts; doc_embeddings: the
        finished sentences of the open document."""
        row = {"tokens": [], "sentence_of": [], "plans": None, "open_start": 0, "doc_embeddings": []}
        self.open_sentence(row)
        return row

    def append(self, row, token):
        row["tokens"].append(token)
        row["sentence_of"].append(len(row["plans"]) - 1)  # in the open sentence, until a re-split says otherwise
        if token == self.eot:  # the EOT ends its document's last sentence; the next token starts a document
            row["open_start"], row["doc_embeddings"] = len(row["tokens"]), []
            self.open_sentence(row)
        else:
            self.resplit(row)

    def resplit(self, row):
        """Split the open sentence's tokens; every sentence that ended in them is embedded and the next planned."""
        tail = np.array(row["tokens"][row["open_start"]:], dtype=np.int64)
        if len(tail) == 0:
            return
        starts = sentence_starts(tail, self.decode(tail), self.encode, self.token_nbytes)
        for a, b in zip(starts[:-1], starts[1:]):
            row["doc_embeddings"].append(self.embed(self.decode(tail[a:b])))
            row["sentence_of"][row["open_start"] + b:] = [len(row["plans"])] * (len(tail) - b)
            self.open_sentence(row)
        row["open_start"] += starts[-1]

    def open_sentence(self, row):
        """Plan the sentence after the open document's finished ones and add its vectors to the row's plans."""
        plan = self.plan(row["doc_embeddings"])
        row["plans"] = plan if row["plans"] is None else torch.cat([row["plans"], plan])

    def plan(self, embeddings):
        """(1, layers, n_embd): the plan vectors of the sentence that follows these sentences of its document,
        from the planner's input as PlanData.context gives it (most recent first, zeros past the start)."""
        m, dim = self.conditioner.context, self.data.centroids.size(1)
        before = embeddings[max(0, len(embeddings) - m):][::-1]
        context = torch.stack(before + [torch.zeros(dim)] * (m - len(before)))[None].to(self.device)
        pos = torch.tensor([len(embeddings)], device=self.device)
        planner = self.conditioner.planner
        logits = planner(context, pos) if planner is not None else None
        return torch.stack(self.conditioner.plan_vectors(logits, torch.zeros_like(pos)), dim=1)

    def row_vectors(self, row, first):
        """(len(tokens) - first, layers, n_embd): position t gets the plan of token t+1's sentence."""
        tokens = row["tokens"]
        written = row["plans"][torch.tensor(row["sentence_of"][first + 1:], dtype=torch.long, device=self.device)]
        text = self.decode(tokens[row["open_start"]:])
        if text and len(sentence_breaks(text + " X")) > len(sentence_breaks(text)):
            upcoming = self.plan(row["doc_embeddings"] + [self.embed(text)])
        else:
            upcoming = row["plans"][-1:]
        return torch.cat([written, upcoming])

    def embed(self, text):
        if text not in self.embedded:
            self.embedded[text] = self.data.embedder.embed([text])[0]
        return self.embedded[text]

