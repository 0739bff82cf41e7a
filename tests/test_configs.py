"""Every file in config/ starts: one step on the CPU at a tiny width, run after the configs its first line names
('# after config/plain.py ...: '), with its own techniques, n-gram order and tokenizer. Only the model's size, the
run's length and the data shrink: a built-in dataset is swapped for a tiny corpus made here with its tokenizer."""

import random
import re
from pathlib import Path

import pytest

import train
from configurator import read_config_file
from data.write import write_dataset
from tools import pretrain_planner

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").rglob("*.py"))
TOKENIZER = {"shakespeare_char": "char", "wiki": "gpt2", "sotu": "gpt2"}
# n_layer 3: the planner enters the top n_layer - 2 layers and the ensemble takes the last 2.
TINY = ["--n_layer=3", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2", "--max_iters=1",
        "--eval_interval=1", "--eval_iters=1", "--device=cpu", "--compile=False", "--sample_tokens=0"]
# The first line of a config that runs after others: '# after <configs and flags>[, tuning a run of <config>]: ';
# words between them, like '(or wiki.py)', are for the reader.
AFTER = re.compile(r"# after (.+?)(?:, tuning a run of (\S+))?:(?: |$)")


def sentences(n, seed):
    """n made-up sentences, enough for the planner's 64 labels."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("bcdfgklmnprstv") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
             for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    made = {}
    for tokenizer in ("char", "gpt2"):
        path = tmp_path_factory.mktemp(tokenizer)
        docs = [" ".join(sentences(8, seed)) for seed in range(50)]
        write_dataset(path, {"train": docs[:44], "val": docs[44:]}, tokenizer, "tiny", "made by the test")
        made[tokenizer] = str(path)
    return made


def chain(config):
    """The arguments before the tiny overrides: the configs and flags the first line names, then the config; and the
    config whose run it tunes, if any."""
    match = AFTER.match((ROOT / config).read_text().splitlines()[0])
    if not match:
        return [config], None
    return [a for a in match.group(1).split() if a.startswith(("config/", "--"))] + [config], match.group(2)


def tiny_dataset(args, corpora):
    """The corpus made here with the tokenizer of the dataset the configs among args name."""
    dataset = train.DEFAULTS["dataset"]
    for path in (a for a in args if a.endswith(".py")):
        dataset = read_config_file(path).get("dataset", dataset)
    return f"--dataset={corpora[TOKENIZER[dataset]]}"


def run_train(config, corpora, out_dir):
    args, tuned = chain(config)
    extra = [f"--init_from={run_train(tuned, corpora, out_dir / 'tuned')}"] if tuned else []
    train.main([*args, *TINY, tiny_dataset(args, corpora), f"--out_dir={out_dir}", *extra])
    return out_dir / "ckpt.pt"


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_starts(config, corpora, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the paths the first lines name are relative to the repository
    if "python -m tools.pretrain_planner" in (ROOT / config).read_text().splitlines()[0]:
        pretrain_planner.main([config, tiny_dataset([config], corpora), f"--out_dir={tmp_path}", "--max_iters=1",
                               "--eval_interval=1"])
        assert (tmp_path / "planner.pt").is_file()
    else:
        assert run_train(config, corpora, tmp_path).is_file()
