"""
Speed and memory, measured in one run so that every ratio compares like with like on the same machine and load.

    python -m tools.bench                # the plain model: ms/iter and tokens/s against a bare PyTorch loop of the
                                         # same model, and generation with and without the KV cache
    python -m tools.bench --techniques   # also each technique's step time as a ratio to the plain model's, the
                                         # planner's generation speed as a ratio to the plain model's, the n-gram
                                         # build's speed, the n-gram loss against the plain cross-entropy, the
                                         # planner's labels and the sentence encoders
    python -m tools.bench --ngram_scale  # only the n-gram build at scale: 10M, 50M and 200M synthetic GPT-2 tokens
    python -m tools.bench --gpu          # only the check of every CUDA path on one GPU, in 8 minutes (bench_gpu.py)
    python -m tools.bench --gpu_prepare  # build the data and caches the GPU check reads; list the folders to copy
    python -m tools.bench --nanogpt=PATH # only the whole plain training process against nanoGPT's, from its checkout
                                         # at PATH: wall time and peak memory as ratios (bench_nanogpt.py)

Training steps run through train.py's own Trainer, so what is timed is exactly what training does (batch
sampling, the techniques' extras, forward, backward, AdamW). Every timing goes through time_arms: the arms run in
alternating rounds after a warm-up and the median round is kept, so a passing load on the machine hits every arm
alike.
"""

import copy
import functools
import itertools
import os
import re
import statistics
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import torch
from torch.nn import functional as F

import ngram
import train
from configurator import configure
from data.dataset import load_meta, load_texts, load_tokens
from data.encoders import ENCODERS, load_encoder
from data.prepare import ensure_prepared
from data.sentences import EMBEDDERS, LSA, PlanData, build_labels, sentence_texts
from data.vocabulary import document_start, get_codec
from lm import LanguageModel
from model import GPT, GPTConfig, configure_optimizers
from tools import bench_nanogpt, bench_scale
from training.trainer import Trainer

# -----------------------------------------------------------------------------
# the plain model measured by default: nanoGPT's CPU configuration on shakespeare_char
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
steps = 20  # timed training steps per round
rounds = 5  # alternating rounds; the median round is reported
warmup = 5  # untimed steps first (allocator, caches, compilation)
generate_tokens = 63  # tokens generated per timing, within block_size so the cache is used throughout
device = "auto"
dtype = "auto"
compile = None  # None: on for CUDA only, as in train.py
techniques = False  # also time every technique as a ratio to the plain model, and the builds and losses below
ngram_scale = False  # only the n-gram build at scale (bench_ngram_scale)
ngram_scale_millions = (10, 50, 200)  # corpus sizes, millions of tokens
ngram_memory_mb = 2000  # the build's memory bound (train.py's setting of the same name)
ngram_workers = 2
gpu = False  # only the check of every CUDA path (tools/bench_gpu.py)
gpu_only = ""  # with --gpu: only the checks whose name contains this text, e.g. --gpu_only=resume
gpu_prepare = False  # only build what --gpu reads, so that a GPU machine without internet can run it
nanogpt = ""  # the path of a nanoGPT checkout: only time this repository's plain training process against its
nanogpt_rounds = 3  # alternating rounds of the two processes, about a minute each on 2 CPU cores
# -----------------------------------------------------------------------------


def time_arms(arms, repeats, warmup, rounds):
    """Median seconds per call of each arm (name -> function of no arguments). Every arm is called warmup times
    untimed, then repeats times in each of rounds rounds, the arms taking turns within each round."""
    for arm in arms.values():
        for _ in range(warmup):
            arm()
    seconds = {name: [] for name in arms}
    for _ in range(rounds):
        for name, arm in arms.items():
            synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                arm()
            synchronize()
            seconds[name].append((time.perf_counter() - t0) / repeats)
    return {name: statistics.median(times) for name, times in seconds.items()}


def synchronize():
    """Wait for the GPU's queued work, so that it is timed by the round that queued it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def make_trainer(*overrides):
    """A Trainer of the plain GPT at the benchmark's shape (config/plain.py), with --key=value overrides."""
    shape = dict(dataset=dataset, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                 batch_size=batch_size, device=device, dtype=dtype, compile=compile, dropout=0.0)
    return Trainer(train.settings_from([train.PLAIN_CONFIG, *flags(shape), *overrides]))


def training_steps(trainer):
    """A callable that takes the trainer's next training step as train.py's loop does: each call the next
    iteration's learning rate and batch. Without it every step would train the same batch at the same rate, and the
    planner's number of sentences per batch, which real training recompiles for, would never change."""
    iterations = itertools.count()

    def step():
        iteration = next(iterations)
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.lr_at(iteration)
        return trainer.train_step(iteration)
    return step


def flags(settings):
    return [f"--{key}={value!r}" for key, value in settings.items()]


def bench_plain():
    trainer = make_trainer()
    seconds = time_arms({"train.py": training_steps(trainer), "bare": bare_step(trainer)}, steps, warmup, rounds)
    tokens = batch_size * block_size
    print(f"training: {seconds['train.py'] * 1000:.1f} ms/iter, {tokens / seconds['train.py']:,.0f} tokens/s "
          f"({n_layer} layers, {n_embd} wide, batch {batch_size} x {block_size} on {dataset}, "
          f"{trainer.device}, {trainer.dtype}{', compiled' if trainer.compile else ''})")
    print("  target on 2 CPU cores for nanoGPT's CPU configuration (the default): at most 31 ms/iter")
    print(f"  the same model in a bare PyTorch loop (forward, backward, clipping, AdamW on one fixed batch): "
          f"{seconds['bare'] * 1000:.1f} ms/iter; train.py's step is x{seconds['train.py'] / seconds['bare']:.3f} "
          f"of it")
    bench_generation(trainer)


def bare_step(trainer):
    """A training step of the reference: a copy of the trainer's GPT on one fixed batch, nothing of train.py."""
    s = trainer.s
    gpt = copy.deepcopy(trainer.model.gpt)
    model = torch.compile(gpt) if trainer.compile else gpt
    optimizer = configure_optimizers(gpt, s["weight_decay"], s["learning_rate"], (s["beta1"], s["beta2"]),
                                     trainer.device_type)
    x, y, _ = trainer.get_batch("train", torch.Generator().manual_seed(0), s["batch_size"])

    def step():
        with trainer.autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@torch.no_grad()
def bench_generation(trainer):
    gpt = trainer.model.gpt.eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=trainer.device)

    def generate(use_cache):
        with trainer.autocast:
            gpt.generate(prompt, generate_tokens, temperature=0, use_cache=use_cache)

    seconds = time_arms({"cache": lambda: generate(True), "no cache": lambda: generate(False)}, 1, 1, rounds)
    cached, uncached = generate_tokens / seconds["cache"], generate_tokens / seconds["no cache"]
    print(f"generation: {cached:,.0f} tokens/s with the KV cache, {uncached:,.0f} without (x{cached / uncached:.2f})")


# --- the techniques: step time, generation, builds and losses (--techniques) -----------------------------------
NGRAM_N = {"shakespeare_char": 5, "wiki": 3}  # the n of config/ngram/


def technique_arms(n):
    """The arms timed against the plain model; n is the n-gram order that suits the dataset's tokens. The ensemble
    is the experiments' (the last 2 layers); the main job's step is 'all but the ensemble'."""
    ngram_compact, planner = ["--ngram_mode=compact", f"--ngram_n={n}"], ["--plan_mode=soft", "--plan_lambda=1.0"]
    return {"ngram compact": ngram_compact, "ngram all": ["--ngram_mode=all", f"--ngram_n={n}"],
            "mod_k=2": ["--mod_k=2"], "mod_k=2, distill every position": ["--mod_k=2", "--mod_distill_frac=1.0"],
            "planner soft": planner, "all but the ensemble": [*ngram_compact, *planner],
            "all three": [*ngram_compact, "--mod_k=2", *planner]}


def bench_techniques():
    """Each technique's training step time, and all three's, as a ratio to the plain model's on each dataset."""
    print("\nstep time as a ratio to the plain model (median of alternating rounds)")
    print("| dataset | arm | ms/iter | ratio |\n|---|---|---|---|")
    planner = {}
    for name, n in NGRAM_N.items():
        arms = {"plain": [], **technique_arms(n)}
        trainers = {arm: make_trainer(f"--dataset={name!r}", *overrides) for arm, overrides in arms.items()}
        times = time_arms({arm: training_steps(trainer) for arm, trainer in trainers.items()}, steps, warmup, rounds)
        for arm, seconds in times.items():
            print(f"| {name} | {arm} | {seconds * 1000:.1f} | {seconds / times['plain']:.3f} |")
        planner[name] = times["planner soft"] / times["plain"]
    print("planner soft step / plain step: " + ", ".join(f"{r:.3f} on {name}" for name, r in planner.items())
          + " (target: at most 1.05; the ensemble and all three: at most 1.10)")


@torch.no_grad()
def bench_planner_generation(new_tokens=300):
    """sample.py's speed with the planner, which re-plans at every sentence end, as a ratio to the plain model's."""
    print(f"\ngeneration of {new_tokens} tokens as sample.py runs it (target for the planner: at least 0.5x plain)")
    trainers = {"plain": make_trainer(), "planner soft": make_trainer("--plan_mode=soft", "--plan_lambda=1.0")}
    meta = trainers["plain"].meta
    prompt = torch.tensor([get_codec(meta)[0](document_start(meta))], device=trainers["plain"].device)

    def generate(trainer):
        trainer.model.eval()
        torch.manual_seed(0)
        trainer.model.generate(prompt, new_tokens, temperature=0.8, top_k=200,
                               plan_data=trainer.technique_data.get("plan"), vocab=trainer.vocab)

    seconds = time_arms({arm: functools.partial(generate, t) for arm, t in trainers.items()}, 1, 1, rounds)
    print("| arm | tokens/s | ratio |\n|---|---|---|")
    for arm, s in seconds.items():
        print(f"| {arm} | {new_tokens / s:,.0f} | {seconds['plain'] / s:.2f} |")


def bench_ngram_build():
    """Build speed of the n-gram counts and compact targets (data/ngrams.py) on each train split, read from its
    memmap and written to a temporary folder, and the build's peak memory (one worker: these splits are one
    partition). Median of alternating rounds."""
    print("\nn-gram compact targets, r=8: build from the train split (target: at least 2M tokens/s on 2 CPU cores)")
    print("| dataset | n | tokens | seconds | tokens/s | peak bytes/token |\n|---|---|---|---|---|---|")
    for name, n in NGRAM_N.items():
        data_dir = ensure_prepared(name)
        tokens, eot = load_tokens(data_dir, "train"), load_meta(data_dir)["eot_token"]

        def build():
            with tempfile.TemporaryDirectory() as folder:
                bench_scale.build_targets(folder, tokens, n, eot, ngram_memory_mb, 1)

        seconds = time_arms({"build": build}, 1, 1, rounds)["build"]
        tracemalloc.start()  # numpy reports its allocations to tracemalloc
        build()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"| {name} | {n} | {len(tokens):,} | {seconds:.3f} | {len(tokens) / seconds:,.0f} | "
              f"{peak / len(tokens):.0f} |")


def bench_ngram_loss():
    """Forward + backward of the n-gram soft-target loss on a batch of logits, against the plain cross-entropy:
    the hand-written SparseCrossEntropy and the same sum written in plain autograd, on the character head and on
    GPT-2's padded 50k head. Time and peak memory as ratios to the plain CE, median of alternating rounds."""
    rows, k = batch_size * block_size, 8 + 2  # r = 8 top tokens, the tail token and the observed one
    print(f"\nn-gram loss, forward + backward on {rows} positions with r = 8, as a ratio to F.cross_entropy "
          f"(median of alternating rounds; peak: bytes allocated during the call)")
    print("| vocabulary | arm | ms | time ratio | peak MB | peak ratio |\n|---|---|---|---|---|---|")
    for vocab in (65, 50304):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(rows, vocab, generator=generator, requires_grad=True)
        ids = torch.randint(vocab, (rows, k), generator=generator)
        weights = torch.softmax(torch.randn(rows, k, generator=generator), dim=1)
        losses = {"plain CE": lambda: F.cross_entropy(logits, ids[:, 0]),
                  "autograd": lambda: -(weights * F.log_softmax(logits, dim=-1).gather(1, ids)).sum(1).mean(),
                  "SparseCrossEntropy": lambda: ngram.SparseCrossEntropy.apply(logits, ids, weights)[0]}

        def forward_backward(loss_fn):
            loss_fn().backward()
            logits.grad = None

        arms = {name: functools.partial(forward_backward, loss_fn) for name, loss_fn in losses.items()}
        repeats = steps if vocab < 1024 else 2  # a 50k head takes a good part of a second on a CPU
        seconds = time_arms(arms, repeats, 1, rounds)
        peaks = {name: peak_bytes(arm) for name, arm in arms.items()}
        for name in arms:
            print(f"| {vocab} | {name} | {seconds[name] * 1000:.2f} | {seconds[name] / seconds['plain CE']:.3f} | "
                  f"{peaks[name] / 2**20:.1f} | {peaks[name] / peaks['plain CE']:.3f} |")


def peak_bytes(fn):
    """The most bytes fn holds allocated at once on the CPU, from the profiler's allocation events in time order."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def bench_plan_labels():
    """The planner's label building (LSA embedding + k-means), per 10k sentences of wiki."""
    data_dir = ensure_prepared("wiki")
    texts = sentence_texts(data_dir, load_meta(data_dir), PlanData(data_dir, 64, "lsa", 0).sentences)
    seconds = time_arms({"labels": lambda: build_labels(texts, 64, 0, "lsa")}, 1, 0, rounds)["labels"]
    n = sum(len(t) for t in texts.values())
    print(f"planner labels: {seconds / n * 1e4:.2f} s per 10k sentences (LSA + k-means, K = 64, {n:,} wiki "
          f"sentences, median of {rounds} builds)")


def bench_sentence_encoders(n=200):
    """Seconds per 10k wiki sentences of each sentence embedder: LSA (fit and embed, as the planner runs it) and the
    pretrained encoders of data/encoders.py (embed only: loading happens once), timed in alternating rounds."""
    data_dir = ensure_prepared("wiki")
    sentences = [s for doc in load_texts(data_dir, "train") for s in re.split(r"(?<=[.!?])\s+", doc) if s]
    sample = sentences[::len(sentences) // n][:n]  # spread over the corpus, not one article's sentences
    arms = {"lsa": lambda: LSA.fit(sample, EMBEDDERS["lsa"], 0).embed(sample)}
    for name in ENCODERS:
        try:
            arms[name] = functools.partial(load_encoder(name).embed, sample)
        except ValueError as e:  # transformers is an optional dependency
            print(f"{name}: not timed: {e}")
    seconds = time_arms(arms, 1, 1, rounds)
    per_10k = ", ".join(f"{name} {s / n * 1e4:.2f} s" for name, s in seconds.items())
    print(f"sentence embeddings per 10k wiki sentences (median of {rounds} rounds on {n} sentences, CPU, "
          f"torch threads: {torch.get_num_threads()}): {per_10k}")


# --- the n-gram build at scale (--ngram_scale) ----------------------------------------------------------------
def bench_ngram_scale():
    """The out-of-core n-gram build (data/ngrams.py, n = 3, r = 8) on synthetic corpora with GPT-2's vocabulary,
    written as train.bin memmaps, and a training step of a tiny GPT (batch 4 x 64, GPT-2's padded head) that gathers
    its targets from the memory-mapped files. Each runs in a fresh process (the build's with numpy only,
    tools/bench_scale.py), sampled from /proc: the build's peak memory is its processes' summed PSS (workers included,
    shared pages counted once); the step's is its own (anonymous) memory, without the pages of the files it maps:
    the memory-mapped targets are page cache, which the kernel shares and drops as it needs (on this machine's
    kernel a touched page maps its whole folio, so a run soon shows most of a freshly written file as resident)."""
    print(f"\nn-gram build at scale: n = 3, r = 8, ngram_memory_mb = {ngram_memory_mb}, {ngram_workers} workers, "
          f"{os.cpu_count()} CPU cores")
    print("| tokens | contexts | partitions | build s | tokens/s | build peak MB | step ms | gather ms | "
          "step peak MB (own) |\n|---|---|---|---|---|---|---|---|---|")
    for millions in ngram_scale_millions:
        folder = str(bench_scale.synthetic_corpus(millions * 10**6))
        build, build_memory = bench_scale.run_measured("tools.bench_scale.build_at_scale", folder, ngram_memory_mb,
                                                       ngram_workers)
        step, step_memory = bench_scale.run_measured("tools.bench.ngram_scale_step", folder, ngram_memory_mb,
                                                     ngram_workers)
        print(f"| {millions}M | {build['contexts']:,} | {build['partitions']} | {build['seconds']:.1f} | "
              f"{millions * 1e6 / build['seconds']:,.0f} | {build_memory['pss'] / 2**20:,.0f} | "
              f"{step['step_ms']:.1f} | {step['gather_ms']:.2f} | {step_memory['anonymous'] / 2**20:,.0f} |",
              flush=True)


def ngram_scale_step(folder, memory_mb, workers):
    """Median milliseconds of a training step of a tiny GPT whose n-gram targets are gathered from folder's
    memory-mapped files, and of the gather alone (random rows each call). Run in a fresh process by
    bench_ngram_scale."""
    tokens = np.memmap(f"{folder}/train.bin", np.uint16, mode="r")
    targets = ngram.load_targets("compact", folder, tokens, 3, bench_scale.NGRAM_R, bench_scale.NGRAM_SEED,
                                 bench_scale.GPT2_EOT, memory_mb, workers)
    torch.manual_seed(0)
    B, T = 4, 64
    model = LanguageModel(GPT(GPTConfig(block_size=T, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)),
                          ngram_alpha=0.5)
    optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), "cpu")
    generator = torch.Generator().manual_seed(0)

    def random_rows():
        ix = torch.randint(len(tokens) - T, (B,), generator=generator).numpy()
        return ix[:, None] + np.arange(T)

    def step():
        rows = random_rows()
        x, y = (torch.from_numpy(tokens[rows + shift].astype(np.int64)) for shift in (0, 1))
        ids, probs = targets(rows)
        loss, _ = model(x, y, {"ngram_ids": torch.from_numpy(ids), "ngram_probs": torch.from_numpy(probs)})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_arms({"step": step, "gather": lambda: targets(random_rows())}, 5, 5, 5)
    return {"step_ms": 1000 * seconds["step"], "gather_ms": 1000 * seconds["gather"]}


def main(argv):
    configure(globals(), argv)
    torch.manual_seed(0)
    if gpu or gpu_prepare:
        from tools import bench_gpu  # here, not at the top: bench_gpu imports this file for time_arms
        return bench_gpu.main(gpu_only) if gpu else bench_gpu.prepare()
    if nanogpt:
        return bench_nanogpt.main(nanogpt, nanogpt_rounds)
    if ngram_scale:
        bench_ngram_scale()
        return 0
    bench_plain()
    if techniques:
        bench_techniques()
        bench_planner_generation()
        bench_ngram_build()
        bench_ngram_loss()
        bench_plan_labels()
        bench_sentence_encoders()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, OSError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
