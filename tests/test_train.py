"""train.py end to end on a tiny character corpus made here: exact resume, refusals, NaN handling, DDP, bf16."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from configurator import ConfigError
from lm import load_language_model
from training import checkpoint as ckpt, run_report
from training.plot import read_log

TINY = [train.PLAIN_CONFIG, "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--log_interval=1",
        "--compile=False"]


def run(corpus, out_dir, *args):
    return train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", *args])


def comparable(record):
    return {k: v for k, v in record.items() if k not in ("elapsed_s", "tokens_per_sec")}


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(corpus, tmp_path):
    # Dropout is on so that the replay of the random state is tested too; the schedule is fixed by lr_decay_iters.
    args = ["--dropout=0.1", "--eval_interval=4", "--lr_decay_iters=12", "--gradient_accumulation_steps=2"]
    run(corpus, tmp_path / "straight", *args, "--max_iters=12")
    run(corpus, tmp_path / "stopped", *args, "--max_iters=4")
    run(corpus, tmp_path / "stopped", *args, "--max_iters=12", "--init_from=resume")
    straight, resumed = read_log(tmp_path / "straight"), read_log(tmp_path / "stopped")
    assert [r["iter"] for r in resumed] == [0, 4, 8, 12]
    assert [comparable(r) for r in straight] == [comparable(r) for r in resumed]
    a, b = (ckpt.load(str(tmp_path / d / "ckpt.pt")) for d in ("straight", "stopped"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["iter_num"] == b["iter_num"] == 12


def test_resume_refuses_a_checkpoint_of_another_shape(corpus, tmp_path):
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    with pytest.raises(ConfigError, match="n_layer: checkpoint 2, now 3"):
        run(corpus, tmp_path, "--max_iters=4", "--init_from=resume", "--n_layer=3")


def test_a_truncated_checkpoint_gives_a_clear_error(corpus, tmp_path):
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2")
    path = tmp_path / "ckpt.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        run(corpus, tmp_path, "--max_iters=4", "--init_from=resume")


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        run(corpus, tmp_path, "--max_iters=50", "--eval_interval=50", "--learning_rate=1e12", "--grad_clip=0.0",
            "--warmup_iters=0", "--decay_lr=False")
    assert ckpt.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 0


def test_tuning_starts_from_a_checkpoints_weights(corpus, tmp_path):
    run(corpus, tmp_path / "pre", "--max_iters=8", "--eval_interval=8")
    trainer = run(corpus, tmp_path / "tune", "--max_iters=0", "--eval_interval=8", "--block_size=8",
                  f"--init_from={tmp_path / 'pre' / 'ckpt.pt'}", "--n_layer=5")
    pretrained = ckpt.load(str(tmp_path / "pre" / "ckpt.pt"))["model"]
    tuned = trainer.model.state_dict()
    assert trainer.model.gpt.config.n_layer == 2  # the shape comes from the checkpoint, not the settings
    assert torch.equal(tuned["gpt.transformer.wpe.weight"], pretrained["gpt.transformer.wpe.weight"][:8])
    assert torch.equal(tuned["gpt.lm_head.weight"], pretrained["gpt.lm_head.weight"])


def test_keep_best_writes_the_weights_of_the_best_evaluation_beside_the_checkpoint(corpus, tmp_path):
    # A learning rate this high makes every later evaluation worse than the first: the best is iteration 0.
    diverging = ["--eval_interval=2", "--learning_rate=3.0", "--warmup_iters=0", "--decay_lr=False", "--grad_clip=0.0"]
    run(corpus, tmp_path / "start", *diverging, "--max_iters=0")
    run(corpus, tmp_path / "kept", *diverging, "--max_iters=4", "--keep_best=True")
    losses = [r["val_loss"] for r in read_log(tmp_path / "kept")]
    assert losses[0] < min(losses[1:])
    best, last = (ckpt.load(str(tmp_path / "kept" / name)) for name in ("best.pt", "ckpt.pt"))
    start = ckpt.load(str(tmp_path / "start" / "ckpt.pt"))
    assert best["iter_num"] == 0 and best["val_loss"] == losses[0] and last["iter_num"] == 4
    assert all(torch.equal(best["model"][k], start["model"][k]) for k in start["model"])
    assert not (tmp_path / "start" / "best.pt").exists()


def test_the_score_is_the_kept_weights_loss_on_the_first_validation_windows(corpus, tmp_path):
    # As above, the best evaluation is the first: the score must come from best.pt's weights, not the last ones.
    diverging = ["--eval_interval=2", "--learning_rate=3.0", "--warmup_iters=0", "--decay_lr=False", "--grad_clip=0.0"]
    trainer = run(corpus, tmp_path, *diverging, "--max_iters=4", "--keep_best=True", "--score_val_tokens=100")
    with open(tmp_path / "score.json") as f:
        score = json.load(f)
    gpt = load_language_model(ckpt.load(str(tmp_path / "best.pt")), "cpu").gpt
    val = torch.from_numpy(trainer.tokens["val"].astype(np.int64))
    windows = torch.arange(0, 100 - 16 + 1, 16)  # the windows of block_size 16 whose targets lie in the first 100
    x, y = (torch.stack([val[i + shift:i + shift + 16] for i in windows]) for shift in (0, 1))
    assert score["val_tokens"] == 96 and score["weights"] == "best.pt"
    assert score["val_loss"] == pytest.approx(gpt(x, y)[1].item(), rel=1e-5)
    assert score["val_loss"] < read_log(tmp_path)[-1]["val_loss"] - 0.1  # the last weights are much worse


@pytest.mark.parametrize("args, message", [
    (["--n_embd=10", "--n_head=3"], "divisible by n_head"),
    (["--max_itres=10"], "unknown setting 'max_itres'.*did you mean max_iters"),
    (["--batch_size=big"], "batch_size.*must be of type int"),
    (["--batch_size=0"], "batch_size must be at least 1"),
    (["--dtype=float8"], "dtype must be"),
    (["--init_from=nowhere.pt"], "init_from must be"),
])
def test_bad_settings_are_refused_with_a_message_naming_them(corpus, tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        run(corpus, tmp_path, *args)


def test_bfloat16_autocast_trains_on_cpu(corpus, tmp_path):
    run(corpus, tmp_path, "--max_iters=4", "--eval_interval=4", "--dtype=bfloat16")
    losses = [r["val_loss"] for r in read_log(tmp_path)]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(corpus, tmp_path):
    args = [*TINY, f"--dataset={corpus}", "--max_iters=3", "--eval_interval=3", "--gradient_accumulation_steps=2",
            "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "train.py", *args, f"--out_dir={tmp_path / 'ddp'}"], check=True, env=env,
                   cwd=os.path.dirname(train.__file__), capture_output=True)
    run(corpus, tmp_path / "single", *args[len(TINY) + 1:])
    ddp, single = (ckpt.load(str(tmp_path / d / "ckpt.pt"))["model"] for d in ("ddp", "single"))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-6, rtol=1e-5)


def test_a_degenerate_technique_warns_once_and_marks_the_record(capsys):
    trainer = run_report.Reporter({"max_iters": 100, "wandb_log": False})
    collapsed = {"iter": 20, "val_route2": 0.97, "val_route3": 0.03, "val_plan_acc": 0.3,
                 "val_plan_majority_acc": 0.17, "val_plan_gain": 0.0001}
    early = {**collapsed, "iter": 10}  # the first fifth of the run: the techniques are still learning their jobs
    trainer.warn_degenerate(early)
    assert "warnings" not in early and not capsys.readouterr().out
    trainer.warn_degenerate(collapsed)
    trainer.warn_degenerate(dict(collapsed))
    printed = capsys.readouterr().out
    assert printed.count("collapsed onto layer 2") == 1 and printed.count("LM is not using its plan") == 1
    assert len(collapsed["warnings"]) == 2
    healthy = {"iter": 30, "val_route2": 0.6, "val_route3": 0.4, "val_plan_acc": 0.3, "val_plan_majority_acc": 0.17,
               "val_plan_gain": 0.03}
    trainer.warn_degenerate(healthy)
    assert "warnings" not in healthy
