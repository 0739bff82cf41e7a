"""
Train a GPT, alone or with the techniques of this repository, on the CPU, one GPU, or several GPUs with DDP.

    python train.py                                        # the main job: small GPT on shakespeare_char, all three
    python train.py config/plain.py                        # the same GPT with every technique off
    python train.py config/train_wiki.py --max_iters=500   # a config file, then overrides
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2_124m_sotu.py

Settings are the globals below; config files and --key=value override them (configurator.py checks names and
types, training/settings_checks.py the values). Every evaluation writes out_dir/ckpt.pt (training/checkpoint.py), then
appends a line to out_dir/log.jsonl and redraws out_dir/loss.png (training/plot.py). A run holds out_dir for its whole
life (training/run_folder.py).
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

import lm
from configurator import configure, is_setting
from data.dataset import load_checked_tokens, load_meta
from data.files import write_atomically
from data.prepare import ensure_prepared
from data.vocabulary import document_start, get_codec, vocabulary
from lm import LanguageModel, mean_stats
from model import GPT, GPTConfig, configure_optimizers
from training import checkpoint as ckpt, devices, run_folder, run_report, settings_checks, tuning
from training.plot import plot_log

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # the run's folder: ckpt.pt, log.jsonl, loss.png (and best.pt, score.json)
eval_interval = 250  # iterations between evaluations, each of which writes a checkpoint
eval_iters = 20  # batches per split in each evaluation; the same batches every time, so curves compare
log_interval = 10  # iterations between progress-bar updates (each costs a device sync)
eval_only = False  # evaluate the initial (or resumed) model and stop
# 'scratch', 'resume' (continue out_dir/ckpt.pt), or what to tune: the path of a checkpoint, OpenAI's GPT-2
# ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a folder written by transformers' save_pretrained (training/hf.py)
init_from = "scratch"
overwrite = False  # a new run may replace the run already in out_dir (its ckpt.pt and log.jsonl); else it is refused
base = "train"  # the base GPT: 'train', 'frozen' (only the techniques' parameters train) or 'lora' (training/lora.py)
lora_rank = 8  # rank of the LoRA adapters (base='lora')
lora_alpha = 16.0  # LoRA's scale is lora_alpha / lora_rank
seed = 1337  # fixes the initialisation, the batches and every random draw of the run
sample_tokens = 300  # length of the sample printed at the end; 0 prints none
keep_best = False  # also write out_dir/best.pt (the weights) whenever an evaluation sets a new best val loss
# after the last step, score the weights the run keeps (best.pt with keep_best, else the last) on the first
# score_val_tokens tokens of the validation split (all of it when shorter), in consecutive block_size windows, and
# write out_dir/score.json: what the experiments compare. 0 scores nothing.
score_val_tokens = 0
wandb_log = False  # also log every evaluation to Weights & Biases (pip install wandb)
wandb_project = "three-techniques"  # the wandb project the run is logged to
wandb_run_name = ""  # the run's name in wandb; empty lets wandb choose one
# data
dataset = "shakespeare_char"  # a name in data/, your own text (a .txt file or a folder of them), or a prepared folder
tokenizer = "char"  # how your own text is tokenized: 'char' or 'gpt2' (BPE); other datasets bring their own
batch_size = 12  # sequences per micro-batch
block_size = 64  # context length in tokens
gradient_accumulation_steps = 1  # micro-batches per optimizer step, over all processes together
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads per block
n_embd = 128  # width of the residual stream
dropout = 0.0  # dropout rate in attention, MLP and embeddings (0 for small data that does not overfit)
bias = False  # biases in Linear layers and LayerNorms (GPT-2 has them)
flash = True  # fused attention kernel; False runs the readable matmul-softmax-matmul
# AdamW and its schedule: linear warmup, then cosine decay to min_lr
learning_rate = 1e-3  # peak learning rate
max_iters = 3000  # optimizer steps in all
weight_decay = 0.1  # on matrices only, not on biases and norms
beta1 = 0.9  # AdamW's first-moment decay
beta2 = 0.99  # AdamW's second-moment decay
grad_clip = 1.0  # clip the gradient's global norm to this; 0 disables clipping
decay_lr = True  # cosine decay; False keeps learning_rate constant
warmup_iters = 100  # linear warmup steps
lr_decay_iters = None  # None: decay over max_iters
min_lr = 1e-4  # the learning rate at the end of the decay
# training objective
label_smoothing = 0.0  # the classic soft-target baseline
# The three techniques are on by default: `python train.py` is the main job, all three on the default dataset.
# config/plain.py switches them off: the plain GPT.
# n-gram soft targets (ngram.py)
ngram_mode = "compact"  # 'off', 'all' (exact y_all, slow) or 'compact' (CoCoNTs)
ngram_n = 5  # context of n-1 tokens: 4 characters here; 3 for GPT-2 BPE, whose 50k ids allow at most 4
ngram_r = 8  # top tokens kept per context by 'compact'
ngram_alpha = 0.5  # weight of the n-gram target; the observed token gets 1 - alpha
ngram_memory_mb = 2000  # memory bound of the n-gram build, workers included, whatever the corpus size (data/ngrams.py)
ngram_workers = 2  # processes that count partitions of the n-gram build at once
# mixture-of-depths ensemble (mod.py): the last mod_k layers vote through a router
mod_k = 2  # late layers in the ensemble; 0 or 1 is the plain model
mod_lambda = 0.5  # weight of the distillation KL from the final layer to the other late layers
mod_distill_frac = 0.125  # share of a batch's positions the distillation uses in training: its cost and memory
mod_router_entropy = 0.01  # weight of the routing entropy subtracted from the loss; 0 lets the router collapse (mod.py)
# sentence planner (planner.py)
plan_mode = "soft"  # none | fixed | uniform | oracle (sees the future: an upper bound) | hard | st | soft
plan_k = 64  # number of sentence labels (k-means clusters)
plan_context = 8  # the planner reads this many sentences before the one it plans
plan_tau = 1.0  # softmax temperature of 'soft' and 'st'
plan_lambda = 1.0  # weight of the planner's label cross-entropy in the loss: a planner trained from scratch needs it
plan_embedder = "lsa"  # sentence encoder of the labels: lsa, minilm or mpnet
plan_seed = 0  # seed of the embedder and k-means that make the labels
plan_init_planner = ""  # planner.pt written by `python -m tools.pretrain_planner` (stage 2), loaded into a new run
# system
device = "auto"  # 'auto' picks cuda, then mps, then cpu; or name one, e.g. 'cuda:1'
dtype = "auto"  # 'auto': bfloat16 on CUDA where supported, else float16 on CUDA, else float32
compile = None  # None compiles on CUDA where Triton is installed; True or False to force
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if is_setting(k, v)}
PLAIN_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "plain.py")


def settings_from(argv):
    """The settings of a run with these command-line arguments: the defaults above, then argv's config files and
    --key=value, checked."""
    settings = dict(DEFAULTS)
    configure(settings, argv, help_from=__file__)
    settings_checks.check(settings)
    return settings


def main(argv):
    """Train with the settings above, overridden by argv; returns the finished Trainer."""
    s = settings_from(argv)
    with run_folder.claimed(s, int(os.environ.get("RANK", 0))):
        try:
            trainer = Trainer(s)
            trainer.run(main_job=not argv)
        except KeyboardInterrupt:  # Ctrl-C: one line on where the run stands, not a traceback
            raise KeyboardInterrupt(run_folder.interrupted(s, DEFAULTS)) from None
    return trainer


def batch_seed(seed, iteration):
    """The seed of iteration's batch, identical on every rank (each then takes its own slice of it)."""
    return seed * 1_000_003 + iteration


def dropout_seed(seed, iteration, rank):
    """The seed of iteration's dropout masks on one rank."""
    return batch_seed(seed, iteration) + 7_919 * (rank + 1)


class Trainer:
    """One training run: its settings, processes and device, data, model and optimizer, in the order they are set
    up. A class only to keep the run's state in one place."""

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
        self.iter_num, self.best_val_loss, self.elapsed, self.last_record = 0, float("inf"), 0.0, None
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
        if self.resuming:
            self.continue_from(start)
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

    def continue_from(self, checkpoint):
        self.model.load_state_dict(checkpoint["model"])
        self.iter_num, self.best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        self.elapsed, self.last_record = checkpoint["elapsed_s"], checkpoint.get("log_record")
        self.resumed_optimizer = checkpoint["optimizer"], checkpoint["scaler"]

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
            results[split] = mean_stats(self.model, (self.get_batch(split, generator, self.s["batch_size"])
                                                     for _ in range(self.s["eval_iters"])), self.autocast)
        return results

    def score_val(self, max_tokens):
        """The kept weights' mean of every reported scalar over the consecutive block_size windows in the first
        max_tokens tokens of the validation split, written to out_dir/score.json."""
        s = self.s
        if s["keep_best"]:
            self.model.load_state_dict(ckpt.load(os.path.join(s["out_dir"], "best.pt"))["model"])
        T = s["block_size"]
        starts = torch.arange(0, min(max_tokens, len(self.tokens["val"]) - 1) - T + 1, T)
        stats = mean_stats(self.model, (self.batch_at("val", ix) for ix in torch.split(starts, s["batch_size"])),
                           self.autocast)
        score = {"val_loss": stats.pop("ce"), "val_tokens": len(starts) * T, "iter": self.iter_num,
                 "weights": "best.pt" if s["keep_best"] else "ckpt.pt", **{f"val_{k}": v for k, v in stats.items()}}
        write_atomically(os.path.join(s["out_dir"], "score.json"), lambda f: f.write(json.dumps(score).encode()))
        return score

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self, main_job=False):
        """The loop: evaluate (and save) every eval_interval steps and at the end, train a step, repeat. The main
        job (python train.py) ends by scoring the whole validation split beside the plain GPT's stored result."""
        s = self.s
        if s["eval_only"]:
            if self.master:
                print(json.dumps({split: r["ce"] for split, r in self.evaluate().items()}))
            return
        self.start()
        already_saved = self.resuming  # a resumed run has already evaluated and saved the iteration it starts at
        with tqdm(total=s["max_iters"], initial=self.iter_num, disable=not self.master, dynamic_ncols=True) as bar:
            while True:
                lr = self.lr_at(self.iter_num)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                finished = self.iter_num >= s["max_iters"]
                if (self.iter_num % s["eval_interval"] == 0 or finished) and not already_saved:
                    self.eval_log_and_save(lr)
                if finished:
                    break
                objective, ce = self.train_step()
                self.iter_num, self.steps_since, already_saved = self.iter_num + 1, self.steps_since + 1, False
                bar.update(1)
                if self.iter_num % s["log_interval"] == 0:
                    self.log_progress(objective, ce, lr, bar)
        self.finish(main_job)

    def start(self):
        if self.master:
            run_folder.start_log(self.s["out_dir"], self.resuming, self.iter_num, self.last_record)
            self.reporter = run_report.Reporter(self.s)
            print(f"{self.tokens_per_iter:,} tokens per iteration on {self.world} process(es), device {self.device},"
                  f" {self.dtype}{', compiled' if self.compile else ''}")
        self.train_losses, self.tokens_per_sec = [], 0.0  # (iteration, objective) every log_interval since an eval
        self.t_last, self.steps_since = time.time(), 0  # elapsed_s and tokens/s count training, not evaluations

    @property
    def tokens_per_iter(self):
        return self.s["gradient_accumulation_steps"] * self.s["batch_size"] * self.s["block_size"]

    def train_step(self):
        """One optimizer step over this process's share of the global batch; returns the last micro-batch's training
        objective (the loss the gradient comes from: plain or n-gram CE plus the techniques' terms) and its plain
        cross-entropy."""
        s = self.s
        # Every draw of an iteration is seeded from (seed, iteration[, rank]): the iteration number is therefore the
        # whole data position and RNG state, and a resumed run replays exactly what an uninterrupted one would.
        generator = torch.Generator().manual_seed(batch_seed(s["seed"], self.iter_num))
        torch.manual_seed(dropout_seed(s["seed"], self.iter_num, self.rank))
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
        if s["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), stats["ce"]

    def log_progress(self, objective, ce, lr, bar):
        """Every log_interval steps (a device sync): the plain CE and the objective onto the bar, the objective
        into the next log record."""
        lossf = objective.item() * self.local_accum
        if not math.isfinite(lossf):
            raise FloatingPointError(f"the training loss is {lossf} at iteration {self.iter_num}; stopping. The last "
                                     f"good checkpoint is {os.path.join(self.s['out_dir'], 'ckpt.pt')}: lower "
                                     f"learning_rate or raise warmup_iters, then resume from it with "
                                     f"--init_from=resume")
        self.train_losses.append((self.iter_num, lossf))
        now = time.time()
        self.tokens_per_sec = self.steps_since * self.tokens_per_iter / (now - self.t_last + 1e-9)
        self.elapsed += now - self.t_last
        self.t_last, self.steps_since = now, 0
        bar.set_postfix_str(f"train_ce={ce.item():.4f}, objective={lossf:.4f}, lr={lr:.2e}, "
                            f"tok_s={self.tokens_per_sec:,.0f}")

    def eval_log_and_save(self, lr):
        """Evaluate and report it, write the checkpoint(s), then the log line and the plot (rank 0); the time it
        takes is not training time."""
        self.elapsed += time.time() - self.t_last
        if self.master:
            self.save_evaluation(lr)
        self.train_losses, self.t_last = [], time.time()

    def save_evaluation(self, lr):
        s = self.s
        record = self.log_record(lr)
        self.reporter.evaluation(record)
        if not math.isfinite(record["val_loss"]):
            raise FloatingPointError(f"the validation loss is {record['val_loss']} at iteration {self.iter_num}; "
                                     f"stopping without overwriting the last good checkpoint in {s['out_dir']}")
        if s["keep_best"] and record["val_loss"] < self.best_val_loss:  # what to score; ckpt.pt is what resumes
            ckpt.save(os.path.join(s["out_dir"], "best.pt"), ckpt.state(self, record, resumable=False))
        self.best_val_loss = min(self.best_val_loss, record["val_loss"])
        ckpt.save(os.path.join(s["out_dir"], "ckpt.pt"), ckpt.state(self, record))
        # The line follows the checkpoint, so the log never runs ahead of what a resume starts from.
        run_folder.append_log(s["out_dir"], record)
        plot_log(s["out_dir"], run_folder.run_title(s, DEFAULTS), s)

    def log_record(self, lr):
        """This evaluation's line of log.jsonl: the losses, the techniques' statistics, speed and progress."""
        results = self.evaluate()
        val_loss = results["val"]["ce"]
        record = {"iter": self.iter_num, "train_loss": results["train"]["ce"], "val_loss": val_loss,
                  "val_ppl": math.exp(min(val_loss, 50.0)), "lr": lr, "tokens_per_sec": self.tokens_per_sec,
                  "elapsed_s": round(self.elapsed, 2), "trainable_params": self.n_trainable,
                  "train_losses": self.train_losses}
        record.update({f"val_{k}": v for k, v in results["val"].items() if k != "ce"})
        record.update({f"train_{k}": v for k, v in results["train"].items() if k.startswith("ngram")})
        self.last_record = record
        mfu = devices.mfu(self.model.gpt, self.tokens_per_sec, self.world, self.device)
        if mfu is not None:
            record["mfu"] = mfu
        return record

    def finish(self, main_job):
        """After the last step (rank 0): the score, the final numbers, a sample and the commands that go on."""
        s = self.s
        if self.master:
            score_tokens = len(self.tokens["val"]) if main_job else s["score_val_tokens"]
            score = self.score_val(score_tokens) if score_tokens > 0 else None
            plain = run_report.plain_result() if main_job else None
            print(run_report.final_numbers(self.last_record["val_loss"], s["eval_iters"], score, plain))
            if s["sample_tokens"] > 0 and s["plan_mode"] != "oracle":  # an oracle plan needs the text's future
                self.print_sample()
            print(run_folder.how_to_continue(s, DEFAULTS, self.iter_num, self.world))
            self.reporter.finish()
        if self.ddp:
            dist.destroy_process_group()

    def print_sample(self):
        encode, decode = get_codec(self.meta)
        idx = torch.tensor([encode(document_start(self.meta))], dtype=torch.long, device=self.device)
        torch.manual_seed(self.s["seed"])
        self.model.eval()
        with self.autocast:
            out = self.model.generate(idx, self.s["sample_tokens"], temperature=0.8, top_k=200,
                                      plan_data=self.technique_data.get("plan"), vocab=self.vocab)
        print("-" * 40 + " sample " + "-" * 40)
        print(decode(out[0].tolist()))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, FloatingPointError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:  # under torchrun, the one a dead process leaves behind: gloo's or NCCL's words
        if "RANK" not in os.environ or not ("peer" in str(e) or isinstance(e, dist.DistBackendError)):
            raise
        sys.exit(f"error: rank {os.environ['RANK']} lost contact with another process of the run, which has "
                 f"probably died (its own error, if any, is above): {str(e).splitlines()[0]}")
