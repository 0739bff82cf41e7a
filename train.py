"""
Train a GPT, alone or with the techniques of this repository, on the CPU, one GPU, or several GPUs with DDP.

    python train.py                                        # small GPT on shakespeare_char, any device
    python train.py config/train_wiki.py --max_iters=500   # a config file, then overrides
    torchrun --standalone --nproc_per_node=4 train.py config/train_wiki.py

Settings are the globals below; config files and --key=value override them (configurator.py checks names and
types). Every eval writes out_dir/ckpt.pt, then appends a line to out_dir/log.jsonl and redraws out_dir/loss.png.
A run holds out_dir/.lock while it lives, and refuses an out_dir that holds another run unless told to resume it
(--init_from=resume) or to replace it (--overwrite).
"""

import json
import math
import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: runs go unlocked, so two runs in one out_dir are not caught there
    fcntl = None

import ngram
from configurator import ConfigError, configure, parse
from data.dataset import load_checked_tokens, load_meta
from data.prepare import ensure_prepared
from data.vocabulary import document_start, get_codec, vocabulary
from data.files import write_atomically
from hf import GPT2_NAMES, gpt2_checkpoint, is_hf_source
from lm import LanguageModel, checkpoint_vocab, load_checkpoint, pick_device, pick_precision
from lora import merge_lora
import mod
from model import GPT, GPTConfig, configure_optimizers, estimate_mfu
from plot import plot_log, read_log
import planner
from data.sentences import PlanData
from planner import initialise_plan

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"
eval_interval = 250
eval_iters = 20  # batches per split in each evaluation; the same batches every time, so curves compare
log_interval = 10  # iterations between progress-bar updates (each costs a device sync)
eval_only = False
# 'scratch', 'resume' (continue out_dir/ckpt.pt), or what to tune: the path of a checkpoint, OpenAI's GPT-2
# ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a folder written by transformers' save_pretrained (hf.py)
init_from = "scratch"
overwrite = False  # a new run may replace the run already in out_dir (its ckpt.pt and log.jsonl); else it is refused
base = "train"  # the base GPT: 'train', 'frozen' (only the techniques' own parameters train) or 'lora' (lora.py)
lora_rank = 8
lora_alpha = 16.0
seed = 1337
sample_tokens = 300  # length of the sample printed at the end; 0 prints none
keep_best = False  # also write out_dir/best.pt (the weights) whenever an evaluation sets a new best val loss
# after the last step, score the weights the run keeps (best.pt with keep_best, else the last) on the first
# score_val_tokens tokens of the validation split (all of it when shorter), in consecutive block_size windows, and
# write out_dir/score.json: what the experiments compare. 0 scores nothing.
score_val_tokens = 0
# data
dataset = "shakespeare_char"  # a name in data/, your own text (a .txt file or a folder of them), or a prepared folder
tokenizer = "char"  # how your own text is tokenized: 'char' or 'gpt2' (BPE); other datasets bring their own
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
ngram_memory_mb = 2000  # memory bound of the n-gram build, workers included, whatever the corpus size (data/ngrams.py)
ngram_workers = 2  # processes that count partitions of the n-gram build at once
# mixture-of-depths ensemble (mod.py): the last mod_k layers vote through a router; 0 or 1 is the plain model
mod_k = 2  # from scratch, k = 2 alone ends level with the plain model (README)
mod_lambda = 0.5  # weight of the distillation KL from the final layer to the other late layers
mod_distill_frac = 0.125  # share of a batch's positions the distillation uses in training: its cost and memory
mod_router_entropy = 0.01  # weight of the routing entropy subtracted from the loss; 0 lets the router collapse (mod.py)
# sentence planner (planner.py); 'none' is the plain GPT
plan_mode = "soft"  # none | fixed | uniform | oracle (sees the future: an upper bound) | hard | st | soft
plan_k = 64  # number of sentence labels (k-means clusters)
plan_context = 8  # the planner reads this many sentences before the one it plans
plan_tau = 1.0  # softmax temperature of 'soft' and 'st'
plan_lambda = 1.0  # weight of the planner's label cross-entropy in the loss: a planner trained from scratch needs it
plan_embedder = "lsa"  # sentence encoder of the labels
plan_seed = 0  # seed of the embedder and k-means that make the labels
plan_init_planner = ""  # planner.pt written by `python pretrain_planner.py` (stage 2), loaded into a new run
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
    if not (s["init_from"] in ("scratch", "resume") or os.path.isfile(s["init_from"]) or is_hf_source(s["init_from"])):
        problems.append(f"init_from must be 'scratch', 'resume', an existing checkpoint file, one of {GPT2_NAMES} or "
                        f"a folder written by save_pretrained, got '{s['init_from']}'")
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
    if s["decay_lr"] and s["min_lr"] > s["learning_rate"]:
        problems.append(f"min_lr ({s['min_lr']}) must not exceed learning_rate ({s['learning_rate']}): the cosine "
                        f"schedule decays from learning_rate down to min_lr; lower min_lr or set decay_lr=False")
    for key in ("beta1", "beta2"):
        if not 0.0 <= s[key] < 1.0:
            problems.append(f"{key} must be in [0, 1) (AdamW's moment decay), got {s[key]}")
    if s["warmup_iters"] < 0:
        problems.append(f"warmup_iters must be at least 0, got {s['warmup_iters']}")
    # Each technique checks its own settings, in its own file.
    problems += ngram.settings_problems(s) + mod.settings_problems(s) + planner.settings_problems(s)
    if problems:
        raise ConfigError("; ".join(problems))


SETTINGS = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str,
                                                                                        type(None)))]
# Settings that fix what the checkpoint's weights mean: resuming with different ones would be a different run.
# batch_size, gradient_accumulation_steps and seed fix the batches and random draws an exact resume replays.
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "bias", "vocab_size")
RUN_KEYS = ("dataset", "block_size", "batch_size", "gradient_accumulation_steps", "seed", "base", "lora_rank",
            "lora_alpha", "label_smoothing", "ngram_mode", "ngram_n", "ngram_r", "ngram_alpha", "mod_k", "mod_lambda",
            "mod_distill_frac", "mod_router_entropy", "plan_mode", "plan_k", "plan_context",
            "plan_tau", "plan_lambda", "plan_embedder", "plan_seed")


PLAIN_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "plain.py")


def settings_from(argv):
    """The settings of a run with these command-line arguments: the globals above (copied, so they stay the
    defaults), then argv's config files and --key=value, validated."""
    settings = {k: globals()[k] for k in SETTINGS}
    configure(settings, argv)
    validate_settings(settings)
    return settings


# The table of plain vs all three on the main job's settings, and the command that writes it.
COMBINED_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "combined.json")
COMBINED_COMMAND = "python experiments/run.py --suite small --only combined"


def main(argv):
    """Train with the settings above, overridden by argv; returns the finished Trainer."""
    settings = settings_from(argv)
    with claim_out_dir(settings):
        trainer = Trainer(settings)
        trainer.run()
    if not argv and trainer.master:  # the main job: its result beside the plain model's, on the same settings
        print(beside_plain(math.exp(trainer.score_val(len(trainer.tokens["val"]))["val_loss"]), COMBINED_RESULTS))
    return trainer


def beside_plain(val_ppl, results_path):
    """The main job's validation perplexity on the whole split beside the plain GPT's (mean over seeds) from the
    results experiments/combined.py wrote, or the command that writes them."""
    mine = f"validation perplexity {val_ppl:.2f} (whole split) with all three techniques"
    if not os.path.isfile(results_path):
        return f"{mine}; for the plain GPT's on the same settings, run `{COMBINED_COMMAND}` (it writes {results_path})"
    with open(results_path) as f:
        plain = json.load(f)["plain"]["val_ppl"]
    return (f"{mine}; the plain GPT on the same settings: {plain:.2f}, mean over seeds ({results_path}, from "
            f"`{COMBINED_COMMAND}`)")


@contextmanager
def claim_out_dir(s):
    """Make out_dir this run's for its whole life, before any work: it must be writable, no other live run may use
    it (a lock the OS drops when the process dies, however it dies), and a new run must not silently replace the
    run it holds. Only rank 0 writes to out_dir; an evaluation-only run writes nothing."""
    if s["eval_only"] or int(os.environ.get("RANK", 0)) != 0:
        yield
        return
    out_dir = s["out_dir"]
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"probe")
        lock = open(os.path.join(out_dir, ".lock"), "a")
    except OSError as e:
        raise ConfigError(f"cannot write to out_dir {out_dir} ({e.strerror}): choose another --out_dir or make it "
                          f"writable") from None
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another run is using out_dir {out_dir} (it holds {lock.name}): wait for it to "
                                  f"finish, or choose another --out_dir") from None
            except OSError:  # a filesystem without locks (some network mounts): the run goes unlocked
                pass
        log = os.path.join(out_dir, "log.jsonl")
        holds_a_run = os.path.exists(os.path.join(out_dir, "ckpt.pt")) or (os.path.isfile(log) and
                                                                          os.path.getsize(log) > 0)
        if holds_a_run and s["init_from"] != "resume" and not s["overwrite"]:
            raise ConfigError(f"out_dir {out_dir} already holds a run (ckpt.pt, log.jsonl): continue it with "
                              f"--init_from=resume, choose another --out_dir, or pass --overwrite to replace it")
        for name in os.listdir(out_dir):  # the lock is ours, so these are a killed run's unfinished writes
            if name.startswith(("ckpt.pt.", "log.jsonl.")) and name.endswith(".tmp"):
                os.remove(os.path.join(out_dir, name))
        yield


HEALTH_FROM = 0.2  # share of max_iters after which the techniques' health is judged


class Trainer:
    """One training run. A class only to keep the run's state (model, optimizer, data) in one place."""

    def __init__(self, s):
        self.s = s
        self.setup_processes()
        self.setup_device()
        self.data_dir = self.rank_zero_first(lambda: ensure_prepared(s["dataset"], s["tokenizer"]))
        self.meta = load_meta(self.data_dir)
        self.tokens = load_checked_tokens(self.data_dir, self.meta)
        for split, data in self.tokens.items():
            if len(data) <= s["block_size"]:
                raise ConfigError(f"the {split} split of '{s['dataset']}' has {len(data)} tokens, not more than "
                                  f"block_size {s['block_size']}: lower block_size")
        self.ngram_targets = None
        if s["ngram_mode"] != "off":
            self.ngram_targets = self.rank_zero_first(lambda: ngram.load_targets(
                s["ngram_mode"], self.data_dir, self.tokens["train"], s["ngram_n"], s["ngram_r"], s["seed"],
                self.meta["eot_token"], s["ngram_memory_mb"], s["ngram_workers"]))
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
            checkpoint = load_checkpoint(os.path.join(s["out_dir"], "ckpt.pt"), fix="start with init_from='scratch' "
                                         "(nothing to resume), or point out_dir at a run's folder")
            check_same_run(checkpoint, s)
            model_args.update({k: checkpoint["model_args"][k] for k in MODEL_KEYS})  # a tuned run's: from init_from
        if tune:
            checkpoint = (gpt2_checkpoint if is_hf_source(s["init_from"]) else load_checkpoint)(s["init_from"])
            tuned_vocab = checkpoint_vocab(checkpoint)
            check_same_tokenizer(tuned_vocab, self.meta)
            saved = checkpoint["model_args"]
            if s["block_size"] > saved["block_size"]:
                raise ConfigError(f"block_size {s['block_size']} is longer than the checkpoint's "
                                  f"{saved['block_size']}: its position table has no rows for it")
            shape = {k: saved[k] for k in MODEL_KEYS}
            if self.meta["tokenizer"] == "char":  # the dataset's characters; map_token_rows moves the learned rows
                shape["vocab_size"] = model_args["vocab_size"]
            depth = mod.depth_problem(s["mod_k"], saved["n_layer"])
            if depth:
                raise ConfigError(f"{depth} (n_layer is the checkpoint's)")
            if self.master:
                print(f"tuning {s['init_from']}: model shape {shape} taken from the checkpoint")
            model_args.update(shape, block_size=saved["block_size"])
        torch.manual_seed(s["seed"])
        gpt = GPT(GPTConfig(**model_args))
        if tune:  # the GPT's weights come from the checkpoint; the techniques' modules start fresh around them
            weights = tuned_gpt_weights(checkpoint)
            if self.meta["tokenizer"] == "char":
                weights = map_token_rows(weights, tuned_vocab, self.meta, gpt.state_dict())
            gpt.load_state_dict(weights)
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
            self.last_record = checkpoint.get("log_record")  # None in checkpoints written before it was kept
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
        ix = torch.randint(len(self.tokens[split]) - self.s["block_size"], (n,), generator=generator)
        return self.batch_at(split, ix)

    def batch_at(self, split, ix):
        """The windows of block_size tokens that start at positions ix of a split."""
        T = self.s["block_size"]
        data = self.tokens[split]
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
        results = {}
        for split in ("train", "val"):
            generator = torch.Generator().manual_seed(self.s["seed"] + 1)
            results[split] = self.mean_stats(self.get_batch(split, generator, self.s["batch_size"])
                                             for _ in range(self.s["eval_iters"]))
        return results

    @torch.no_grad()
    def mean_stats(self, batches):
        """Mean of every scalar the model reports over batches, each weighted by its number of windows."""
        self.model.eval()
        sums, windows = {}, 0
        for x, y, extra in batches:
            with self.autocast:
                _, stats = self.model(x, y, extra)
            for name, value in stats.items():
                sums[name] = sums.get(name, 0.0) + value.float().item() * len(x)
            windows += len(x)
        self.model.train()
        return {name: total / windows for name, total in sums.items()}

    def score_val(self, max_tokens):
        """The kept weights' mean of every reported scalar over the consecutive block_size windows in the first
        max_tokens tokens of the validation split, written to out_dir/score.json."""
        s = self.s
        if s["keep_best"]:
            best = torch.load(os.path.join(s["out_dir"], "best.pt"), map_location=self.device, weights_only=False)
            self.model.load_state_dict(best["model"])
        T = s["block_size"]
        starts = torch.arange(0, min(max_tokens, len(self.tokens["val"]) - 1) - T + 1, T)
        stats = self.mean_stats(self.batch_at("val", ix) for ix in torch.split(starts, s["batch_size"]))
        score = {"val_loss": stats.pop("ce"), "val_tokens": len(starts) * T, "iter": self.iter_num,
                 "weights": "best.pt" if s["keep_best"] else "ckpt.pt", **{f"val_{k}": v for k, v in stats.items()}}
        write_atomically(os.path.join(s["out_dir"], "score.json"), lambda f: f.write(json.dumps(score).encode()))
        print(f"validation loss over {score['val_tokens']:,} tokens of the split ({score['weights']}): "
              f"{score['val_loss']:.4f}")
        return score

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
            self.start_log()
        tokens_per_iter = s["gradient_accumulation_steps"] * s["batch_size"] * s["block_size"]
        if self.master:
            print(f"{tokens_per_iter:,} tokens per iteration on {self.world} process(es), device {self.device}, "
                  f"{self.dtype}{', compiled' if self.compile else ''}")
        first_iter = self.iter_num
        bar = tqdm(total=s["max_iters"], initial=self.iter_num, disable=not self.master, dynamic_ncols=True)
        t_last, iters_since, tokens_per_sec, lossf = time.time(), 0, 0.0, float("nan")
        self.train_losses = []
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
                self.train_losses = []  # (iteration, loss) at each log_interval until the next evaluation
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
                self.train_losses.append((self.iter_num, lossf))
                now = time.time()
                tokens_per_sec = iters_since * tokens_per_iter / (now - t_last + 1e-9) if iters_since else 0.0
                self.elapsed += now - t_last
                t_last, iters_since = now, 0
                bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}")
        bar.close()
        if s["score_val_tokens"] > 0 and self.master:
            self.score_val(s["score_val_tokens"])
        if self.master and s["sample_tokens"] > 0:
            self.print_sample()
        if self.master:
            print(self.how_to_continue())
        if self.ddp:
            dist.destroy_process_group()

    def start_log(self):
        """A new run starts an empty log, without the checkpoint of the run it replaces. A resumed run keeps the
        records before its checkpoint plus the checkpoint's own: a kill after the checkpoint landed and before its
        line did, or an older version's log that ran ahead of its checkpoint, leaves no evaluation missing or
        logged twice."""
        out_dir = self.s["out_dir"]
        records = []
        if self.s["init_from"] == "resume":
            records = [r for r in read_log(out_dir) if r["iter"] <= self.iter_num]
            if self.last_record is not None:
                records = [r for r in records if r["iter"] < self.iter_num] + [self.last_record]
        elif os.path.exists(os.path.join(out_dir, "ckpt.pt")):
            os.remove(os.path.join(out_dir, "ckpt.pt"))
        lines = "".join(json.dumps(r) + "\n" for r in records)
        write_atomically(os.path.join(out_dir, "log.jsonl"), lambda f: f.write(lines.encode()))

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
                  "elapsed_s": round(self.elapsed, 2), "trainable_params": self.n_trainable,
                  "train_losses": self.train_losses}
        record.update({f"val_{k}": v for k, v in results["val"].items() if k != "ce"})
        record.update({f"train_{k}": v for k, v in results["train"].items() if k.startswith("ngram")})
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
        if s["keep_best"] and val_loss < self.best_val_loss:  # what to score: ckpt.pt stays the one to resume
            save_checkpoint(os.path.join(s["out_dir"], "best.pt"), {
                "model": self.model.state_dict(), "model_args": self.model_args, "config": s,
                "iter_num": self.iter_num, "val_loss": val_loss, "tokenizer": self.meta["tokenizer"],
                "vocab": vocabulary(self.meta)})
        self.best_val_loss = min(self.best_val_loss, val_loss)
        save_checkpoint(os.path.join(s["out_dir"], "ckpt.pt"), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "model_args": self.model_args, "config": s,
            "iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "elapsed_s": self.elapsed,
            "tokenizer": self.meta["tokenizer"], "vocab": vocabulary(self.meta), "log_record": record})
        # The line follows the checkpoint, so the log never runs ahead of what a resume starts from.
        with open(os.path.join(s["out_dir"], "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_log(s["out_dir"], run_title(s), s["ngram_alpha"])

    def warn_degenerate(self, record):
        """A technique that stops doing its job says so: the warning is kept in the record (the plot marks it) and
        printed the first time each technique degenerates. Judged from HEALTH_FROM of the run on: a router still
        finding its layers or a planner still learning its labels in the first steps is not degenerate."""
        if record["iter"] < HEALTH_FROM * self.s["max_iters"]:
            return
        warnings = {name: w for name, w in (("mod", mod.health_warning(record)),
                                             ("planner", planner.health_warning(record))) if w}
        if warnings:
            record["warnings"] = list(warnings.values())
        for name, warning in warnings.items():
            if name not in self.warned:
                self.warned.add(name)
                tqdm.write(f"warning: {warning}")

    def how_to_continue(self):
        """Where the checkpoint is, and the commands that sample from it and resume it."""
        changed = changed_settings(self.s)
        launcher = f"torchrun --standalone --nproc_per_node={self.world}" if self.ddp else "python"
        resume = [f"--{k}={setting_text(v)}" for k, v in changed.items() if k not in ("init_from", "overwrite")]
        resume.append("--init_from=resume")
        out_dir = self.s["out_dir"]
        return (f"checkpoint: {os.path.join(out_dir, 'ckpt.pt')} (iteration {self.iter_num}), curves: "
                f"{os.path.join(out_dir, 'loss.png')}\n"
                f"sample from it: python sample.py {shlex.quote(f'--out_dir={out_dir}')}\n"
                f"resume it (raise --max_iters to train further): {launcher} train.py "
                + " ".join(map(shlex.quote, resume)))

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
    """Write state to path atomically. A failed write (a full disk, a folder gone read-only) keeps the previous
    checkpoint and stops the run with one line."""
    try:
        write_atomically(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__  # torch wraps the file's OSError in a RuntimeError
        if not isinstance(cause, OSError):
            raise
        raise OSError(f"cannot write the checkpoint to {path}: {(cause.strerror or str(cause)).lower()}; the "
                      f"previous checkpoint is kept: free space or fix the folder, then --init_from=resume") from None


def check_same_run(checkpoint, settings):
    """Resuming continues one run: the settings that shape the weights and the data must be the checkpoint's
    settings. (Its model shape can differ from them: a tuned run took it from init_from. vocab_size is no setting:
    the dataset fixes it.)"""
    saved = checkpoint["config"]
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {settings[k]!r}" for k in MODEL_KEYS + RUN_KEYS
              if k in settings and saved.get(k) != settings[k]]
    if differ:
        raise ConfigError("cannot resume: the checkpoint comes from another configuration (" + "; ".join(differ)
                          + "). Pass the same config file and overrides as the original run, or continue its weights "
                          "as a new run in a new out_dir with --init_from=<its ckpt.pt>")


def check_same_tokenizer(vocab, meta):
    """Tuning maps token rows between two vocabularies of one kind (map_token_rows); characters and BPE tokens share
    no rows."""
    if vocab["tokenizer"] != meta["tokenizer"]:
        raise ConfigError(f"the checkpoint's vocabulary ({describe(vocab)}) and that of dataset '{meta['dataset']}' "
                          f"({describe(meta)}) are of different kinds: tune on a dataset with the checkpoint's "
                          f"tokenizer (your own text: --tokenizer={vocab['tokenizer']})")


def describe(vocab):
    if vocab["tokenizer"] == "char":
        return f"the {vocab['vocab_size']} characters of {vocab['dataset']}"
    return f"GPT-2 BPE, {vocab['vocab_size']:,} tokens"


def map_token_rows(weights, vocab, meta, fresh):
    """The tuned GPT's weights with their token rows (the tied wte and lm_head) moved to the dataset's character ids:
    a character in both vocabularies keeps its learned row, a character new to the checkpoint keeps its row of
    `fresh` (a new GPT's state_dict, so it starts as in a model trained from scratch)."""
    pairs = [(i, vocab["stoi"][c]) for c, i in meta["stoi"].items() if c in vocab["stoi"]]
    new = sorted(set(meta["stoi"]) - set(vocab["stoi"]))
    if new or len(pairs) < len(vocab["stoi"]):
        print(f"tuning across vocabularies: {len(pairs)} of the dataset's {len(meta['stoi'])} characters keep "
              f"their learned rows; {len(new)} new ones start fresh ({''.join(new[:40])!r}); "
              f"{len(vocab['stoi']) - len(pairs)} of the checkpoint's are not in the dataset")
    rows = fresh["lm_head.weight"].clone()
    if pairs:
        new_ids, old_ids = torch.tensor(pairs).T
        rows[new_ids] = weights["lm_head.weight"][old_ids]
    return {**weights, "lm_head.weight": rows, "transformer.wte.weight": rows}


def tuned_gpt_weights(checkpoint):
    """The GPT a checkpoint stands for: its 'gpt.*' weights, with a LoRA run's adapters merged into them."""
    weights = strip_prefix(checkpoint["model"], "gpt.")
    adapters = strip_prefix(checkpoint["model"], "lora.")
    if adapters:
        weights = merge_lora(weights, adapters, checkpoint["config"]["lora_alpha"] / checkpoint["config"]["lora_rank"])
    return weights


def strip_prefix(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def changed_settings(s):
    """The settings of a run that differ from the defaults above: what the command line changed."""
    return {k: v for k, v in s.items() if k in SETTINGS and v != globals()[k]}


def run_title(s):
    """The settings a run changed, out_dir aside: the title of its plot."""
    return " ".join(f"{k}={v}" for k, v in changed_settings(s).items() if k != "out_dir")


def setting_text(value):
    """value as --key=value text that the configurator reads back as the same value."""
    return str(value) if parse(str(value)) == value and type(parse(str(value))) is type(value) else repr(value)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, FloatingPointError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
