"""
Train a GPT, alone or with the techniques of this repository, on the CPU, one GPU, or several GPUs with DDP.

    python train.py                                        # the main job: small GPT on shakespeare_char, techniques on
    python train.py config/plain.py                        # the same GPT with every technique off
    python train.py config/train_wiki.py --max_iters=500   # a config file, then overrides
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2_124m_sotu.py

The settings are the globals below; config files and --key=value override them (configurator.py checks names and
types, training/settings_checks.py the values). Then, in nanoGPT's order: the set-up, the data, the model and the
optimizer (training/trainer.py), the evaluation, and the loop. Every evaluation writes out_dir/ckpt.pt
(training/checkpoint.py), then appends a line to out_dir/log.jsonl and redraws out_dir/loss.png (training/plot.py).
A run holds out_dir for its whole life (training/run_folder.py).
"""

import json
import math
import os
import sys
import time

import torch.distributed as dist
from tqdm import tqdm

from configurator import configure, is_setting
from training import checkpoint as ckpt, devices, run_folder, run_report, settings_checks
from training.plot import plot_log
from training.trainer import Trainer

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
# the linears LoRA adapts, by the end of their names in a block: 'attn.c_proj' in every block, 'h.7.attn.c_proj' in one
lora_targets = "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"
train_ln_f = False  # with base='frozen' or 'lora', the final LayerNorm trains too (mod.py's late-layer norms always do)
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
# `python train.py` is the main job: the n-gram targets and the planner on the default dataset, the ensemble off
# (--mod_k=2 adds it). config/plain.py switches every technique off: the plain GPT.
# n-gram soft targets (ngram.py)
ngram_mode = "compact"  # 'off', 'all' (exact y_all, slow) or 'compact' (CoCoNTs)
ngram_n = 5  # context of n-1 tokens: 4 characters here; 3 for GPT-2 BPE, whose 50k ids allow at most 4
ngram_r = 8  # top tokens kept per context by 'compact'
ngram_alpha = 0.5  # weight of the n-gram target; the observed token gets 1 - alpha
ngram_memory_mb = 2000  # memory bound of the n-gram build, workers included, whatever the corpus size (data/ngrams.py)
ngram_workers = 2  # processes that count partitions of the n-gram build at once
# mixture-of-depths ensemble (mod.py): the last mod_k layers vote through a router
mod_k = 0  # late layers in the ensemble; 0 or 1 is the plain model. Off: in the main job it hurts (docs/results.md)
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
    """Train with the settings above, overridden by argv; returns the run's Trainer (its model, data and settings;
    what the run logged is in out_dir/log.jsonl)."""
    s = settings_from(argv)
    with run_folder.claimed(s, int(os.environ.get("RANK", 0))):
        try:
            return train(s, main_job=not argv)
        except KeyboardInterrupt:  # Ctrl-C: one line on where the run stands, not a traceback
            raise KeyboardInterrupt(run_folder.interrupted(s, DEFAULTS)) from None


def train(s, main_job=False):
    """The run: set it up, then evaluate (and save) every eval_interval steps and at the end, train a step, repeat.
    The main job (python train.py) ends by scoring the whole validation split beside the plain GPT's stored result."""
    # set-up, data, model, optimizer: this process's device and precision, the token splits and what the
    # techniques read with every batch, the GPT with the techniques around it, AdamW
    trainer = Trainer(s)
    if s["eval_only"]:
        if trainer.master:
            print(json.dumps({split: r["ce"] for split, r in trainer.evaluate().items()}))
        return trainer

    # the loop's state: what a checkpoint saves and a resume continues from
    run = trainer.resumed or {"iter_num": 0, "best_val_loss": float("inf"), "elapsed_s": 0.0, "log_record": None}
    logged = []  # (iteration, training objective, gradient norm) every log_interval since the last evaluation
    t_last, steps_since, tokens_per_sec = time.time(), 0, 0.0  # time and speed count training, not evaluations
    saved = trainer.resuming  # a resumed run has already evaluated and saved the iteration it starts at
    reporter = run_report.Reporter(s) if trainer.master else None
    if trainer.master:
        run_folder.start_log(s["out_dir"], trainer.resuming, run["iter_num"], run["log_record"])
        print(f"{trainer.tokens_per_iter:,} tokens per iteration on {trainer.world} process(es), device "
              f"{trainer.device}, {trainer.dtype}{', compiled' if trainer.compile else ''}")

    with tqdm(total=s["max_iters"], initial=run["iter_num"], disable=not trainer.master, dynamic_ncols=True) as bar:
        while True:
            lr = trainer.lr_at(run["iter_num"])
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
            finished = run["iter_num"] >= s["max_iters"]
            if (run["iter_num"] % s["eval_interval"] == 0 or finished) and not saved:
                run["elapsed_s"] += time.time() - t_last
                if trainer.master:
                    run["log_record"] = evaluate_and_save(trainer, run, lr, logged, tokens_per_sec, reporter)
                logged, t_last = [], time.time()
            if finished:
                break
            objective, ce, grad_norm = trainer.train_step(run["iter_num"])
            run["iter_num"], steps_since, saved = run["iter_num"] + 1, steps_since + 1, False
            bar.update(1)
            if run["iter_num"] % s["log_interval"] == 0:  # reading the losses waits for the device
                loss, grad_norm = objective.item() * trainer.local_accum, grad_norm.item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the training loss is {loss} at iteration {run['iter_num']}; stopping. "
                                             f"The last good checkpoint is {os.path.join(s['out_dir'], 'ckpt.pt')}: "
                                             f"lower learning_rate or raise warmup_iters, then resume from it with "
                                             f"--init_from=resume")
                logged.append((run["iter_num"], loss, grad_norm))
                now = time.time()
                tokens_per_sec = steps_since * trainer.tokens_per_iter / (now - t_last + 1e-9)
                run["elapsed_s"] += now - t_last
                t_last, steps_since = now, 0
                bar.set_postfix_str(f"train_ce={ce.item():.4f}, objective={loss:.4f}, grad_norm={grad_norm:.3f}, "
                                    f"lr={lr:.2e}, tok_s={tokens_per_sec:,.0f}")

    if trainer.master:
        finish(trainer, run, main_job, reporter)
    if trainer.ddp:
        dist.destroy_process_group()
    return trainer


def evaluate_and_save(trainer, run, lr, logged, tokens_per_sec, reporter):
    """One evaluation (rank 0): the losses and the techniques' statistics on fixed batches, reported; the
    checkpoint(s); then the log line and the plot. Returns the log record."""
    s, results = trainer.s, trainer.evaluate()
    val_loss = results["val"]["ce"]
    record = {"iter": run["iter_num"], "train_loss": results["train"]["ce"], "val_loss": val_loss,
              "val_ppl": math.exp(min(val_loss, 50.0)), "lr": lr, "tokens_per_sec": tokens_per_sec,
              "elapsed_s": round(run["elapsed_s"], 2), "trainable_params": trainer.n_trainable,
              "train_losses": [(it, loss) for it, loss, _ in logged],
              "grad_norms": [(it, norm) for it, _, norm in logged]}
    record.update({f"val_{k}": v for k, v in results["val"].items() if k != "ce"})
    record.update({f"train_{k}": v for k, v in results["train"].items() if k.startswith("ngram")})
    mfu = devices.mfu(trainer.model.gpt, tokens_per_sec, trainer.world, trainer.device)
    if mfu is not None:
        record["mfu"] = mfu
    reporter.evaluation(record)
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"the validation loss is {val_loss} at iteration {run['iter_num']}; stopping "
                                 f"without overwriting the last good checkpoint in {s['out_dir']}")
    if s["keep_best"] and val_loss < run["best_val_loss"]:  # what to score; ckpt.pt is what resumes
        ckpt.save(os.path.join(s["out_dir"], "best.pt"), ckpt.state(trainer, run, record, resumable=False))
    run["best_val_loss"] = min(run["best_val_loss"], val_loss)
    ckpt.save(os.path.join(s["out_dir"], "ckpt.pt"), ckpt.state(trainer, run, record))
    # The line follows the checkpoint, so the log never runs ahead of what a resume starts from.
    run_folder.append_log(s["out_dir"], record)
    plot_log(s["out_dir"], run_folder.run_title(s, DEFAULTS), s)
    return record


def finish(trainer, run, main_job, reporter):
    """After the last step (rank 0): the score, the final numbers, a sample and the commands that go on."""
    s = trainer.s
    score_tokens = len(trainer.tokens["val"]) if main_job else s["score_val_tokens"]
    score = trainer.score_val(score_tokens, run["iter_num"]) if score_tokens > 0 else None
    plain = run_report.plain_result() if main_job else None
    print(run_report.final_numbers(run["log_record"]["val_loss"], s["eval_iters"], score, plain))
    if s["sample_tokens"] > 0 and s["plan_mode"] != "oracle":  # an oracle plan needs the text's future
        print("-" * 40 + " sample " + "-" * 40)
        print(trainer.sample(s["sample_tokens"]))
    print(run_folder.how_to_continue(s, DEFAULTS, run["iter_num"], trainer.world))
    reporter.finish()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, FloatingPointError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:
        print(e, file=sys.stderr)
        sys.exit(130)
