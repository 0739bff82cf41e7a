"""What a run leaves to read: log.jsonl's records, the loss.png figure drawn from them, the closing lines that say
where the checkpoint is and how to sample from it and resume it, and the main job's comparison with the plain GPT."""

import importlib
import json
import math
import os
import shlex

import matplotlib
import pytest
import wandb

import sample
import train
from training import run_folder, run_report
from training.plot import plot_log, read_log

TINY = [train.PLAIN_CONFIG, "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--compile=False"]


def made_up_log(out_dir, **extra):
    """Three evaluations 10 steps apart, with the per-step losses logged every 5 steps in between."""
    records = [{"iter": it, "train_loss": 3.0 - it / 20, "val_loss": 3.1 - it / 20,
                "train_losses": [[it - 5, 3.2 - it / 20], [it, 3.1 - it / 20]] if it else [], **extra}
               for it in (0, 10, 20)]
    (out_dir / "log.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    return records


def lines(ax):
    return {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}


def test_the_plot_has_a_panel_per_technique_that_is_on_with_its_health_figure_and_warnings(tmp_path):
    records = made_up_log(tmp_path, val_route2=0.6, val_route3=0.4, val_plan_acc=0.3, val_plan_majority_acc=0.2,
                          val_plan_gain=0.03, train_ngram_ce=3.5)
    records[2].update(val_route2=0.97, val_route3=0.03)  # collapsed onto layer 2 at the last evaluation
    records[1].update(val_plan_gain=0.0005)  # the LM ignores its plan at the middle one
    reporter = run_report.Reporter({"max_iters": 20, "wandb_log": False})
    for record in records:
        reporter.warn_degenerate(record)
    (tmp_path / "log.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    settings = train.settings_from([f"--out_dir={tmp_path}", "--mod_k=3", "--n_layer=6", "--ngram_alpha=0.3"])
    fig = plot_log(str(tmp_path), run_folder.run_title(settings, train.DEFAULTS), settings)
    loss, ensemble, plan, ngram = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "loss", "depth ensemble: mean routing weight per late layer",
        "planner (validation)",
        "n-gram target (weight alpha = 0.3): cross-entropy on train batches"]
    assert lines(loss)["training objective (per step)"] == [[5, 2.7], [10, 2.6], [15, 2.2], [20, 2.1]]
    assert set(lines(loss)) == {"training objective (per step)", "train CE (evaluations)", "val CE (evaluations)"}
    assert lines(ensemble)["layer 2"] == [[0, 0.6], [10, 0.6], [20, 0.97]]
    assert lines(ensemble)["degenerate (the run warned)"] == [[20, 0.97]]
    assert lines(plan)["always the majority label"] == [[0, 0.2], [10, 0.2], [20, 0.2]]
    assert lines(plan)["degenerate (the run warned)"] == [[10, 0.0005]]  # marked on the plan gain's curve
    assert set(lines(ngram)) == {"against the n-gram target", "against the observed token (plain CE)"}
    title = fig.get_suptitle()
    assert "mod_k=3" in title and "n_layer=6" in title and "out_dir" not in title and "dataset" not in title
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_the_plain_gpt_gets_the_loss_panel_alone_and_the_planner_panel_waits_for_its_baseline(tmp_path):
    made_up_log(tmp_path)
    assert [ax.get_title() for ax in plot_log(str(tmp_path)).axes] == ["loss"]
    made_up_log(tmp_path, val_plan_acc=0.3, val_plan_gain=0.03)
    plan = plot_log(str(tmp_path)).axes[1]
    assert list(lines(plan)) == ["plan gain (nats): what another sentence's plan costs", "planner's label accuracy"]


def test_plotting_leaves_matplotlibs_backend_and_pyplot_alone(tmp_path):
    # A notebook's inline backend must survive a run: plot_log draws on its own Figure.
    import matplotlib.pyplot as plt
    made_up_log(tmp_path)
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        figures = plt.get_fignums()
        plot_log(str(tmp_path))
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == figures
    finally:
        matplotlib.use(before)


def test_each_evaluation_record_carries_the_training_losses_since_the_one_before(corpus, tmp_path):
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path}", "--max_iters=8", "--eval_interval=4",
                "--log_interval=2", "--ngram_mode=compact", "--ngram_n=3"])
    records = read_log(tmp_path)
    assert [r["iter"] for r in records] == [0, 4, 8]
    assert [[it for it, _ in r["train_losses"]] for r in records] == [[], [2, 4], [6, 8]]
    assert all(r["train_ngram_ce"] > 0 for r in records)


def test_the_run_ends_with_commands_that_sample_from_it_and_resume_it(corpus, tmp_path, capsys):
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path / 'run'}", "--max_iters=4",
                "--eval_interval=2", "--dropout=0.1"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3].startswith(f"checkpoint: {tmp_path / 'run' / 'ckpt.pt'} (iteration 4)")
    sample_command = shlex.split(printed[-2].split(": ", 1)[1])
    resume_command = shlex.split(printed[-1].split(": ", 1)[1])
    assert sample_command[:2] == ["python", "sample.py"] and resume_command[:2] == ["python", "train.py"]
    importlib.reload(sample).main([*sample_command[2:], "--num_samples=1", "--max_new_tokens=3", "--start=the",
                                          "--device=cpu"])
    train.main([*resume_command[2:], "--max_iters=6"])
    assert [r["iter"] for r in read_log(tmp_path / "run")] == [0, 2, 4, 6]


def test_the_main_job_reads_the_plain_gpts_perplexity_from_the_results_the_experiment_wrote(tmp_path, monkeypatch):
    import tools.experiments.combined as combined
    monkeypatch.setattr(combined, "train_arm", lambda out_dir, args, max_iters, seed: [
        {"iter": max_iters, "val_loss": 2.0, "val_ppl": 7.0, "trainable_params": 1, "elapsed_s": 1.0}])
    spread = {"seed1337": -0.01, "seed1338": 0.0, "seed1339": 0.01}

    def read_score(out_dir):  # the plain arm averages log(6.25) over its seeds; the others are 0.1 worse
        seed, arm = os.path.normpath(out_dir).split(os.sep)[-2:]
        return {"val_loss": math.log(6.25) + spread[seed] + (0.1 if arm != "plain" else 0.0)}

    monkeypatch.setattr(combined, "read_score", read_score)
    path = tmp_path / "combined.json"
    assert "run `python -m tools.experiments.run --suite small --only combined`" in run_report.plain_result(str(path))
    combined.run("small", str(tmp_path))
    assert run_report.plain_result(str(path)).startswith(
        "the plain GPT on the same settings: perplexity 6.25, the mean over 3 seeds stored in")
    line = run_report.final_numbers(1.9, 20, {"val_loss": math.log(6.5), "val_tokens": 111_488},
                                    run_report.plain_result(str(path)))
    assert line.startswith("final: val loss 1.9000 on the curve's 20 fixed batches; 1.8718 on 111,488 tokens of the "
                           "validation split, perplexity 6.50; the plain GPT on the same settings: perplexity 6.25")
    assert line.endswith("not this run")


def test_help_gives_each_setting_its_comment_under_the_heading_of_its_group(capsys):
    with pytest.raises(SystemExit):
        train.settings_from(["--help"])
    printed = capsys.readouterr().out
    assert "\nI/O\n  --out_dir='out'  the run's folder: ckpt.pt" in printed
    assert "\n  --block_size=64  context length in tokens\n" in printed
    assert "\nsentence planner (planner.py)\n  --plan_mode='soft'  none | fixed" in printed
    assert "\n  --init_from='scratch'  'scratch', 'resume' (continue out_dir/ckpt.pt)" in printed  # the lines above


def test_a_run_that_fails_before_writing_anything_leaves_no_folder_behind(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path / 'new'}", "--init_from=resume"])
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path / 'mine'}", "--init_from=resume"])
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]  # the folder as it was


def test_the_gradient_norm_before_clipping_is_logged_every_log_interval_and_drawn(corpus, tmp_path, capsys):
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=2",
                "--log_interval=1", "--grad_clip=1e-3", "--learning_rate=0.1"])
    records = read_log(tmp_path)
    norms = [norm for r in records for _, norm in r["grad_norms"]]
    assert [[it for it, _ in r["grad_norms"]] for r in records] == [[], [1, 2], [3, 4]]
    assert len(norms) == 4 and all(norm > 1e-3 for norm in norms)  # before clipping: clipped, each would be 1e-3
    fig = plot_log(str(tmp_path), None, train.settings_from([*TINY, "--grad_clip=1e-3"]))
    assert fig.axes[1].get_title() == "gradient norm"
    assert [y for _, y in lines(fig.axes[1])["before clipping (per step)"]] == pytest.approx(norms)
    assert "grad_norm=" in capsys.readouterr().err  # on the progress bar


def test_wandb_gets_every_evaluation_log_jsonl_gets_offline(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, log = [], wandb.sdk.wandb_run.Run.log

    def recorded(run, data, *args, **kwargs):
        logged.append((kwargs.get("step"), data))
        return log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", recorded)
    train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=2",
                "--log_interval=1", "--wandb_log=True"])
    records = read_log(tmp_path)
    assert [step for step, _ in logged] == [r["iter"] for r in records] == [0, 2, 4]
    # nanoGPT's names, so its saved dashboards read this run
    assert all(data["iter"] == r["iter"] and data["val/loss"] == r["val_loss"] and data["train/loss"] == r["train_loss"]
               and data["lr"] == r["lr"] for (_, data), r in zip(logged, records))
    assert [data.get("grad_norm") for _, data in logged] == [None] + [r["grad_norms"][-1][1] for r in records[1:]]
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # a real offline run, in the run's folder
