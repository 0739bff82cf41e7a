"""
The planner while sampling (planner.py's Conditioning, at generation time): every position is conditioned on the
plan of the sentence its next token belongs to, as in training, but the sentences are those of the text being
written. The text is split into sentences as the data was split (data/sentences.py) and each finished sentence is
embedded with the labels' embedder, so the planner reads what it reads in training.
"""

import numpy as np
import torch

from configurator import ConfigError
from data.prepare import ensure_prepared
from data.sentences import PlanData, plan_codec, sentence_breaks, sentence_starts


def plan_data_of(config):
    """The PlanData a run with these settings was trained on: the embedder and labels its planner plans with."""
    data_dir = ensure_prepared(config["dataset"], config.get("tokenizer", "char"))
    return PlanData(data_dir, config["plan_k"], config["plan_embedder"], config["plan_seed"])


class Replanner:
    """attn_add_fn for GPT.generate. Per row it keeps the sentences finished so far (their plans) and re-splits only
    the open sentence, so the planner runs once per sentence, not per token. Splitting the open sentence alone
    splits as the whole document would: a sentence starts at whitespace, which ends every look-back of the
    splitter's rules.

    For the last position the next token is not written yet: it opens a new sentence when the text so far ends
    one (the splitter would break right after it), and that guessed sentence is planned from the open one."""

    def __init__(self, conditioner, data, vocab):
        if conditioner.mode == "oracle":
            raise ConfigError("plan_mode 'oracle' conditions on the true label of the sentence being written, which "
                              "does not exist while generating: sample a model trained in 'hard', 'st' or 'soft'")
        if data is None:
            raise ValueError("sampling a model with a planner needs its PlanData (replanner.plan_data_of(config))")
        self.conditioner, self.data = conditioner, data
        self.encode, self.decode, self.token_nbytes = plan_codec(vocab)
        self.eot = vocab["eot_token"]
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
        vectors = self.conditioner.plan_vectors(logits, torch.zeros_like(pos), self.conditioner.mode)
        return torch.stack(vectors, dim=1)

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
