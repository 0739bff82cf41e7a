"""
Speed, measured in one run so that every ratio compares like with like on the same machine and load.

    python bench.py          # the plain model: ms/iter and tokens/s, against a bare PyTorch loop of the same
                             # model, and generation with and without the KV cache
    python bench.py --all    # also every technique's step time as a ratio to the plain model, the planner's
                             # generation speed as a ratio to the plain model's, build times, sentence encoders,
                             # and the n-gram loss against the plain cross-entropy on a 65- and a 50304-token head
    python bench.py --ngram_scale  # only the n-gram build at scale: synthetic GPT-2-vocabulary corpora of 10M, 50M
                             # and 200M tokens, the build's time and peak memory, and a training step that reads
                             # the memory-mapped targets

Training steps run through train.py's own Trainer, so what is timed is exactly what training does (batch
sampling, the techniques' extras, forward, backward, AdamW). Arms are timed in alternation over several rounds
and the median is kept, so a passing load on the machine hits every arm alike.
"""

import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import ngram
import train
from configurator import configure
from data import ngrams
from data.dataset import load_meta, load_texts, load_tokens
from data.prepare import ensure_prepared
from data.vocabulary import document_start, get_codec
from data.encoders import ENCODERS, load_encoder
from data.sentences import EMBEDDERS, LSA, PlanData, build_labels, sentence_texts
from model import configure_optimizers

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
all = False  # also time every technique as a ratio to the plain model
ngram_scale = False  # only the n-gram build at scale (bench_ngram_scale)
ngram_scale_millions = (10, 50, 200)  # corpus sizes, millions of tokens
ngram_memory_mb = 2000  # the build's memory bound (train.py's setting of the same name)
ngram_workers = 2
# -----------------------------------------------------------------------------


def make_trainer(**overrides):
    """A Trainer of the plain GPT at the benchmark's shape (config/plain.py), with overrides switching techniques on."""
    settings = train.settings_from([train.PLAIN_CONFIG])
    settings.update(dataset=dataset, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                    batch_size=batch_size, device=device, dtype=dtype, compile=compile, dropout=0.0)
    settings.update(overrides)
    train.validate_settings(settings)
    return train.Trainer(settings)


def sync(trainer):
    if trainer.device_type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer, n):
    """Seconds per training step over n steps."""
    sync(trainer)
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.train_step()
    sync(trainer)
    return (time.perf_counter() - t0) / n


def time_arms(arms):
    """Median seconds per step of each arm (name -> trainer), timed in alternating rounds."""
    for trainer in arms.values():
        time_steps(trainer, warmup)
    samples = {name: [] for name in arms}
    for _ in range(rounds):
        for name, trainer in arms.items():
            samples[name].append(time_steps(trainer, steps))
    return {name: statistics.median(times) for name, times in samples.items()}


def bench_plain():
    trainer = make_trainer()
    seconds = time_arms({"plain": trainer})["plain"]
    tokens = trainer.s["batch_size"] * trainer.s["block_size"]
    print(f"training: {seconds * 1000:.1f} ms/iter, {tokens / seconds:,.0f} tokens/s "
          f"({n_layer} layers, {n_embd} wide, batch {batch_size} x {block_size} on {dataset}, "
          f"{trainer.device}, {trainer.dtype}{', compiled' if trainer.compile else ''})")
    print("  target on 2 CPU cores for nanoGPT's CPU configuration (the default): at most 31 ms/iter")
    bare = time_bare_loop(trainer)
    print(f"  the same model in a bare PyTorch loop (forward, backward, clipping, AdamW on one fixed batch): "
          f"{bare * 1000:.1f} ms/iter; train.py's step is x{seconds / bare:.3f} of it")
    bench_generation(trainer.model.gpt, trainer.device)


def time_bare_loop(trainer):
    """Median seconds per step of the reference: the trainer's GPT trained with nothing of train.py around it."""
    gpt, s = trainer.model.gpt, trainer.s
    optimizer = configure_optimizers(gpt, s["weight_decay"], s["learning_rate"], (s["beta1"], s["beta2"]),
                                     trainer.device_type)
    x, y, _ = trainer.get_batch("train", torch.Generator().manual_seed(0), s["batch_size"])

    def seconds_per_step(n):
        sync(trainer)
        t0 = time.perf_counter()
        for _ in range(n):
            with trainer.autocast:
                _, loss = gpt(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), s["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(trainer)
        return (time.perf_counter() - t0) / n

    seconds_per_step(warmup)
    return statistics.median(seconds_per_step(steps) for _ in range(rounds))


@torch.no_grad()
def bench_generation(gpt, device_name):
    gpt.eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device_name)
    speed = {}
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            gpt.generate(prompt, generate_tokens, temperature=0, use_cache=use_cache)
            best = min(best, time.perf_counter() - t0)
        speed[use_cache] = generate_tokens / best
    print(f"generation: {speed[True]:,.0f} tokens/s with the KV cache, {speed[False]:,.0f} without "
          f"(x{speed[True] / speed[False]:.2f})")


def bench_techniques():
    """Each technique's training step time, and all three's, as a ratio to the plain model's on each dataset."""
    print("\nstep time as a ratio to the plain model (median of alternating rounds)")
    print("| dataset | arm | ms/iter | ratio |\n|---|---|---|---|")
    for name, n in NGRAM_N.items():
        times = time_arms({"plain": make_trainer(dataset=name), **technique_arms(name, n)})
        for arm, seconds in times.items():
            print(f"| {name} | {arm} | {seconds * 1000:.1f} | {seconds / times['plain']:.3f} |")


def technique_arms(name, n):
    """The arms timed against the plain model on one dataset; n is the n-gram order that suits its tokens."""
    arms = {"ngram compact": dict(ngram_mode="compact", ngram_n=n), "ngram all": dict(ngram_mode="all", ngram_n=n),
            "mod_k=3": dict(mod_k=3), "mod_k=3, distill every position": dict(mod_k=3, mod_distill_frac=1.0),
            "planner soft": dict(plan_mode="soft", plan_lambda=1.0),
            "all three": dict(ngram_mode="compact", ngram_n=n, mod_k=3, plan_mode="soft", plan_lambda=1.0)}
    return {arm: make_trainer(dataset=name, **settings) for arm, settings in arms.items()}


NGRAM_N = {"shakespeare_char": 5, "wiki": 3}  # the n of config/ngram/


def bench_ngram_build():
    """Build speed of the n-gram counts and compact targets (data/ngrams.py) on each train split, read from its
    memmap and written to a temporary folder, and the build's peak memory (one worker: these splits are one
    partition)."""
    print("\nn-gram compact targets, r=8: build from the train split (target: at least 2M tokens/s on 2 CPU cores)")
    print("| dataset | n | tokens | seconds | tokens/s | peak bytes/token |\n|---|---|---|---|---|---|")
    for name, n in NGRAM_N.items():
        data_dir = ensure_prepared(name)
        tokens, eot = load_tokens(data_dir, "train"), load_meta(data_dir)["eot_token"]

        def build():
            with tempfile.TemporaryDirectory() as folder:
                ngrams.load_or_build(folder, tokens, n, 8, 0, eot, ngram_memory_mb, 1)

        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            build()
            seconds.append(time.perf_counter() - t0)
        tracemalloc.start()  # numpy reports its allocations to tracemalloc
        build()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        best = min(seconds)
        print(f"| {name} | {n} | {len(tokens):,} | {best:.3f} | {len(tokens) / best:,.0f} | "
              f"{peak / len(tokens):.0f} |")


SCALE_DIR = Path(__file__).resolve().parent / "data" / "_bench"  # git-ignored
GPT2_VOCAB, GPT2_EOT = 50257, 50256


def bench_ngram_scale():
    """The out-of-core n-gram build (data/ngrams.py, n = 3, r = 8) on synthetic corpora with GPT-2's vocabulary,
    written as train.bin memmaps, and a training step of a tiny GPT (batch 4 x 64, GPT-2's padded head) that gathers
    its targets from the memory-mapped files. Each runs in a fresh process (the build's with numpy only), sampled
    from /proc: the build's peak memory is its processes' summed PSS (workers included, shared pages counted once);
    the step's is its own (anonymous) memory, without the pages of the files it maps: the memory-mapped targets are
    page cache, which the kernel shares and drops as it needs (on this machine's kernel a touched page maps its whole
    folio, so a run soon shows most of a freshly written file as resident)."""
    print(f"\nn-gram build at scale: n = 3, r = 8, ngram_memory_mb = {ngram_memory_mb}, {ngram_workers} workers, "
          f"{os.cpu_count()} CPU cores")
    print("| tokens | contexts | partitions | build s | tokens/s | build peak MB | step ms | gather ms | "
          "step peak MB (own) |\n|---|---|---|---|---|---|---|---|---|")
    for millions in ngram_scale_millions:
        folder = synthetic_corpus(millions * 10**6)
        for built in folder.glob("ngram_n3*"):
            shutil.rmtree(built)
        build, build_memory = run_measured(SCALE_BUILD, folder)
        step, step_memory = run_measured(SCALE_STEP, folder)
        print(f"| {millions}M | {build['contexts']:,} | {build['partitions']} | {build['seconds']:.1f} | "
              f"{millions * 1e6 / build['seconds']:,.0f} | {build_memory['pss'] / 2**20:,.0f} | "
              f"{step['step_ms']:.1f} | {step['gather_ms']:.2f} | {step_memory['anonymous'] / 2**20:,.0f} |",
              flush=True)


def synthetic_corpus(n_tokens, chunk=1 << 22):
    """SCALE_DIR/zipf_<n>/train.bin: Zipf(1.1) ids over GPT-2's vocabulary, documents of about 1000 tokens ended by
    EOT, written chunk by chunk (never whole in memory), once."""
    folder = SCALE_DIR / f"zipf_{n_tokens}"
    path = folder / "train.bin"
    if path.is_file() and path.stat().st_size == 2 * n_tokens:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_tokens)
    with open(path, "wb") as f:
        for start in range(0, n_tokens, chunk):
            size = min(chunk, n_tokens - start)
            tokens = (rng.zipf(1.1, size) - 1) % GPT2_EOT
            tokens[rng.random(size) < 1e-3] = GPT2_EOT
            f.write(tokens.astype(np.uint16).tobytes())
    return folder


SCALE_BUILD = """
import json, sys, time
import numpy as np
from data import ngrams
folder, memory_mb, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tokens = np.memmap(f"{folder}/train.bin", np.uint16, mode="r")
t0 = time.perf_counter()
arrays = ngrams.load_or_build(folder, tokens, 3, 8, 0, 50256, memory_mb, workers)
print(json.dumps(dict(seconds=time.perf_counter() - t0, contexts=len(arrays["context_keys"]),
                      partitions=ngrams.plan(len(tokens) - 1, memory_mb, workers, 8)[0])))
"""

SCALE_STEP = """
import json, statistics, sys, time
import numpy as np, torch
import ngram
from lm import LanguageModel
from model import GPT, GPTConfig, configure_optimizers
folder, memory_mb, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tokens = np.memmap(f"{folder}/train.bin", np.uint16, mode="r")
targets = ngram.load_targets("compact", folder, tokens, 3, 8, 0, 50256, memory_mb, workers)
torch.manual_seed(0)
B, T = 4, 64
model = LanguageModel(GPT(GPTConfig(block_size=T, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)),
                      dict(ngram_mode="compact", ngram_alpha=0.5))
optimizer = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), "cpu")
generator = torch.Generator().manual_seed(0)
steps, gathers = [], []
for step in range(30):
    t0 = time.perf_counter()
    ix = torch.randint(len(tokens) - T, (B,), generator=generator).numpy()
    rows = ix[:, None] + np.arange(T)
    x, y = (torch.from_numpy(tokens[rows + shift].astype(np.int64)) for shift in (0, 1))
    t1 = time.perf_counter()
    ids, probs = targets(rows)
    gathers.append(time.perf_counter() - t1)
    loss, _ = model(x, y, {"ngram_ids": torch.from_numpy(ids), "ngram_probs": torch.from_numpy(probs)})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    steps.append(time.perf_counter() - t0)
print(json.dumps(dict(step_ms=1000 * statistics.median(steps[5:]), gather_ms=1000 * statistics.median(gathers[5:]))))
"""


def run_measured(code, folder):
    """Run code in a fresh Python with folder and the build's settings as arguments; its printed JSON result, and
    the peaks of its processes' summed PSS and anonymous memory (bytes), sampled every 50 ms."""
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ngram_memory_mb), str(ngram_workers)],
                               cwd=Path(__file__).resolve().parent, stdout=subprocess.PIPE,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    peaks = {"pss": 0, "anonymous": 0}

    def sample():
        while process.poll() is None:
            used = {"pss": 0, "anonymous": 0}
            for pid in process_tree(process.pid):
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        fields = dict(line.split()[:2] for line in f if line[0].isupper())
                except (OSError, ValueError):
                    continue
                used["pss"] += int(fields.get("Pss:", 0)) * 1024
                used["anonymous"] += int(fields.get("Anonymous:", 0)) * 1024
            peaks.update({k: max(peaks[k], used[k]) for k in peaks})
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"the measured process failed with exit code {process.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), peaks


def process_tree(pid):
    """pid and its descendants (Linux /proc)."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            with open(f"/proc/{tree[i]}/task/{tree[i]}/children") as f:
                tree += [int(child) for child in f.read().split()]
        except OSError:
            pass
        i += 1
    return tree


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
        arms = {"plain CE": lambda: F.cross_entropy(logits, ids[:, 0]),
                "autograd": lambda: -(weights * F.log_softmax(logits, dim=-1).gather(1, ids)).sum(1).mean(),
                "SparseCrossEntropy": lambda: ngram.SparseCrossEntropy.apply(logits, ids, weights)[0]}

        def forward_backward(loss_fn):
            loss_fn().backward()
            logits.grad = None

        seconds = {name: [] for name in arms}
        for loss_fn in arms.values():
            forward_backward(loss_fn)
        repeats = steps if vocab < 1024 else 2  # a 50k head takes a good part of a second on a CPU
        for _ in range(rounds):
            for name, loss_fn in arms.items():
                t0 = time.perf_counter()
                for _ in range(repeats):
                    forward_backward(loss_fn)
                seconds[name].append((time.perf_counter() - t0) / repeats)
        seconds = {name: statistics.median(times) for name, times in seconds.items()}
        peaks = {name: peak_bytes(lambda: forward_backward(loss_fn)) for name, loss_fn in arms.items()}
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
    t0 = time.perf_counter()
    build_labels(texts, 64, seed=0)
    n = sum(len(t) for t in texts.values())
    print(f"planner labels: {(time.perf_counter() - t0) / n * 1e4:.2f} s per 10k sentences (LSA + k-means, K = 64, "
          f"{n:,} wiki sentences)")


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
    seconds = {name: [] for name in arms}
    for _ in range(rounds):
        for name, embed in arms.items():
            t0 = time.perf_counter()
            embed()
            seconds[name].append(time.perf_counter() - t0)
    per_10k = ", ".join(f"{name} {statistics.median(s) / n * 1e4:.2f} s" for name, s in seconds.items())
    print(f"sentence embeddings per 10k wiki sentences (median of {rounds} rounds on {n} sentences, CPU, "
          f"torch threads: {torch.get_num_threads()}): {per_10k}")


@torch.no_grad()
def bench_planner_generation(new_tokens=300):
    """sample.py's speed with the planner, which re-plans at every sentence end, as a ratio to the plain model's."""
    print(f"\ngeneration of {new_tokens} tokens as sample.py runs it (target for the planner: at least 0.5x plain)")
    models = {"plain": make_trainer().model, "planner soft": make_trainer(plan_mode="soft", plan_lambda=1.0).model}
    meta = load_meta(ensure_prepared(dataset))
    prompt = torch.tensor([get_codec(meta)[0](document_start(meta))], device=next(models["plain"].parameters()).device)
    seconds = {arm: [] for arm in models}
    for _ in range(rounds):
        for arm, model in models.items():
            model.eval()
            torch.manual_seed(0)
            t0 = time.perf_counter()
            model.generate(prompt, new_tokens, temperature=0.8, top_k=200)
            seconds[arm].append(time.perf_counter() - t0)
    print("| arm | tokens/s | ratio |\n|---|---|---|")
    plain = statistics.median(seconds["plain"])
    for arm, times in seconds.items():
        print(f"| {arm} | {new_tokens / statistics.median(times):,.0f} | {plain / statistics.median(times):.2f} |")


def main(argv):
    configure(globals(), argv)
    torch.manual_seed(0)
    if ngram_scale:
        bench_ngram_scale()
        return
    bench_plain()
    if all:
        bench_techniques()
        bench_planner_generation()
        bench_ngram_build()
        bench_ngram_loss()
        bench_plan_labels()
        bench_sentence_encoders()


if __name__ == "__main__":
    main(sys.argv[1:])
