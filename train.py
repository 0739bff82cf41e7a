"""
Train a GPT, alone or with the techniques of this repository, on the CPU, one GPU, or several GPUs with DDP.

    python train.py                                        # small GPT on shakespeare_char, any device
    python train.py config/train_wiki.py --max_iters=500   # a config file, then overrides
    torchrun --standalone --nproc_per_node=4 train.py config/train_wiki.py

Settings are the globals below; config files and --key=value override them (configurator.py checks names and
types). Every eval appends a line to out_dir/log.jsonl, redraws out_dir/loss.png and writes out_dir/ckpt.pt.
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import ngram
from configurator import ConfigError, configure
from data.common import document_start, ensure_prepared, get_codec, load_meta, load_tokens, write_atomically
from lm import LanguageModel, load_checkpoint, pick_device, pick_precision
from lora import merge_lora
import mod
from model import GPT, GPTConfig, configure_optimizers, estimate_mfu
import planner
from planner import PlanData, initialise_plan

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"
eval_interval = 250
eval_iters = 20  # batches per split in each evaluation; the same batches every time, so curves compare
log_interval = 10  # iterations between progress-bar updates (each costs a device sync)
eval_only = False
init_from = "scratch"  # 'scratch', 'resume' (continue out_dir/ckpt.pt), or the path of a checkpoint to tune
base = "train"  # the base GPT: 'train', 'frozen' (only the techniques' own parameters train) or 'lora' (lora.py)
lora_rank = 8
lora_alpha = 16.0
seed = 1337
sample_tokens = 300  # length of the sample printed at the end; 0 prints none
# data
dataset = "shakespeare_char"
batch_size = 12  # sequences per micro-batch
block_size = 64
gradient_accumulation_steps = 1  # micro-batches per optimizer step, over all processes together
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
flash = True  # fused attention kernel; False runs the readable matmul-softmax-matmul
# AdamW and its schedule: linear warmup, then cosine decay to min_lr
learning_rate = 1e-3
max_iters = 3000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 disables clipping
decay_lr = True
warmup_iters = 100
lr_decay_iters = None  # None: decay over max_iters
min_lr = 1e-4
# training objective
label_smoothing = 0.0  # the classic soft-target baseline
# The three techniques are on by default: `python train.py` is the main job, all three on the default dataset.
# config/plain.py switches them off: the plain GPT.
ngram_mode = "compact"  # n-gram soft targets (ngram.py): 'off', 'all' (exact y_all, slow) or 'compact' (CoCoNTs)
ngram_n = 5  # context of n-1 tokens: 4 characters here; 3 for GPT-2 BPE, whose 50k ids allow at most 4
ngram_r = 8  # top tokens kept per context by 'compact'
ngram_alpha = 0.5  # weight of the n-gram target; the observed token gets 1 - alpha
# mixture-of-depths ensemble (mod.py): the last mod_k layers vote through a router; 0 or 1 is the plain model
mod_k = 2  # from scratch, k = 2 alone ends level with the plain model (README)
mod_lambda = 0.5  # weight of the distillation KL from the final layer to the other late layers
mod_distill_frac = 0.125  # share of a batch's positions the distillation uses in training: its cost and memory
mod_router_input = "final"  # 'final': ln_f of the last block's output; 'input': the input to the late stack
mod_router_bias = 0.0  # initial routing logit of the final layer (0: uniform routing at the start)
mod_router_entropy = 0.01  # weight of the routing entropy subtracted from the loss; 0 lets the router collapse (mod.py)
# sentence planner (planner.py); 'none' is the plain GPT
plan_mode = "soft"  # none | fixed | uniform | oracle (sees the future: an upper bound) | hard | st | soft
plan_k = 64  # number of sentence labels (k-means clusters)
plan_context = 8  # the planner reads this many sentences before the one it plans
plan_tau = 1.0  # softmax temperature of 'soft' and 'st'
plan_lambda = 0.0  # weight of the planner's cross-entropy added to the LM loss (0: LM loss only, as the paper)
plan_embedder = "lsa"  # sentence encoder of the labels
plan_seed = 0  # seed of the embedder and k-means that make the labels
plan_init_planner = ""  # planner.pt written by `python planner.py` (stage 2), loaded into a new run
# system
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or name one, e.g. 'cuda:1'
dtype = "auto"  # 'auto': bfloat16 on CUDA where supported, else float16 on CUDA, else float32
compile = None  # None compiles on CUDA only; True or False to force
# -----------------------------------------------------------------------------


def validate_settings(s):
    """Catch impossible combinations before any work is done; each message names the setting and the fix."""
    problems = []
    for key in ("batch_size", "block_size", "eval_interval", "eval_iters", "log_interval",
                "gradient_accumulation_steps"):
        if s[key] < 1:
            problems.append(f"{key} must be at least 1, got {s[key]}")
    if s["max_iters"] < 0:
        problems.append(f"max_iters must be at least 0 (0 evaluates and saves the initial model), got {s['max_iters']}")
    if s["init_from"] not in ("scratch", "resume") and not os.path.isfile(s["init_from"]):
        problems.append(f"init_from must be 'scratch', 'resume' or an existing checkpoint file, got "
                        f"'{s['init_from']}'")
    if s["base"] not in ("train", "frozen", "lora"):
        problems.append(f"base must be 'train', 'frozen' or 'lora', got '{s['base']}'")
    if s["base"] != "train" and s["init_from"] == "scratch":
        problems.append(f"base='{s['base']}' freezes the base GPT: tune a pretrained one with "
                        f"--init_from=<path of a ckpt.pt>, or use base='train'")
    if s["base"] == "frozen" and s["mod_k"] < 2 and s["plan_mode"] == "none":
        problems.append("base='frozen' with no technique on leaves nothing to train: set mod_k >= 2 or a "
                        "plan_mode, or use base='lora'")
    if s["lora_rank"] < 1:
        problems.append(f"lora_rank must be at least 1, got {s['lora_rank']}")
    if s["dtype"] not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got '{s['dtype']}'")
    if s["compile"] not in (None, True, False):
        problems.append(f"compile must be None (on for CUDA only), True or False, got {s['compile']!r}")
    if not 0.0 <= s["label_smoothing"] < 1.0:
        problems.append(f"label_smoothing must be in [0, 1), got {s['label_smoothing']}")
    if s["learning_rate"] <= 0 or s["min_lr"] < 0:
        problems.append("learning_rate must be positive and min_lr non-negative")
    # Each technique checks its own settings, in its own file.
    problems += ngram.settings_problems(s) + mod.settings_problems(s) + planner.settings_problems(s)
    if problems:
        raise ConfigError("; ".join(problems))


SETTINGS = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str,
                                                                                        type(None)))]
# Settings that fix what the checkpoint's weights mean: resuming with different ones would be a different run.
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "bias", "vocab_size")
RUN_KEYS = ("dataset", "block_size", "base", "lora_rank", "lora_alpha", "label_smoothing", "ngram_mode", "ngram_n",
            "ngram_r", "ngram_alpha", "mod_k", "mod_lambda", "mod_distill_frac", "mod_router_input",
            "mod_router_bias", "mod_router_entropy", "plan_mode", "plan_k", "plan_context", "plan_tau",
            "plan_lambda", "plan_embedder", "plan_seed")


PLAIN_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "plain.py")


def settings_from(argv):
    """The settings of a run with these command-line arguments: the globals above (copied, so they stay the
    defaults), then argv's config files and --key=value, validated."""
    settings = {k: globals()[k] for k in SETTINGS}
    configure(settings, argv)
    validate_settings(settings)
    return settings


# The plain GPT's validation perplexity with these settings (config/plain.py, the 'plain' arm of
# `python experiments/run.py --suite small --only combined`; README): the main job ends by printing its own beside it.
PLAIN_VAL_PPL = 5.98


def main(argv):
    """Train with the settings above, overridden by argv; returns the finished Trainer."""
    trainer = Trainer(settings_from(argv))
    trainer.run()
    if not argv and trainer.master:  # the main job: put its result beside the plain model's on the same settings
        print(f"validation perplexity {trainer.last_record['val_ppl']:.2f} with all three techniques; "
              f"the plain GPT on the same settings: {PLAIN_VAL_PPL:.2f} (README, results/combined.md)")
    return trainer


class Trainer:
    """One training run. A class only to keep the run's state (model, optimizer, data) in one place."""

    def __init__(self, s):
        self.s = s
        self.setup_processes()
        self.setup_device()
        self.data_dir = self.rank_zero_first(lambda: ensure_prepared(s["dataset"]))
        self.meta = load_meta(self.data_dir)
        self.tokens = {split: load_tokens(self.data_dir, split) for split in ("train", "val")}
        for split, data in self.tokens.items():
            if len(data) <= s["block_size"]:
                raise ConfigError(f"the {split} split of '{s['dataset']}' has {len(data)} tokens, not more than "
                                  f"block_size {s['block_size']}: lower block_size")
        self.ngram_targets = None
        if s["ngram_mode"] != "off":
            self.ngram_targets = self.rank_zero_first(lambda: ngram.load_targets(
                s["ngram_mode"], self.data_dir, self.tokens["train"], s["ngram_n"], s["ngram_r"], s["seed"],
                self.meta["eot_token"]))
        self.plan_data = None
        if s["plan_mode"] != "none":
            self.plan_data = self.rank_zero_first(lambda: PlanData(self.data_dir, s["plan_k"], s["plan_embedder"],
                                                                   s["plan_seed"]))
        self.build_model()
        self.build_optimizer()

    def rank_zero_first(self, build):
        """Run build on rank 0 before the other ranks, so that they read the cache it writes (data, n-gram targets,
        sentence labels) instead of all building it at once."""
        if self.ddp and not self.master:
            dist.barrier()
        result = build()
        if self.ddp and self.master:
            dist.barrier()
        return result

    # --- processes, device and precision ---------------------------------------------------------------------
    def setup_processes(self):
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        if self.ddp:
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ["LOCAL_RANK"])
        else:
            self.rank, self.world, self.local_rank = 0, 1, 0
        self.master = self.rank == 0
        accum = self.s["gradient_accumulation_steps"]
        if accum % self.world:
            raise ConfigError(f"gradient_accumulation_steps ({accum}) must be a multiple of the number of "
                              f"processes ({self.world}): each process runs an equal share of the micro-batches")
        self.local_accum = accum // self.world

    def setup_device(self):
        s = self.s
        self.device = pick_device(s["device"], self.local_rank if self.ddp else None)
        self.device_type = self.device.split(":")[0]
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype, self.autocast = pick_precision(self.device_type, s["dtype"])
        # fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(self.dtype == "float16"))
        self.compile = s["compile"] if s["compile"] is not None else self.device_type == "cuda"

    # --- model and optimizer ---------------------------------------------------------------------------------
    def build_model(self):
        s = self.s
        vocab_size = self.meta["vocab_size"]
        # A large vocabulary is padded to a multiple of 64 for faster matmuls; the padded rows are never targets.
        model_args = dict(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], bias=s["bias"],
                          vocab_size=vocab_size if vocab_size < 1024 else -(-vocab_size // 64) * 64,
                          block_size=s["block_size"], dropout=s["dropout"], flash=s["flash"])
        self.iter_num, self.best_val_loss, self.elapsed = 0, float("inf"), 0.0
        self.warned = set()
        resume, tune = s["init_from"] == "resume", s["init_from"] not in ("scratch", "resume")
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(os.path.join(s["out_dir"], "ckpt.pt"))
            check_same_run(checkpoint, {**s, "vocab_size": model_args["vocab_size"]})
        if tune:
            checkpoint = load_checkpoint(s["init_from"])
            check_same_tokenizer(checkpoint, self.meta)
            saved = checkpoint["model_args"]
            if s["block_size"] > saved["block_size"]:
                raise ConfigError(f"block_size {s['block_size']} is longer than the checkpoint's "
                                  f"{saved['block_size']}: its position table has no rows for it")
            shape = {k: saved[k] for k in MODEL_KEYS}
            depth = mod.depth_problem(s["mod_k"], saved["n_layer"], s["mod_router_input"])
            if depth:
                raise ConfigError(f"{depth} (n_layer is the checkpoint's)")
            if self.master:
                print(f"tuning {s['init_from']}: model shape {shape} taken from the checkpoint")
            model_args.update(shape, block_size=saved["block_size"])
        torch.manual_seed(s["seed"])
        gpt = GPT(GPTConfig(**model_args))
        if tune:  # the GPT's weights come from the checkpoint; the techniques' modules start fresh around them
            gpt.load_state_dict(tuned_gpt_weights(checkpoint))
            gpt.crop_block_size(s["block_size"])
            model_args["block_size"] = s["block_size"]
        self.model_args = model_args
        self.model = LanguageModel(gpt, s).to(self.device)
        if self.model.plan is not None and not resume:
            initialise_plan(self.model.plan, self.plan_data, s, checkpoint if tune else None)
        self.checkpoint = checkpoint if resume else None
        if resume:
            self.model.load_state_dict(checkpoint["model"])
            self.iter_num = checkpoint["iter_num"]
            self.best_val_loss = checkpoint["best_val_loss"]
            self.elapsed = checkpoint["elapsed_s"]
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.master:
            print(f"{gpt.num_params() / 1e6:.2f}M parameters in the GPT (without positions), "
                  f"{self.n_trainable:,} trainable")
        self.train_model = torch.compile(self.model) if self.compile else self.model
        if self.ddp:
            self.train_model = DDP(self.train_model, device_ids=[self.local_rank] if self.device_type == "cuda"
                                   else None)

    def build_optimizer(self):
        s = self.s
        self.optimizer = configure_optimizers(self.model, s["weight_decay"], s["learning_rate"],
                                              (s["beta1"], s["beta2"]), self.device_type)
        if self.checkpoint is not None:
            self.optimizer.load_state_dict(self.checkpoint["optimizer"])
            self.scaler.load_state_dict(self.checkpoint["scaler"])
        self.checkpoint = None  # free the memory

    # --- data -----------------------------------------------------------------------------------------------
    def get_batch(self, split, generator, n):
        """n random windows of block_size tokens from a split: inputs x, next tokens y and the techniques' extras."""
        T = self.s["block_size"]
        data = self.tokens[split]
        ix = torch.randint(len(data) - T, (n,), generator=generator)
        x = torch.from_numpy(np.stack([data[i:i + T] for i in ix.tolist()]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + T] for i in ix.tolist()]).astype(np.int64))
        extra = {}
        if split == "train" and self.ngram_targets is not None:  # validation is scored on the observed token only
            ids, probs = self.ngram_targets(ix.numpy()[:, None] + np.arange(T))
            extra["ngram_ids"], extra["ngram_probs"] = torch.from_numpy(ids), torch.from_numpy(probs)
        if self.plan_data is not None:
            extra.update(self.plan_data.batch(split, ix, T, self.s["plan_context"]))
        return self.to_device(x), self.to_device(y), {k: self.to_device(v) for k, v in extra.items()}

    def to_device(self, t):
        if self.device_type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # --- schedule -------------------------------------------------------------------------------------------
    def lr_at(self, it):
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
        self.model.eval()
        results = {}
        for split in ("train", "val"):
            generator = torch.Generator().manual_seed(self.s["seed"] + 1)
            sums = {}
            for _ in range(self.s["eval_iters"]):
                x, y, extra = self.get_batch(split, generator, self.s["batch_size"])
                with self.autocast:
                    _, stats = self.model(x, y, extra)
                for name, value in stats.items():
                    sums[name] = sums.get(name, 0.0) + value.float().item()
            results[split] = {name: total / self.s["eval_iters"] for name, total in sums.items()}
        self.model.train()
        return results

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self):
        s = self.s
        if s["eval_only"]:
            results = self.evaluate()
            if self.master:
                print(json.dumps({split: r["ce"] for split, r in results.items()}))
            return
        if self.master:
            os.makedirs(s["out_dir"], exist_ok=True)
            if s["init_from"] != "resume":
                open(os.path.join(s["out_dir"], "log.jsonl"), "w").close()
        tokens_per_iter = s["gradient_accumulation_steps"] * s["batch_size"] * s["block_size"]
        if self.master:
            print(f"{tokens_per_iter:,} tokens per iteration on {self.world} process(es), device {self.device}, "
                  f"{self.dtype}{', compiled' if self.compile else ''}")
        first_iter = self.iter_num
        bar = tqdm(total=s["max_iters"], initial=self.iter_num, disable=not self.master, dynamic_ncols=True)
        t_last, iters_since, tokens_per_sec, lossf = time.time(), 0, 0.0, float("nan")
        while True:
            lr = self.lr_at(self.iter_num)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            finished = self.iter_num >= s["max_iters"]
            # A resumed run has already evaluated and saved the iteration it starts at.
            if (self.iter_num % s["eval_interval"] == 0 or finished) and (self.iter_num > first_iter
                                                                           or s["init_from"] != "resume"):
                self.elapsed += time.time() - t_last
                if self.master:
                    self.eval_log_and_save(lr, tokens_per_sec)
                t_last = time.time()
            if finished:
                break
            loss = self.train_step()
            self.iter_num += 1
            iters_since += 1
            bar.update(1)
            if self.iter_num % s["log_interval"] == 0:
                lossf = loss.item() * self.local_accum
                if not math.isfinite(lossf):
                    raise FloatingPointError(
                        f"the training loss is {lossf} at iteration {self.iter_num}; stopping. The last good "
                        f"checkpoint is {os.path.join(s['out_dir'], 'ckpt.pt')}: lower learning_rate or raise "
                        f"warmup_iters, then resume from it with --init_from=resume")
                now = time.time()
                tokens_per_sec = iters_since * tokens_per_iter / (now - t_last + 1e-9) if iters_since else 0.0
                self.elapsed += now - t_last
                t_last, iters_since = now, 0
                bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}")
        bar.close()
        if self.master and s["sample_tokens"] > 0:
            self.print_sample()
        if self.ddp:
            dist.destroy_process_group()

    def train_step(self):
        """One optimizer step over this process's share of the global batch; returns the last micro-batch loss."""
        s = self.s
        # Every draw of an iteration is seeded from (seed, iteration[, rank]): the batch, identical on every rank
        # which then takes its own slice, and the dropout masks. The iteration number is therefore the whole
        # data position and RNG state, and a resumed run replays exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(s["seed"] * 1_000_003 + self.iter_num)
        torch.manual_seed(s["seed"] * 1_000_003 + self.iter_num + 7_919 * (self.rank + 1))
        x, y, extra = self.get_batch("train", generator, s["gradient_accumulation_steps"] * s["batch_size"])
        rows = self.local_accum * s["batch_size"]
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        x, y, extra = x[mine], y[mine], {k: v[mine] for k, v in extra.items()}
        for micro in range(self.local_accum):
            part = slice(micro * s["batch_size"], (micro + 1) * s["batch_size"])
            if self.ddp:  # average gradients across processes only after the last micro-batch
                self.train_model.require_backward_grad_sync = micro == self.local_accum - 1
            with self.autocast:
                loss, _ = self.train_model(x[part], y[part], {k: v[part] for k, v in extra.items()})
                loss = loss / self.local_accum
            self.scaler.scale(loss).backward()
        if s["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def eval_log_and_save(self, lr, tokens_per_sec):
        s = self.s
        results = self.evaluate()
        val_loss = results["val"]["ce"]
        record = {"iter": self.iter_num, "train_loss": results["train"]["ce"], "val_loss": val_loss,
                  "val_ppl": math.exp(min(val_loss, 50.0)), "lr": lr, "tokens_per_sec": tokens_per_sec,
                  "elapsed_s": round(self.elapsed, 2), "trainable_params": self.n_trainable}
        record.update({f"val_{k}": v for k, v in results["val"].items() if k != "ce"})
        self.last_record = record
        mfu = estimate_mfu(self.model.gpt, tokens_per_sec, torch.cuda.get_device_name()) \
            if self.device_type == "cuda" else None
        if mfu is not None:
            record["mfu"] = mfu
        tqdm.write(f"iter {self.iter_num}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
                   f"val ppl {record['val_ppl']:.2f}")
        self.warn_degenerate(record)
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"the validation loss is {val_loss} at iteration {self.iter_num}; stopping "
                                     f"without overwriting the last good checkpoint in {s['out_dir']}")
        with open(os.path.join(s["out_dir"], "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_log(s["out_dir"])
        self.best_val_loss = min(self.best_val_loss, val_loss)
        save_checkpoint(os.path.join(s["out_dir"], "ckpt.pt"), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "model_args": self.model_args, "config": s,
            "iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "elapsed_s": self.elapsed,
            "tokenizer": self.meta["tokenizer"]})

    def warn_degenerate(self, record):
        """A technique that stops doing its job says so: the warning is kept in the record (the plot marks it) and
        printed the first time each technique degenerates."""
        warnings = {name: w for name, w in (("mod", mod.health_warning(record)),
                                             ("planner", planner.health_warning(record))) if w}
        if warnings:
            record["warnings"] = list(warnings.values())
        for name, warning in warnings.items():
            if name not in self.warned:
                self.warned.add(name)
                tqdm.write(f"warning: {warning}")

    def print_sample(self):
        encode, decode = get_codec(self.meta)
        idx = torch.tensor([encode(document_start(self.meta))], dtype=torch.long, device=self.device)
        torch.manual_seed(self.s["seed"])
        self.model.eval()
        with self.autocast:
            out = self.model.generate(idx, self.s["sample_tokens"], temperature=0.8, top_k=200)
        print("-" * 40 + " sample " + "-" * 40)
        print(decode(out[0].tolist()))


# --- checkpoints ------------------------------------------------------------------------------------------------
def save_checkpoint(path, state):
    write_atomically(path, lambda f: torch.save(state, f))


def check_same_run(checkpoint, settings):
    """Resuming continues one run: the settings that shape the weights and the data must be the checkpoint's."""
    saved = {**checkpoint["config"], **checkpoint["model_args"]}
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {settings[k]!r}" for k in MODEL_KEYS + RUN_KEYS
              if saved.get(k) != settings[k]]
    if differ:
        raise ConfigError("cannot resume: the checkpoint comes from another configuration (" + "; ".join(differ)
                          + "). Pass the same config file and overrides as the original run, or use a new out_dir")


def check_same_tokenizer(checkpoint, meta):
    if checkpoint.get("tokenizer") != meta["tokenizer"]:
        raise ConfigError(f"the checkpoint was trained with the '{checkpoint.get('tokenizer')}' tokenizer but "
                          f"dataset '{meta['dataset']}' uses '{meta['tokenizer']}': tune it on a dataset with the "
                          f"same tokenizer")


def tuned_gpt_weights(checkpoint):
    """The GPT a checkpoint stands for: its 'gpt.*' weights, with a LoRA run's adapters merged into them."""
    weights = strip_prefix(checkpoint["model"], "gpt.")
    adapters = strip_prefix(checkpoint["model"], "lora.")
    if adapters:
        weights = merge_lora(weights, adapters, checkpoint["config"]["lora_alpha"] / checkpoint["config"]["lora_rank"])
    return weights


def strip_prefix(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def read_log(out_dir):
    """The records of out_dir/log.jsonl, one per evaluation; [] before a run has logged any."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def plot_log(out_dir):
    """Redraw out_dir/loss.png from log.jsonl: train and validation loss against iterations, with a red cross on
    every evaluation where a technique had degenerated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_log(out_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        ax.plot([r["iter"] for r in records], [r[key] for r in records], marker=".", label=key.replace("_", " "))
    warned = [r for r in records if r.get("warnings")]
    if warned:
        ax.plot([r["iter"] for r in warned], [r["val_loss"] for r in warned], "rx",
                label="degenerate: warnings in log.jsonl")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(out_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
