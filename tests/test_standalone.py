"""Each technique stands alone: its file is imported by lm.py only (and by the tools built for it), so deleting it
leaves the plain GPT working. Deletion is simulated by making the module unimportable in a fresh process."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TECHNIQUES = {"ngram": "--ngram_mode=compact", "mod": "--mod_k=2", "planner": "--plan_mode=soft"}
# Tools made for one technique, which import it by name: they go when it goes.
TOOLS = {"tools/bench.py": {"ngram"}, "tools/pretrain_planner.py": {"planner"},
         "tools/experiments/planner_frozen.py": {"planner"}, "tools/experiments/ngram_variance.py": {"ngram"}}

WITHOUT = """
import sys
sys.modules[{name!r}] = None  # what deleting {name}.py does to `import {name}`
import lm, sample, train
from configurator import ConfigError
assert {name!r} not in [t.__name__ for t in lm.TECHNIQUES] and len(lm.TECHNIQUES) == 2
train.main({args!r})
sample.main(["--out_dir={out_dir}", "--max_new_tokens=8", "--num_samples=1", "--device=cpu"])
try:
    train.settings_from([train.PLAIN_CONFIG, {switch!r}])
except ConfigError as e:
    print(e)
"""


@pytest.mark.parametrize("name", TECHNIQUES)
def test_the_plain_gpt_trains_evaluates_saves_and_samples_without_the_techniques_file(name, corpus, tmp_path):
    args = ["config/plain.py", f"--dataset={corpus}", f"--out_dir={tmp_path}", "--n_layer=2", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=4", "--eval_interval=2",
            "--eval_iters=2", "--warmup_iters=1", "--sample_tokens=8", "--compile=False", "--device=cpu"]
    code = WITHOUT.format(name=name, args=args, out_dir=tmp_path, switch=TECHNIQUES[name])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "iter 4: train loss" in done.stdout and "final: val loss" in done.stdout  # trained and evaluated
    assert (tmp_path / "ckpt.pt").is_file() and (tmp_path / "loss.png").is_file()  # saved
    assert done.stdout.count("tokens/s") == 1  # sample.py's one sample
    # switching the missing technique on is refused in words, not left out in silence
    assert f"the settings switch on {name}.py, which is not in this copy of the repository" in done.stdout


def imported_techniques(path):
    """The technique modules a Python file imports by name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names & set(TECHNIQUES)


def test_no_module_but_the_techniques_own_tools_imports_a_technique_by_name():
    # lm.py imports them through lm.optional, which a deleted file cannot break; everything else goes through lm.py
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in ("tests", ".venv")]
    importers = {str(p.relative_to(ROOT)): imported_techniques(p) for p in files}
    assert {path: names for path, names in importers.items() if names} == TOOLS
