"""Every arm of every experiment, in both suites, is a run train.py accepts: a bad flag in the gpu suite would
otherwise surface only on a GPU, hours in. train_arm is replaced by a check of the arm's settings that returns
made-up log records, so nothing trains; the scripts then write their tables and plots from those."""

import importlib
import json
import os

import numpy as np
import pytest

import train
from model import GPTConfig
from tools.experiments import combined, common
from tools.experiments.common import ROOT, paired_columns, verdict

FILE_SETTINGS = ("--init_from=", "--plan_init_planner=")  # files earlier arms would have written


def made_up_records(max_iters):
    record = {"val_loss": 2.0, "val_ppl": 7.4, "trainable_params": 1, "elapsed_s": 1.0, "val_plan_acc": 0.1,
              "val_plan_top5": 0.3, "val_majority_acc": 0.03}
    record.update({key: value for j in (1, 2) for key, value in ((f"val_route{j}", 0.5), (f"val_layer{j}_ce", 2.0))})
    return [dict(record, iter=0, val_loss=3.0), dict(record, iter=max_iters)]


@pytest.mark.parametrize("suite", ["small", "gpu"])
@pytest.mark.parametrize("name", ["ngram", "mod", "planner", "planner_frozen", "combined"])
def test_every_arm_is_a_run_train_py_accepts(name, suite, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the scripts name some config files relative to the repository, as train_arm's cwd
    stand_in = tmp_path / "ckpt.pt"
    stand_in.touch()
    experiment = importlib.import_module(f"tools.experiments.{name}")
    arms = []

    def check_arm(out_dir, args, max_iters, seed=1337, score=True):
        argv = [train.PLAIN_CONFIG, *args, f"--seed={seed}", f"--score_val_tokens={120000 if score else 0}",
                f"--out_dir={out_dir}", f"--max_iters={max_iters}"]
        arms.append(argv)
        s = train.settings_from([f"{arg.split('=')[0]}={stand_in}" if arg.startswith(FILE_SETTINGS) else arg
                                 for arg in argv])  # raises ConfigError for an unknown key, a wrong type, a bad mix
        GPTConfig(**{key: s[key] for key in ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")})
        return made_up_records(max_iters)

    monkeypatch.setattr(experiment, "train_arm", check_arm)
    monkeypatch.setattr(experiment, "read_score", lambda out_dir: {"val_loss": 2.0 + 0.001 * len(out_dir)})
    if name == "planner":
        monkeypatch.setattr(experiment, "pretrained_planner", lambda suite, plan: str(stand_in))
    if name == "planner_frozen":
        monkeypatch.setattr(experiment, "pretrain_planner", lambda out_dir, iters, embedder: made_up_records(iters)[-1])
        monkeypatch.setattr(experiment, "planner_scores", lambda path: made_up_records(0)[-1])
    experiment.run(suite, str(tmp_path / "results"))
    assert len(arms) >= 4
    assert all(a[-2].startswith(f"--out_dir={os.path.join(ROOT, 'out')}{os.sep}") for a in arms)  # git ignores out/
    assert any(f.endswith(".md") for f in os.listdir(tmp_path / "results"))


def test_verdict_needs_the_paired_interval_to_exclude_zero():
    """Three seeds that agree on a gain of about 0.01 nats resolve it; the same mean with one seed the other way
    does not; a consistent loss is called one. The interval is Student-t's: with 3 seeds, 4.30 standard errors."""
    assert verdict([-0.010, -0.011, -0.009]) == "helps"
    assert verdict([-0.030, 0.010, -0.010]) == "no resolvable difference"
    assert verdict([0.020, 0.021, 0.019]) == "hurts"
    assert verdict([-0.010, -0.002, -0.018]) == "no resolvable difference"  # mean -0.01, sd 0.008: t = 2.2 < 4.30
    assert paired_columns([2.0, 2.1, 2.2], [2.0, 2.1, 2.2])[1] == "(baseline)"


def test_the_variance_table_measures_what_the_closed_forms_say():
    from tools.experiments.ngram_variance import distances
    tokens = np.random.default_rng(0).choice(6, 4000, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]).astype(np.uint16)
    rows, positions = distances(tokens, 3, 2, None, (1, 4))
    assert positions == len(tokens) - 2
    # the dealing is unbiased: its mean squared distance is (1 - m)^2 - |y_tail|^2, the closed form, to rounding
    assert rows["compact, as built"] == pytest.approx(rows["compact, closed form"], rel=1e-3)
    averaged = rows["compact, mean over 4 epochs, a draw per epoch"]
    assert averaged < 0.75 * rows["compact, mean over 4 epochs, one draw"]  # a draw per epoch averages out
    assert rows["compact, closed form"] < rows["observed token"]
    assert rows["its bias"] > 0  # the observed-token tail is biased towards S


def test_the_ensembles_five_seeds_read_stored_scores_and_train_the_others(tmp_path, monkeypatch):
    from tools.experiments import ensemble_seeds
    stored = {arm: {"seeds": {"1337": 1.70 + extra, "1338": 1.71 + extra, "1339": 1.72 + extra}}
              for arm, extra in ((ensemble_seeds.ALL, 0.01), (ensemble_seeds.WITHOUT, 0.0))}
    (tmp_path / "combined.json").write_text(json.dumps(stored))
    monkeypatch.setattr(combined, "STORED", str(tmp_path / "combined.json"))
    trained = []
    monkeypatch.setattr(common, "train_arm", lambda out_dir, args, iters, seed: trained.append((seed, args)))
    monkeypatch.setattr(common, "read_score", lambda out_dir: None if not trained else
                        {"val_loss": 1.7 + 0.012 * ("all_three" in out_dir)})
    ensemble_seeds.run(str(tmp_path))
    table = (tmp_path / "ensemble_seeds.md").read_text()
    assert sorted({seed for seed, _ in trained}) == [1340, 1341]  # the stored seeds are not trained again
    assert ["--mod_k=2" in args for _, args in trained] == [True, False, True, False]  # all three, then without
    assert "| 1337 | 1.7100 | 1.7000 | +0.0100 | results/combined.json |" in table and "**hurts**" in table


def test_each_mod_arm_takes_the_grid_rate_its_held_out_seed_scores_best(tmp_path, monkeypatch):
    from tools.experiments import mod
    best = {arm: mod.LR_GRID[i % len(mod.LR_GRID)] for i, arm in enumerate(mod.ARMS)}
    trained = []

    def train_arm(out_dir, args, max_iters, seed=1337, score=True):
        trained.append((out_dir, seed, next((a for a in args if a.startswith("--learning_rate=")), None)))
        arm = next((a for a in mod.ARMS if os.sep + mod.slug(a) + os.sep in out_dir + os.sep), None)
        records = made_up_records(max_iters)  # a selection run ends best at its arm's rate, every other run alike
        records[-1]["val_loss"] -= arm is not None and out_dir.endswith(f"lr{best[arm]:g}")
        return records

    monkeypatch.setattr(mod, "train_arm", train_arm)
    monkeypatch.setattr(mod, "read_score", lambda out_dir: {"val_loss": 2.0})
    monkeypatch.setattr(mod, "plot_curves", lambda *a: None)
    monkeypatch.setattr(mod, "plot_layers", lambda *a: None)
    mod.run("small", str(tmp_path))
    for arm in mod.ARMS:
        rate = best[arm]
        paired = [(seed, lr) for d, seed, lr in trained if d.endswith(os.sep + mod.slug(arm))]
        assert paired == [(seed, f"--learning_rate={rate:g}") for seed in (1337, 1338, 1339)], arm
        tried = [(seed, lr) for d, seed, lr in trained
                 if os.sep + "learning-rate" + os.sep + mod.slug(arm) + os.sep in d]
        # a best rate at an edge of the grid is checked against one more rate beyond it, which does worse here
        at_edge = best[arm] in (min(mod.LR_GRID), max(mod.LR_GRID))
        assert len(tried) == len(mod.LR_GRID) + at_edge and {seed for seed, _ in tried} == {mod.SELECTION_SEED}
    table = (tmp_path / "mod.md").read_text()
    assert "| MoD only | untuned |" in table and "- MoD only against LoRA, MoD's size:" in table


def test_the_ngram_epochs_arms_share_the_combined_experiments_runs_at_its_length(tmp_path, monkeypatch):
    from tools.experiments import ngram_epochs
    from tools.experiments.common import main_job_dir
    stored = {"plain": {"seeds": {"1337": 1.80}}, "n-gram targets alone": {"seeds": {"1337": 1.72, "1338": 1.72,
                                                                                     "1339": 1.72}}}
    (tmp_path / "combined.json").write_text(json.dumps(stored))
    monkeypatch.setattr(combined, "STORED", str(tmp_path / "combined.json"))
    monkeypatch.setattr(ngram_epochs, "train_tokens", lambda: 1_003_854)  # no run here prepared the dataset
    trained = []
    monkeypatch.setattr(common, "train_arm", lambda out_dir, args, steps, seed: trained.append((out_dir, steps)))
    losses = {"off": 1.80, "AllNTs": 1.70, "CoCoNTs_r8": 1.72}  # CoCoNTs keeps 80% of AllNTs' gain
    def read_score(out_dir):  # a 3000-step folder has a score once trained, a 1000-step one always
        if "ngram-epochs" in out_dir:
            return {"val_loss": next(v for k, v in losses.items() if out_dir.endswith(k))}
        return {"val_loss": 1.80 if out_dir.endswith("plain") else 1.70} if (out_dir, 3000) in trained else None

    monkeypatch.setattr(common, "read_score", read_score)
    ngram_epochs.run(str(tmp_path))
    at_3000 = {d for d, steps in trained if steps == 3000}
    assert main_job_dir("plain", 1338) in at_3000 and main_job_dir("plain", 1337) not in at_3000  # stored: read
    assert not any("n-gram_targets_alone" in d for d in at_3000) and main_job_dir("n-gram AllNTs", 1339) in at_3000
    assert len({d for d, steps in trained if steps == 1000}) == 9
    table = (tmp_path / "ngram_epochs.md").read_text()
    assert table.count("| CoCoNTs r=8 |") == 2 and table.count("80% ± 0%") == 2
    assert "CoCoNTs r=8 at 3000 steps, off at 3000 steps." in table


def test_a_rate_better_beyond_the_grids_edge_is_followed_out_of_it(monkeypatch):
    from tools.experiments import mod
    curve = {3e-4: 2.0, 1e-3: 1.9, 3e-3: 1.8, 1e-2: 1.7, 3e-2: 1.6, 9e-2: 1.65}  # best at 3x the grid's top
    tried = []

    def train_arm(out_dir, args, max_iters, seed, score):
        rate = float(next(a for a in args if a.startswith("--learning_rate="))[len("--learning_rate="):])
        tried.append(rate)
        return [{"val_loss": next(v for r, v in curve.items() if abs(r - rate) < 1e-9 * r)}]

    monkeypatch.setattr(mod, "train_arm", train_arm)
    assert mod.choose_rate("MoD only", [], mod.SUITES["small"], "out", "pre")[0] == pytest.approx(3e-2)
    assert len(tried) == len(mod.LR_GRID) + 2  # 3e-2 beat the edge, 9e-2 did not


def test_a_rate_that_diverges_with_a_paired_seed_gives_way_to_the_next_best(tmp_path, monkeypatch):
    import subprocess
    from tools.experiments import mod
    monkeypatch.setattr(mod, "choose_rate", lambda *a: [0.09, 0.03])  # the selection's finished rates, best first

    def train_arm(out_dir, args, max_iters, seed):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "log.jsonl"), "w") as f:
            f.write(json.dumps({"iter": 0, "val_loss": 7.3}) + "\n")
        if "--learning_rate=0.09" in args and seed == 1338:  # a nan loss at step 140
            raise subprocess.CalledProcessError(1, "train.py")
        return [{"val_loss": 7.0, "trainable_params": 514}]

    monkeypatch.setattr(mod, "train_arm", train_arm)
    rate, dirs, runs, diverged = mod.paired_runs("MoD only", [], mod.SUITES["small"], str(tmp_path), "pre")
    assert rate == 0.03 and diverged == [(0.09, 1338)]
    assert [os.path.relpath(d, tmp_path) for d in dirs] == [os.path.join(f"seed{seed}", "MoD_only_lr0.03")
                                                              for seed in (1337, 1338, 1339)]
    scores = {arm: [{"val_loss": 7.0}] * 3 for arm in [*mod.ARMS, "untuned"]}
    text = mod.report({arm: [runs[0]] * 3 for arm in mod.ARMS}, scores, dict.fromkeys(mod.ARMS, 0.03),
                      {"MoD only": diverged}, "small", mod.SUITES["small"])
    assert "- MoD only: rate 0.09 diverged with seed 1338; so it runs at the next best rate of its selection, 0.03\n" \
        in text


def test_a_rate_whose_run_diverges_counts_as_infinitely_bad(tmp_path, monkeypatch):
    import subprocess
    from tools.experiments import mod

    def train_arm(out_dir, args, max_iters, seed, score):
        if "--learning_rate=0.01" in args:  # train.py stopped on a nan loss after its first evaluation
            os.makedirs(out_dir)
            with open(os.path.join(out_dir, "log.jsonl"), "w") as f:
                f.write(json.dumps({"iter": 0, "val_loss": 7.3}) + "\n")
            raise subprocess.CalledProcessError(1, "train.py")
        return [{"val_loss": 2.0 if "--learning_rate=0.003" in args else 3.0}]

    monkeypatch.setattr(mod, "train_arm", train_arm)
    assert mod.choose_rate("MoD only", [], mod.SUITES["small"], str(tmp_path), "pre") == [3e-3, 3e-4, 1e-3]
    monkeypatch.setattr(mod, "train_arm", lambda *a, **k: (_ for _ in ()).throw(subprocess.CalledProcessError(1, "x")))
    with pytest.raises(subprocess.CalledProcessError):  # a run that never started is a broken run, not a bad rate
        mod.choose_rate("full", [], mod.SUITES["small"], str(tmp_path / "none"), "pre")
