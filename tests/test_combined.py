"""The three techniques together through train.py, on a tiny corpus of sentences made here: every pair and all
three train, sample with the cache exactly as without it, resume exactly, and run under DDP."""

import os
import random
import subprocess
import sys

import pytest
import torch

import train
from data.write import write_dataset
from lm import load_language_model
from training import checkpoint as ckpt
from training.plot import read_log
from training.replanner import plan_data_of

TINY = [train.PLAIN_CONFIG, "--n_layer=3", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--log_interval=1", "--compile=False",
        "--device=cpu"]
TECHNIQUES = {
    "ngram": ["--ngram_mode=compact", "--ngram_n=3", "--ngram_r=4"],
    "mod": ["--mod_k=2"],
    "planner": ["--plan_mode=soft", "--plan_k=4", "--plan_context=3", "--plan_lambda=1.0"],
}
ALL = [*TECHNIQUES["ngram"], *TECHNIQUES["mod"], *TECHNIQUES["planner"]]


def documents(n, seed):
    rng = random.Random(seed)
    # the planner's sentence embedding needs more recurring words than its 128 dimensions
    words = [a + b + c for a in "bdfklmst" for b in "aeiou" for c in "nprt"]
    return [" ".join(" ".join(rng.choices(words, k=rng.randint(3, 7))).capitalize() + rng.choice(".!?")
                     for _ in range(rng.randint(3, 6))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("sentences")
    write_dataset(path, {"train": documents(80, 0), "val": documents(10, 1)}, "char", "sentences", "the test")
    return str(path)


def run(corpus, out_dir, *args):
    return train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", *args])


@pytest.mark.parametrize("names", [("ngram", "mod"), ("ngram", "planner"), ("mod", "planner"),
                                   ("ngram", "mod", "planner")])
def test_techniques_train_together_and_sample_from_their_checkpoint(corpus, tmp_path, names):
    args = [a for name in names for a in TECHNIQUES[name]]
    run(corpus, tmp_path, *args, "--max_iters=12", "--eval_interval=6", "--learning_rate=3e-3")
    losses = [r["val_loss"] for r in read_log(tmp_path)]
    assert losses[-1] < losses[0]
    checkpoint = ckpt.load(str(tmp_path / "ckpt.pt"))
    model = load_language_model(checkpoint, "cpu")
    assert (model.mod is not None) == ("mod" in names) and (model.plan is not None) == ("planner" in names)
    prompt = torch.tensor([[5, 3, 7]])
    planning = dict(plan_data=plan_data_of(checkpoint["config"]) if model.plan is not None else None,
                    vocab=ckpt.vocab(checkpoint))
    cached = model.generate(prompt, 20, temperature=0, use_cache=True, **planning)
    assert torch.equal(cached, model.generate(prompt, 20, temperature=0, use_cache=False, **planning))


def test_all_three_resume_exactly(corpus, tmp_path):
    args = [*ALL, "--eval_interval=3", "--lr_decay_iters=6", "--dropout=0.1"]
    run(corpus, tmp_path / "straight", *args, "--max_iters=6")
    run(corpus, tmp_path / "stopped", *args, "--max_iters=3")
    run(corpus, tmp_path / "stopped", *args, "--max_iters=6", "--init_from=resume")
    drop_timing = lambda r: {k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_sec")}
    assert [drop_timing(r) for r in read_log(tmp_path / "straight")] == \
        [drop_timing(r) for r in read_log(tmp_path / "stopped")]


def test_resume_refuses_another_combination(corpus, tmp_path):
    run(corpus, tmp_path, *ALL, "--max_iters=2", "--eval_interval=2")
    with pytest.raises(ValueError, match="mod_k: checkpoint 2, now 0"):
        run(corpus, tmp_path, *TECHNIQUES["ngram"], *TECHNIQUES["planner"], "--max_iters=4", "--init_from=resume")


def test_all_three_under_two_gloo_processes_match_one_process(corpus, tmp_path):
    # Distilling on every position: a random subset, like dropout, is drawn per process and would differ.
    args = [*TINY, f"--dataset={corpus}", *ALL, "--mod_distill_frac=1.0", "--max_iters=3", "--eval_interval=3",
            "--gradient_accumulation_steps=2"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "train.py", *args, f"--out_dir={tmp_path / 'ddp'}"], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=os.path.dirname(train.__file__))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the two processes: another thread count sums floats in another order
    try:
        run(corpus, tmp_path / "single", *args[len(TINY) + 1:])
    finally:
        torch.set_num_threads(threads)
    ddp, single = (ckpt.load(str(tmp_path / d / "ckpt.pt"))["model"] for d in ("ddp", "single"))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-6, rtol=1e-5)


def test_each_technique_says_in_words_what_it_did_at_every_evaluation(corpus, tmp_path, capsys):
    run(corpus, tmp_path, *ALL, "--max_iters=4", "--eval_interval=2")
    printed, bar = capsys.readouterr()
    for words in ("depth ensemble: routing weight", "on layer 2 of 3, ", "on layer 3 of 3 (final)",
                  "a perfect per-token router", "planner: the next sentence's label right",
                  "(always answering the most frequent label: ", "another sentence's plan the val loss rises by",
                  "n-gram targets: on train batches, cross-entropy"):
        assert printed.count(words) == 3, words  # the evaluations at 0, 2 and 4
    assert "train_ce=" in bar and "objective=" in bar  # the bar names what it shows: not the CE alone
