"""model.py is GPT-2 number for number: against transformers' GPT2LMHeadModel on random weights, through tuning a
save_pretrained folder with train.py, and through tools/export_gpt2.py back. Every model is random and made here;
nothing is downloaded (the gpt2 names are only tested for their offline message)."""

import os
import subprocess
import sys

import pytest
import torch
import transformers

import train
from configurator import ConfigError
from data.vocabulary import gpt2_encoding
from data.write import write_dataset
from model import GPT, GPTConfig
from tools import export_gpt2
from training import hf
from training.plot import read_log

transformers.logging.set_verbosity_error()

TINY = [train.PLAIN_CONFIG, "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--log_interval=1",
        "--compile=False"]


def random_gpt2(vocab_size=101, std=None, **shape):
    """A random GPT2LMHeadModel: transformers' own init (std 0.02), or every parameter drawn with std, the spread
    of trained weights, where an approximation error no longer hides under tiny activations."""
    torch.manual_seed(0)
    shape = {"n_positions": 32, "n_embd": 64, "n_layer": 4, "n_head": 4, **shape}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab_size, **shape)).eval()
    if std is not None:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=std)
    return model


@pytest.mark.parametrize("std", [None, 0.2, 0.5])
@pytest.mark.parametrize("flash", [True, False])
def test_model_py_computes_what_transformers_gpt2_computes(std, flash):
    theirs = random_gpt2(std=std)
    ours = GPT(GPTConfig(vocab_size=101, block_size=32, n_embd=64, n_layer=4, n_head=4, flash=flash)).eval()
    ours.load_state_dict(hf.swap_conv1d(theirs.state_dict()))
    idx = torch.randint(0, 101, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, atol=1e-5, rtol=0)
    prompt = idx[:, :4]
    greedy = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=28, do_sample=False,
                             pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 28, temperature=0), greedy)


@pytest.fixture(scope="module")
def bpe_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    text = "The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 40
    write_dataset(path, {"train": [text] * 3, "val": [text]}, "gpt2", "tiny_bpe", "made by the test")
    return str(path)


def run(corpus, out_dir, *args):
    return train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out_dir}", *args])


def test_tuning_a_save_pretrained_folder_starts_from_its_weights_and_exports_back_unchanged(bpe_corpus, tmp_path):
    original = random_gpt2(vocab_size=hf.GPT2_VOCAB_SIZE, std=0.1, n_embd=16, n_layer=2, n_head=2)
    original.save_pretrained(tmp_path / "hf_in")
    # Its shape (4 heads, biases, GPT-2's unpadded vocabulary) comes from the folder, not the settings.
    trainer = run(bpe_corpus, tmp_path / "tune", f"--init_from={tmp_path / 'hf_in'}", "--max_iters=0",
                  "--n_head=4", "--bias=False")
    gpt = trainer.model.gpt
    assert (gpt.config.vocab_size, gpt.config.n_head, gpt.config.bias, gpt.config.block_size) == (50257, 2, True, 16)
    idx = torch.randint(0, hf.GPT2_VOCAB_SIZE, (2, 16))
    with torch.no_grad():
        expected = original(idx).logits
        torch.testing.assert_close(gpt(idx)[0], expected, atol=1e-5, rtol=0)
        folder = export_gpt2.main([f"--out_dir={tmp_path / 'tune'}"])
        exported = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        torch.testing.assert_close(exported(idx).logits, expected, atol=1e-5, rtol=0)
    run(bpe_corpus, tmp_path / "tuned", f"--init_from={tmp_path / 'hf_in'}", "--max_iters=6", "--eval_interval=6")
    losses = [r["val_loss"] for r in read_log(tmp_path / "tuned")]
    assert losses[-1] < losses[0]


def test_export_of_a_plain_run_cuts_the_padded_vocabulary_and_fills_zero_biases(bpe_corpus, tmp_path):
    trainer = run(bpe_corpus, tmp_path, "--max_iters=2", "--eval_interval=2", "--bias=False")
    assert trainer.model.gpt.config.vocab_size == 50304
    (tmp_path / "hf.tmp").mkdir()  # what an earlier export that died half-way left
    (tmp_path / "hf.tmp" / "junk.bin").write_bytes(b"not part of the export")
    exported = transformers.GPT2LMHeadModel.from_pretrained(export_gpt2.main([f"--out_dir={tmp_path}",
                                                                     f"--to={tmp_path / 'hf'}"])).eval()
    assert exported.config.vocab_size == 50257 and exported.config.n_positions == 16
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = trainer.model.gpt.eval()(idx)[0]
        torch.testing.assert_close(exported(idx).logits, ours[..., :50257], atol=1e-5, rtol=0)
    text = "Ünïcödé 🙂 and a literal <|endoftext|>"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.encode(text) == gpt2_encoding().encode(text, allowed_special="all")
    assert not (tmp_path / "hf" / "junk.bin").exists()
    with pytest.raises(ConfigError, match="exists: remove it or pass another --to"):
        export_gpt2.main([f"--out_dir={tmp_path}", f"--to={tmp_path / 'hf'}"])


def test_export_refuses_a_model_with_techniques_and_a_char_vocabulary(bpe_corpus, tmp_path):
    run(bpe_corpus, tmp_path / "mod", "--max_iters=0", "--mod_k=2")
    with pytest.raises(ConfigError, match="trained with mod.*only the plain GPT is a GPT-2"):
        export_gpt2.main([f"--out_dir={tmp_path / 'mod'}"])
    write_dataset(tmp_path / "chars", {"train": ["abcdefgh" * 20], "val": ["hgfedcba" * 20]}, "char", "c", "test")
    run(str(tmp_path / "chars"), tmp_path / "char", "--max_iters=0")
    with pytest.raises(ConfigError, match="'char' tokenizer.*GPT-2 BPE dataset"):
        export_gpt2.main([f"--out_dir={tmp_path / 'char'}"])
    assert not os.path.exists(tmp_path / "mod" / "hf") and not os.path.exists(tmp_path / "char" / "hf")


def test_gpt2_by_name_offline_without_a_cache_says_so_in_one_line(bpe_corpus, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "train.py", *TINY, f"--dataset={bpe_corpus}", f"--out_dir={tmp_path}",
                           "--init_from=gpt2"], env=env, cwd=os.path.dirname(train.__file__), capture_output=True,
                          text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot load 'gpt2' from the Hugging Face hub")
    assert "--init_from=folder" in done.stderr


def test_a_folder_that_holds_no_gpt2_is_refused_with_the_fix(bpe_corpus, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="pass a folder written by save_pretrained, or the path of a checkpoint"):
        run(bpe_corpus, tmp_path / "out", f"--init_from={tmp_path / 'run'}")
    random_gpt2(vocab_size=hf.GPT2_VOCAB_SIZE, n_embd=16, n_layer=1, n_head=2, activation_function="relu",
                scale_attn_by_inverse_layer_idx=True).save_pretrained(tmp_path / "variant")
    with pytest.raises(ConfigError, match="differs in activation_function, scale_attn_by_inverse_layer_idx$"):
        run(bpe_corpus, tmp_path / "out", f"--init_from={tmp_path / 'variant'}")


def test_a_run_tuned_from_a_folder_resumes_exactly(bpe_corpus, tmp_path):
    # The folder's shape (and unpadded vocabulary) differs from the settings', which a resume must not hold against it.
    random_gpt2(vocab_size=hf.GPT2_VOCAB_SIZE, n_embd=32, n_layer=3, n_head=4).save_pretrained(tmp_path / "hf_in")
    args = ["--eval_interval=2", "--lr_decay_iters=4"]
    run(bpe_corpus, tmp_path / "straight", *args, f"--init_from={tmp_path / 'hf_in'}", "--max_iters=4")
    run(bpe_corpus, tmp_path / "stopped", *args, f"--init_from={tmp_path / 'hf_in'}", "--max_iters=2")
    run(bpe_corpus, tmp_path / "stopped", *args, "--init_from=resume", "--max_iters=4")
    ignore = ("elapsed_s", "tokens_per_sec")
    straight, resumed = ([{k: v for k, v in r.items() if k not in ignore} for r in read_log(tmp_path / d)]
                         for d in ("straight", "stopped"))
    assert [r["iter"] for r in resumed] == [0, 2, 4] and straight == resumed
