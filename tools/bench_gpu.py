"""
`python -m tools.bench --gpu`: every CUDA path of this repository checked on one GPU, each check under its own time
limit and all of them under 8 minutes on an H100 or H200, compilation included. It prints one line per check as it ends,
and writes it to out-bench-gpu/table.txt, each ending in ok, FAILED (with the reason) or not run:

  - GPT-2 small's shape (12 layers, 768 wide, block 1024; random weights, nothing is downloaded) on wiki with
    bfloat16 autocast, torch.compile, fused AdamW and fused attention: ms per step, tokens/s and MFU against the
    GPU's bf16 peak (model.PEAK_BF16_FLOPS; the aim is at least 40% on an H100 or H200);
  - the same with each technique on, as a ratio to the plain step: n-gram compact, ensemble k = 2, planner soft;
  - the main job (python train.py) to its end: its validation loss beside the CPU run of the same seed
    (results/combined.json; within four times the CPU runs' seed-to-seed sd), and its wall time;
  - float16 with the loss scaler, the techniques and torch.compile; the readable attention (flash=False) against
    the fused one; resume (the losses after a resume are an uninterrupted run's); sampling with and without the KV
    cache, token for token, for the plain GPT, the ensemble and the planner;
  - and, named as not run, what one GPU cannot check: DDP across processes over NCCL.

Every timed step trains as train.py's loop does: the iteration's own batch and learning rate, then the next. What
the flags claim is observed: the fused attention by the kernels torch.profiler saw run, torch.compile by Dynamo's
counters (every graph it captured compiled by Inductor, no graph break). Each check runs on its own: one that fails
prints FAILED and the others still run; one past its time limit FAILED too, and once the 8 minutes are spent the
rest are not run. A check's own output (training logs, compiler messages) goes to out-bench-gpu/<check>.log.

Nothing here needs the internet once the datasets and their caches (n-gram targets, sentence labels) are prepared;
otherwise the checks time their building. One command, on any machine with PyPI (a CPU will do), prepares all of
it and lists the folders to copy, at the same paths, into the GPU machine's checkout:
    python -m tools.bench --gpu_prepare
The GPU machine needs torch with CUDA and requirements.txt's packages installed, and nothing else.
"""

import functools
import gc
import json
import math
import os
import re
import statistics
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

import torch
from torch._dynamo.utils import counters
from torch.autograd import DeviceType

import train
from data.vocabulary import document_start, get_codec
from model import GPT, GPTConfig, estimate_mfu, peak_flops
from tools import bench
from tools.experiments import combined
from training.devices import pick_precision
from training.plot import read_log
from training.trainer import Trainer

OUT = "out-bench-gpu"  # git-ignored (out*/): the table, each check's log, the main-job and resume checks' runs
GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)  # GPT-2 small (124M)
GPT2_RUN = [train.PLAIN_CONFIG, "--dataset=wiki", "--batch_size=16"]  # 16k tokens a step, on a BPE dataset
TECHNIQUES = {"n-gram compact": ["--ngram_mode=compact", "--ngram_n=3"], "ensemble k=2": ["--mod_k=2"],
              "planner soft": ["--plan_mode=soft", "--plan_lambda=1.0"]}
SMALL = []  # the main job's settings (train.py's defaults), which the small checks start from
# What --gpu_prepare builds: the main job's data and caches, and wiki's with the n-gram targets and sentence labels
# the technique checks read (the caches are keyed by n, r, k and the seeds, not by the model's shape).
PREPARE = [SMALL, ["--dataset=wiki", "--ngram_n=3"]]
MFU_AIM = 0.40
BUDGET_S = 480
BF16_PRECISION = 2**-8  # bfloat16's unit roundoff: 8 significant bits
# SDPA's fused kernels on CUDA (FlashAttention, memory-efficient/fmha, cuDNN) and its fused CPU operator; the
# readable attention and SDPA's math fallback run matmuls and a softmax, none of which is named so.
FUSED_ATTENTION = re.compile(r"flash|efficient|fmha|sdpa|cudnn", re.IGNORECASE)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


class CheckFailed(Exception):
    pass


class NotRun(Exception):
    pass


def expect(condition, why):
    if not condition:
        raise CheckFailed(why)


def main(only=""):
    """Run the checks whose name contains `only` on the GPU and print their table; 1 if one FAILED or the whole
    took more than BUDGET_S, else 0."""
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: `python -m tools.bench --gpu` checks the CUDA paths and needs one; "
              "nothing run")
        return 0
    print(describe_gpu())
    # One process compiles about ten models here (train.py compiles one): past dynamo's default of 8 compilations
    # of one function, the later ones would run uncompiled (the compile checks would then fail).
    torch._dynamo.config.cache_size_limit = 64
    checks = [check for check in CHECKS if only in check[0]]
    t0 = time.perf_counter()
    statuses = run_checks(checks, "cuda")
    seconds = time.perf_counter() - t0
    print(f"{statuses.count('ok')} ok, {statuses.count('FAILED')} FAILED, {statuses.count('not run')} not run, in "
          f"{seconds:.0f} s ({'FAILED: over' if seconds > BUDGET_S else 'within'} the {BUDGET_S} s budget)")
    return int("FAILED" in statuses or seconds > BUDGET_S)


def describe_gpu():
    props = torch.cuda.get_device_properties(0)
    peak = peak_flops(props.name)
    peak_text = (f"MFU against a bf16 peak of {peak / 1e12:.0f} TFLOP/s" if peak else
                 "no bf16 peak known for it in model.PEAK_BF16_FLOPS, so no MFU")
    bf16 = "supported" if torch.cuda.is_bf16_supported() else "not supported"
    return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, bfloat16 {bf16}; {peak_text}")


def run_checks(checks, device, budget=BUDGET_S):
    """Run each (name, check, limit in seconds) in turn on device, printing its line as it ends and appending it to
    OUT/table.txt; once budget seconds are spent the rest are not run. The statuses, in order."""
    os.makedirs(OUT, exist_ok=True)
    width = max((len(name) for name, _, _ in checks), default=0) + 2
    statuses, start = [], time.perf_counter()
    with open(os.path.join(OUT, "table.txt"), "w") as table:
        def write(line):  # as it goes, so a run cut short still leaves its lines
            print(line, flush=True)
            table.write(line + "\n")
            table.flush()

        write(f"{'check':<{width}}{'time':>8}  what it measured  result")
        for name, check, limit in checks:
            log = os.path.join(OUT, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".log")
            t0 = time.perf_counter()
            if t0 - start > budget:
                status, text = "not run", f"the {budget} s budget is spent"
            else:
                status, text = run_check(check, device, log)
            seconds = time.perf_counter() - t0
            if status == "ok" and seconds > limit:
                status, text = "FAILED", f"{text}; over its {limit} s limit"
            write(f"{name:<{width}}{seconds:6.1f} s  {text}  {status}")
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
    return Trainer(train.settings_from([*args, f"--device={device}"]))


def gpt2_args():
    return [*GPT2_RUN, *(f"--{k}={v}" for k, v in GPT2_SHAPE.items())]


@functools.cache
def gpt2_small(device):
    """The plain GPT-2-small Trainer, built once: the technique checks time it beside their own."""
    return make_trainer(device, *gpt2_args())


def step_seconds(trainers):
    """Median seconds per training step of each trainer, in alternating rounds; the first steps compile."""
    return bench.time_arms({name: bench.training_steps(t) for name, t in trainers.items()}, repeats=10,
                           warmup=3, rounds=3)


def compiled(run):
    """run()'s result, after checking from Dynamo's counters that Inductor compiled every graph Dynamo captured
    during it (a graph Dynamo gave up on, or handed to another backend, runs uncompiled) with no graph break."""
    counters.clear()
    result = run()
    # A graph break first: the most specific reason, and one that also leaves frames uncompiled
    breaks = [reason.splitlines()[0] for reason in counters["graph_break"]]
    expect(not breaks, f"torch.compile: {len(breaks)} graph break(s), the first: {breaks[:1]}")
    graphs, by_inductor = counters["stats"]["unique_graphs"], counters["aot_autograd"]["ok"]
    expect(graphs > 0 and by_inductor == graphs, f"torch.compile: Inductor compiled {by_inductor} of the {graphs} "
                                                 f"graph(s) Dynamo captured")
    expect(counters["frames"]["ok"] == counters["frames"]["total"],
           f"torch.compile: {counters['frames']['total'] - counters['frames']['ok']} frame(s) ran uncompiled")
    return result


def fused_attention_kernel(run, device):
    """The name of a fused attention kernel that torch.profiler saw run() launch on device (on a CPU: operator),
    whatever the model's flag says."""
    on_cuda = device.startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU, *([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])]
    with torch.profiler.profile(activities=activities) as profile:
        run()
        if on_cuda:
            torch.cuda.synchronize()
    kind = DeviceType.CUDA if on_cuda else DeviceType.CPU
    fused = sorted(e.key for e in profile.key_averages() if e.device_type == kind and FUSED_ATTENTION.search(e.key))
    return fused[0] if fused else None


# --- the checks: each takes the device and returns what it measured ------------------------------------------
def check_gpt2_small(device):
    torch.cuda.reset_peak_memory_stats()
    trainer = gpt2_small(device)
    on = {"bfloat16 autocast": trainer.dtype == "bfloat16", "torch.compile": trainer.compile,
          "fused AdamW": trainer.optimizer.defaults.get("fused")}
    expect(all(on.values()), "off: " + ", ".join(name for name, is_on in on.items() if not is_on))
    seconds = compiled(lambda: step_seconds({"plain": trainer}))["plain"]
    kernel = fused_attention_kernel(bench.training_steps(trainer), device)
    expect(kernel, "no fused attention kernel ran in a training step")
    tokens_per_s = trainer.s["batch_size"] * trainer.s["block_size"] / seconds
    name = torch.cuda.get_device_name(device)
    mfu = estimate_mfu(trainer.model.gpt, tokens_per_s, name)
    mfu_text = "MFU unknown (no peak for this GPU)" if mfu is None else \
        f"MFU {mfu:.1%} of {peak_flops(name) / 1e12:.0f} TFLOP/s ({'meets' if mfu >= MFU_AIM else 'below'} the " \
        f"{MFU_AIM:.0%} aim)"
    return (f"{seconds * 1000:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, {mfu_text}, peak memory "
            f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, on {name}; compiled, attention kernel {kernel}")


def check_technique(args, device):
    trainers = {"plain": gpt2_small(device), "technique": make_trainer(device, *gpt2_args(), *args)}
    seconds = compiled(lambda: step_seconds(trainers))
    return (f"x{seconds['technique'] / seconds['plain']:.3f} the plain step ({seconds['technique'] * 1000:.1f} "
            f"against {seconds['plain'] * 1000:.1f} ms), compiled")


def check_main_job(device):
    out_dir = os.path.join(OUT, "main_job")
    # Scored on the whole validation split, as the CPU runs in results/combined.json were.
    compiled(lambda: train.main([*SMALL, f"--device={device}", f"--out_dir={out_dir}", "--overwrite",
                                 "--score_val_tokens=1000000000"]))
    record = read_log(out_dir)[-1]
    with open(os.path.join(out_dir, "score.json")) as f:
        loss = json.load(f)["val_loss"]
    seed = train.DEFAULTS["seed"]
    cpu, sd = cpu_main_job_loss(seed)
    # bf16 and another order of summation part the GPU's run from the CPU's within a few hundred steps, so the
    # two differ as two seeds do: by sqrt(2) sd on average; four sd leaves a correct run a margin.
    tolerance = 4 * sd
    expect(math.isfinite(loss) and abs(loss - cpu) <= tolerance,
           f"validation loss {loss:.4f} here, {cpu:.4f} on the CPU (seed {seed}): more than {tolerance:.4f} (four "
           f"seed-to-seed sd) apart")
    return (f"validation loss {loss:.4f}, the CPU's {cpu:.4f} (seed {seed}; within four seed-to-seed sd, "
            f"{tolerance:.4f}); {record['elapsed_s']:.0f} s of training, evaluations excluded")


def cpu_main_job_loss(seed):
    """The validation loss of the main job's CPU run with this seed, and the sd of that loss across the stored
    seeds, from tools/experiments/combined.py's results."""
    result = combined.stored_scores().get(combined.MAIN_JOB, {"seeds": {}})
    if str(seed) in result["seeds"]:
        return result["seeds"][str(seed)], statistics.stdev(result["seeds"].values())
    raise CheckFailed(f"{combined.STORED} has no '{combined.MAIN_JOB}' run of seed {seed}: run "
                      f"`python -m tools.experiments.run --suite small --only combined` on a CPU first")


def check_float16(device, steps=100):
    """The main job's model (the n-gram targets and the planner) in float16, compiled as train.py compiles on CUDA: its
    plain cross-entropy falls over fresh batches."""
    trainer = make_trainer(device, *SMALL, "--dtype=float16")
    expect(trainer.scaler.is_enabled(), "float16 runs without the GradScaler")

    def train_steps():
        step = bench.training_steps(trainer)
        return [step()[1].item() for _ in range(steps)]

    # On a CPU (this check's test) train.py does not compile, and Inductor's CPU code would take minutes here.
    losses = compiled(train_steps) if device.startswith("cuda") else train_steps()
    expect(all(map(math.isfinite, losses)), f"a loss is not finite: {losses}")
    first, last = losses[0], statistics.mean(losses[-10:])  # one batch's loss is noisy; ten are not
    expect(last < 0.8 * first, f"the loss went from {first:.3f} to only {last:.3f} in {steps} steps")
    return (f"cross-entropy {first:.3f} -> {last:.3f} (the last 10 steps') in {steps} steps on fresh batches, all "
            f"finite; loss scale {trainer.scaler.get_scale():.0f}; the main job's techniques, "
            f"{'compiled' if trainer.compile else 'eager'}")


@torch.no_grad()
def check_attention(device):
    torch.manual_seed(0)
    fused = GPT(GPTConfig(**GPT2_SHAPE, vocab_size=50304, flash=True)).to(device).eval()
    readable = GPT(GPTConfig(**GPT2_SHAPE, vocab_size=50304, flash=False)).to(device).eval()
    readable.load_state_dict(fused.state_dict())
    idx = torch.randint(50304, (4, GPT2_SHAPE["block_size"]), device=device)
    dtype, autocast = pick_precision(device.split(":")[0])
    logits = {}

    def forward(name, model):
        with autocast:
            logits[name] = model(idx)[0].float()

    kernel = fused_attention_kernel(lambda: forward("fused", fused), device)
    expect(kernel, "flash=True ran no fused attention kernel")
    expect(not fused_attention_kernel(lambda: forward("readable", readable), device),
           "flash=False ran a fused attention kernel")
    difference, largest = (logits["fused"] - logits["readable"]).abs().max().item(), logits["fused"].abs().max().item()
    # bf16 keeps 8 significant bits (2**-8 relative), so two orders of summation differ by a few of its roundings,
    # well under 1/32 of the largest logit; a wrong kernel differs by the logits themselves.
    expect(difference <= largest / 32, f"the logits differ by {difference:.3g}, more than 1/32 of the largest "
                                       f"({largest:.3g})")
    return (f"logits agree in {dtype}: largest difference {difference:.2e}, largest logit {largest:.2f}; the fused "
            f"ran {kernel}")


def check_resume(device, steps=10):
    """Train 2 * steps straight, and steps then resume for steps more: the losses after the resume must agree.
    Dropout and the full learning rate from the start make a resume that misses the random state or the optimizer's
    moments show in the losses."""
    args = [*SMALL, f"--device={device}", "--compile=False", f"--eval_interval={steps}", "--log_interval=1",
            "--sample_tokens=0", "--dropout=0.1", "--warmup_iters=0", f"--lr_decay_iters={2 * steps}", "--overwrite"]
    train.main([*args, f"--out_dir={OUT}/resume_straight", f"--max_iters={2 * steps}"])
    train.main([*args, f"--out_dir={OUT}/resume_stopped", f"--max_iters={steps}"])
    train.main([*args, f"--out_dir={OUT}/resume_stopped", f"--max_iters={2 * steps}", "--init_from=resume"])
    straight, resumed = (read_log(f"{OUT}/resume_{name}")[-1] for name in ("straight", "stopped"))
    expect([i for i, _ in straight["train_losses"]] == [i for i, _ in resumed["train_losses"]],
           f"the resumed run logged other iterations: {resumed['train_losses']}")
    pairs = [(a, b) for (_, a), (_, b) in zip(straight["train_losses"], resumed["train_losses"])]
    pairs.append((straight["val_loss"], resumed["val_loss"]))
    worst = max(abs(a - b) / abs(a) for a, b in pairs)
    expect(worst <= BF16_PRECISION, f"the losses after the resume differ by up to {worst:.1e} of their size, more "
                                    f"than bf16's {BF16_PRECISION:.1e}")
    return (f"{steps} training losses after a resume at iteration {steps} and the final validation loss: largest "
            f"relative difference {worst:.1e} (eager)")


# Random weights give nearly flat distributions, whose draws a wrong cache can leave unchanged: at a tenth of the
# temperature about one text in three still came out the same at the tests' tiny shape, so eight are compared.
TEMPERATURE, ROWS = 0.1, 8
SAMPLERS = {"plain GPT": ["--plan_mode=none"], "ensemble": ["--mod_k=2", "--plan_mode=none"], "planner": []}


@torch.no_grad()
def check_sampling(device):
    """Each model samples the same text with the KV cache as without it: one seed, the block filled, in float32
    without TF32, so that rounding cannot part the two. Sampling at temperature 1 from random weights writes
    sentences, whose ends the planner re-plans at."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, args in SAMPLERS.items():
            trainer = make_trainer(device, *SMALL, "--ngram_mode=off", *args)
            torch.backends.cuda.matmul.allow_tf32 = False  # the trainer's set-up allows it
            encode, _ = get_codec(trainer.meta)
            prompt = torch.tensor([encode(document_start(trainer.meta))] * ROWS, dtype=torch.long,
                                  device=trainer.device)
            new_tokens = trainer.s["block_size"] - prompt.size(1)  # within block_size the cache is used throughout
            trainer.model.eval()
            texts = []
            for use_cache in (True, False):
                torch.manual_seed(0)
                texts.append(trainer.model.generate(prompt, new_tokens, TEMPERATURE, use_cache=use_cache,
                                                    plan_data=trainer.technique_data.get("plan"), vocab=trainer.vocab))
            parted = (texts[0] != texts[1]).any(0).nonzero()
            expect(len(parted) == 0, f"{name}: with the KV cache the texts part from those without at token "
                                     f"{parted[0].item() - prompt.size(1) if len(parted) else 0} of {new_tokens}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return (f"{', '.join(SAMPLERS)}: the same {ROWS} texts of {new_tokens} tokens with and without the KV cache "
            f"(seeded sampling, float32, eager)")


def check_ddp(device):
    raise NotRun(f"DDP across processes needs two GPUs or more ({torch.cuda.device_count()} here): "
                 f"torchrun --standalone --nproc_per_node=2 train.py")


def prepare():
    """Build (a CPU will do) every dataset and cache the checks read, and list the folders an offline GPU machine
    needs copied into its checkout; 0, the exit status."""
    folders = {make_trainer("cpu", *args).data_dir for args in PREPARE}
    tokenizer = os.path.join(ROOT, "data", "_tokenizer")  # GPT-2's BPE files
    folders |= {tokenizer} if os.path.isdir(tokenizer) else set()
    print("copy these folders, at the same paths, into the GPU machine's checkout:")
    for folder in sorted(map(str, folders)):
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
        print(f"  {os.path.relpath(folder)}  ({size / 2**20:.0f} MB)")
    return 0


# (name, check, its time limit in seconds on an H100 or H200: guesses until the first run measures them)
CHECKS = [("readable vs fused attention", check_attention, 30),
          ("float16 with the GradScaler", check_float16, 90),
          ("resume", check_resume, 60),
          ("sampling with and without the KV cache", check_sampling, 45),
          ("GPT-2 small, bf16, compiled", check_gpt2_small, 120),
          *((f"GPT-2 small + {name}", functools.partial(check_technique, args), 90)
            for name, args in TECHNIQUES.items()),
          ("main job (python train.py)", check_main_job, 150),
          ("DDP over NCCL", check_ddp, 5)]
