"""
One training run's pieces, built in nanoGPT's order: this process's place in the run and its device, the data, the
model, the optimizer; then what the loop in train.py calls: a training step, the learning rate, an evaluation, the
final score and a sample. tools/bench.py times the same step, so what it measures is what training does.
"""

import json
import math
import os

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import lm
from data.dataset import load_checked_tokens, load_meta
from data.files import write_atomically
from data.prepare import ensure_prepared
from data.vocabulary import document_start, get_codec, vocabulary
from lm import LanguageModel, mean_stats
from model import GPT, GPTConfig, configure_optimizers
from training import checkpoint as ckpt, devices, tuning


def batch_seed(seed, iteration):
    """The seed of iteration's batch, identical on every rank (each then takes its own slice of it)."""
    return seed * 1_000_003 + iteration


def dropout_seed(seed, iteration, rank):
    """The seed of iteration's dropout masks on one rank."""
    return batch_seed(seed, iteration) + 7_919 * (rank + 1)


class Trainer:
    """One training run's set-up, data, model and optimizer (s: train.py's settings). A class only to keep them in
    one place; the loop's state (the iteration, the best loss, the time) is train.py's."""

    def __init__(self, s):
        self.s = s
        self.setup_device()
        self.load_data()
        self.build_model()
        self.build_optimizer()

    def setup_device(self):
        """This process's place in the run, its device and its precision (training/devices.py)."""
        s = self.s
        self.ddp, self.rank, self.world, local_rank = devices.processes()
        self.master, self.local_accum = self.rank == 0, s["gradient_accumulation_steps"] // self.world
        self.device = devices.pick_device(s["device"], local_rank if self.ddp else None)
        self.device_type = self.device.split(":")[0]
        devices.use_device(self.device)
        self.preparation_group = (devices.join_processes(self.device, s["gradient_accumulation_steps"]) if self.ddp
                                  else None)
        self.dtype, self.autocast = devices.pick_precision(self.device_type, s["dtype"])
        self.compile = s["compile"] if s["compile"] is not None else devices.compiles_by_default(self.device_type)

    def rank_zero_first(self, build):
        return devices.rank_zero_first(self.preparation_group, self.rank, build)

    # --- data -----------------------------------------------------------------------------------------------
    def load_data(self):
        """The token splits, and what the techniques that are on read with every batch, each prepared once beside
        the dataset."""
        s = self.s
        self.data_dir = self.rank_zero_first(lambda: ensure_prepared(s["dataset"], s["tokenizer"]))
        self.meta = load_meta(self.data_dir)
        self.vocab = vocabulary(self.meta)
        self.tokens = load_checked_tokens(self.data_dir, self.meta, s["block_size"])
        self.technique_data = lm.load_batch_data(s, self.data_dir, self.tokens["train"], self.meta["eot_token"],
                                                 self.rank_zero_first)

    def get_batch(self, split, generator, n):
        """n random windows of block_size tokens from a split: inputs x, next tokens y and the techniques' extras."""
        return self.batch_at(split, self.random_starts(split, generator, n))

    def random_starts(self, split, generator, n):
        return torch.randint(len(self.tokens[split]) - self.s["block_size"], (n,), generator=generator)

    def batch_at(self, split, ix):
        """The windows of block_size tokens that start at positions ix of a split."""
        T = self.s["block_size"]
        data = self.tokens[split]
        x = torch.from_numpy(np.stack([data[i:i + T] for i in ix.tolist()]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + T] for i in ix.tolist()]).astype(np.int64))
        extra = lm.batch_extra(self.technique_data, split, ix, T, self.s["plan_context"])
        return self.to_device(x), self.to_device(y), {k: self.to_device(v) for k, v in extra.items()}

    def to_device(self, t):
        return devices.to_device(t, self.device)

    # --- model and optimizer ---------------------------------------------------------------------------------
    def build_model(self):
        """The GPT from scratch, from the checkpoint a resume continues, or tuned from init_from; the techniques
        around it (lm.py); then compiled and wrapped for DDP as the settings say."""
        s = self.s
        self.resuming, tuned = s["init_from"] == "resume", s["init_from"] not in ("scratch", "resume")
        self.model_args, start = self.scratch_shape(), None
        if self.resuming:
            start = ckpt.load(os.path.join(s["out_dir"], "ckpt.pt"), fix="start with init_from='scratch' (nothing "
                              "to resume), or point out_dir at a run's folder")
            ckpt.check_same_run(start, s)
            ckpt.check_same_data(start, self.meta)
            self.model_args.update({k: start["model_args"][k] for k in ckpt.MODEL_KEYS})  # a tuned run's shape
        elif tuned:
            start, self.model_args = tuning.load(s, self.meta, self.model_args, self.master)
        torch.manual_seed(s["seed"])
        gpt = GPT(GPTConfig(**self.model_args))
        if tuned:  # the GPT's weights come from the checkpoint; the techniques' modules start fresh around them
            tuning.load_weights(gpt, start, self.meta, s["block_size"])
            self.model_args["block_size"] = s["block_size"]
        self.model = LanguageModel.from_settings(gpt, s).to(self.device)
        if not self.resuming:
            lm.initialise_techniques(self.model, self.technique_data, s, start)
        self.resumed = None  # of a resume: its checkpoint's progress (iter_num, best_val_loss, elapsed_s, log_record)
        if self.resuming:
            self.model.load_state_dict(start["model"])
            self.resumed = {"iter_num": start["iter_num"], "best_val_loss": start["best_val_loss"],
                            "elapsed_s": start["elapsed_s"], "log_record": start.get("log_record")}
            self.resumed_optimizer = start["optimizer"], start["scaler"]
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.master:
            print(f"{gpt.num_params() / 1e6:.2f}M parameters in the GPT (without positions), "
                  f"{self.n_trainable:,} trainable")
        self.train_model = torch.compile(self.model) if self.compile else self.model
        if self.ddp:
            self.train_model = DDP(self.train_model, device_ids=[self.local_rank] if self.device_type == "cuda"
                                   else None)

    def scratch_shape(self):
        """The GPT's shape from the settings. A large vocabulary is padded to a multiple of 64 for faster matmuls;
        the padded rows are never targets."""
        s, vocab_size = self.s, self.meta["vocab_size"]
        return dict(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], bias=s["bias"],
                    vocab_size=vocab_size if vocab_size < 1024 else -(-vocab_size // 64) * 64,
                    block_size=s["block_size"], dropout=s["dropout"], flash=s["flash"])

    def build_optimizer(self):
        s = self.s
        self.optimizer = configure_optimizers(self.model, s["weight_decay"], s["learning_rate"],
                                              (s["beta1"], s["beta2"]), self.device_type)
        optimizer, scaler = self.resumed_optimizer if self.resuming else (None, None)
        self.scaler = devices.grad_scaler(self.device_type, self.dtype, scaler)
        if self.resuming:
            self.optimizer.load_state_dict(optimizer)
            del self.resumed_optimizer  # free the memory

    def lr_at(self, it):
        """Linear warmup, then cosine decay from learning_rate to min_lr over lr_decay_iters (or max_iters)."""
        s = self.s
        if not s["decay_lr"]:
            return s["learning_rate"]
        decay_iters = s["lr_decay_iters"] or s["max_iters"]
        if it < s["warmup_iters"]:
            return s["learning_rate"] * (it + 1) / (s["warmup_iters"] + 1)
        if it >= decay_iters:
            return s["min_lr"]
        progress = (it - s["warmup_iters"]) / max(1, decay_iters - s["warmup_iters"])
        return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s["learning_rate"] - s["min_lr"])

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self):
        """Mean of every logged scalar over eval_iters fixed batches of each split."""
        results = {}
        for split in ("train", "val"):
            generator = torch.Generator().manual_seed(self.s["seed"] + 1)  # the same batches at every evaluation
            # train.py logs the train split's losses alone, so its batches skip the plan gain's second forward
            results[split] = mean_stats(self.model, (self.get_batch(split, generator, self.s["batch_size"])
                                                     for _ in range(self.s["eval_iters"])), self.autocast,
                                        plan_gain=split == "val")
        return results

    def score_val(self, max_tokens, iter_num):
        """The kept weights' mean of every reported scalar over the consecutive block_size windows in the first
        max_tokens tokens of the validation split, written to out_dir/score.json."""
        s = self.s
        if s["keep_best"]:
            self.model.load_state_dict(ckpt.load(os.path.join(s["out_dir"], "best.pt"))["model"])
        T = s["block_size"]
        starts = torch.arange(0, min(max_tokens, len(self.tokens["val"]) - 1) - T + 1, T)
        stats = mean_stats(self.model, (self.batch_at("val", ix) for ix in torch.split(starts, s["batch_size"])),
                           self.autocast)
        score = {"val_loss": stats.pop("ce"), "val_tokens": len(starts) * T, "iter": iter_num,
                 "weights": "best.pt" if s["keep_best"] else "ckpt.pt", **{f"val_{k}": v for k, v in stats.items()}}
        write_atomically(os.path.join(s["out_dir"], "score.json"), lambda f: f.write(json.dumps(score).encode()))
        return score

    @property
    def tokens_per_iter(self):
        return self.s["gradient_accumulation_steps"] * self.s["batch_size"] * self.s["block_size"]

    def train_step(self, iter_num):
        """Optimizer step iter_num over this process's share of the global batch; returns the last micro-batch's
        training objective (the loss the gradient comes from: plain or n-gram CE plus the techniques' terms), its
        plain cross-entropy and the gradient's global norm before clipping, as tensors (reading them syncs)."""
        s = self.s
        # Every draw of an iteration is seeded from (seed, iteration[, rank]): the iteration number is therefore the
        # whole data position and RNG state, and a resumed run replays exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(batch_seed(s["seed"], iter_num))
        torch.manual_seed(dropout_seed(s["seed"], iter_num, self.rank))
        B = s["batch_size"]
        ix = self.random_starts("train", generator, s["gradient_accumulation_steps"] * B)
        mine = ix[self.rank * self.local_accum * B:(self.rank + 1) * self.local_accum * B]
        for micro in range(self.local_accum):
            x, y, extra = self.batch_at("train", mine[micro * B:(micro + 1) * B])
            if self.ddp:  # average gradients across processes only after the last micro-batch
                self.train_model.require_backward_grad_sync = micro == self.local_accum - 1
            with self.autocast:
                loss, stats = self.train_model(x, y, extra)
                loss = loss / self.local_accum
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # the norm of the true gradient, not the scaled one
        # grad_clip 0 measures without clipping: an infinite bound scales every gradient by exactly 1
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s["grad_clip"] or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), stats["ce"], grad_norm

    def sample(self, tokens):
        """tokens of text from the start of a document, as sample.py draws them (temperature 0.8, top 200)."""
        encode, decode = get_codec(self.meta)
        idx = torch.tensor([encode(document_start(self.meta))], dtype=torch.long, device=self.device)
        torch.manual_seed(self.s["seed"])
        self.model.eval()
        with self.autocast:
            out = self.model.generate(idx, tokens, temperature=0.8, top_k=200,
                                      plan_data=self.technique_data.get("plan"), vocab=self.vocab)
        return decode(out[0].tolist())


