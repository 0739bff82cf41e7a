"""nanoGPT's own files work here: its config files, its prepared data folders (after one command) and its ckpt.pt.
Every file is made here in nanoGPT's format (written from the format, not from nanoGPT's code)."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import sample
import train
from configurator import ConfigError
from data import prepare
from data.dataset import load_meta, load_texts
from data.vocabulary import gpt2_encoding
from tools import from_nanogpt
from training.plot import read_log

ROOT = Path(train.__file__).resolve().parent
TINY = [train.PLAIN_CONFIG, "--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--sample_tokens=0", "--log_interval=1",
        "--compile=False"]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30


def nanogpt_char_folder(path, text=TEXT):
    """What nanoGPT's shakespeare_char/prepare.py leaves: the first 90% of the text's ids in train.bin, the rest in
    val.bin, and meta.pkl with the sorted characters."""
    path.mkdir()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    ids[:cut].tofile(path / "train.bin")
    ids[cut:].tofile(path / "val.bin")
    with open(path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return path


def one_command(folder):
    return subprocess.run([sys.executable, "-m", "tools.from_nanogpt", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_nanogpt_config_runs_with_one_note_for_each_setting_it_has_no_use_for(corpus, tmp_path, capsys):
    config = tmp_path / "train_shakespeare_char.py"
    config.write_text(f"import time\nout_dir = {str(tmp_path / 'out')!r}\neval_interval = 1\n"
                      f"always_save_checkpoint = False\nbackend = 'nccl'\nwandb_run_name = 'ft-' + str(time.time())\n"
                      f"dataset = {corpus!r}\nmax_iters = 1\n")
    args = [*TINY, str(config), "--always_save_checkpoint=True"]
    # Accepted, and changing nothing: the settings are those of the same config without nanoGPT's own lines.
    plain = tmp_path / "plain.py"
    plain.write_text("\n".join(line for line in config.read_text().splitlines()
                               if not line.startswith(("always_save", "backend"))))
    assert {**train.settings_from(args), "wandb_run_name": ""} == \
           {**train.settings_from([*TINY, str(plain)]), "wandb_run_name": ""}
    capsys.readouterr()
    train.main(args)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 2  # once each, though always_save_checkpoint is set twice
    assert "always_save_checkpoint" in notes[0] and "every evaluation writes out_dir/ckpt.pt" in notes[0]
    assert "backend" in notes[1] and "nccl on CUDA" in notes[1]
    assert (tmp_path / "out" / "ckpt.pt").is_file()
    with pytest.raises(ConfigError, match="unknown setting 'always_save_checkpoints'"):
        train.settings_from([*TINY, "--always_save_checkpoints=True"])  # a typo of one is still a typo


def test_a_nanogpt_char_folder_is_used_after_one_command(tmp_path, monkeypatch):
    folder = nanogpt_char_folder(tmp_path / "shakespeare_char")
    tokens = (folder / "train.bin").read_bytes()
    with pytest.raises(ValueError, match=r"nanoGPT prepared.*python -m tools.from_nanogpt"):
        train.main([*TINY, f"--dataset={folder}", f"--out_dir={tmp_path / 'refused'}"])
    done = one_command(folder)
    assert done.returncode == 0, done.stderr
    meta = load_meta(folder)
    assert (folder / "train.bin").read_bytes() == tokens and (folder / "meta.pkl").is_file()  # nanoGPT still reads it
    assert meta["itos"] == dict(enumerate(sorted(set(TEXT))))
    assert meta["n_tokens"]["val"] == len(TEXT) - len(tokens) // 2
    assert load_texts(folder, "train")[:] + load_texts(folder, "val")[:] == [TEXT[:len(tokens) // 2],
                                                                             TEXT[len(tokens) // 2:]]
    # nanoGPT names it by its folder in data/, as dataset = 'shakespeare_char' does; the built-in name is taken here.
    monkeypatch.setattr(prepare, "DATA_ROOT", tmp_path)
    (tmp_path / "shakespeare_char").rename(tmp_path / "nano_char")
    trainer = train.main([*TINY, "--dataset=nano_char", f"--out_dir={tmp_path / 'out'}", "--max_iters=4",
                          "--eval_interval=4"])
    assert trainer.data_dir == tmp_path / "nano_char" and read_log(tmp_path / "out")[-1]["iter"] == 4


def test_a_crafted_meta_pkl_is_refused_without_running(tmp_path):
    folder = nanogpt_char_folder(tmp_path / "crafted")
    marker = tmp_path / "it_ran"

    class Crafted:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "meta.pkl").write_bytes(pickle.dumps(Crafted()))
    done = one_command(folder)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "names a Python object (posix.system)" in done.stderr and "it is not read" in done.stderr
    assert not marker.exists() and not (folder / "meta.json").exists()
    pickle.loads((folder / "meta.pkl").read_bytes())  # what a plain pickle.load would have done
    assert marker.exists()


def test_a_nanogpt_gpt2_folder_gets_the_gpt2_tokenizer_and_its_documents_between_eots(tmp_path):
    enc = gpt2_encoding()
    docs = ["Hello world.", "The quick brown fox.", ""]
    folder = tmp_path / "openwebtext"
    folder.mkdir()
    ids = [t for doc in docs for t in enc.encode_ordinary(doc) + [enc.eot_token]]  # openwebtext: EOT after each
    np.array(ids * 10, dtype=np.uint16).tofile(folder / "train.bin")
    np.array(enc.encode_ordinary("No EOT at all, as in shakespeare."), dtype=np.uint16).tofile(folder / "val.bin")
    with pytest.raises(ValueError, match=r"GPT-2 BPE folder nanoGPT prepared.*tools.from_nanogpt"):
        load_meta(folder)
    meta = from_nanogpt.convert(folder)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == ("gpt2", 50257, 50256)
    assert load_texts(folder, "train")[:] == docs * 10
    assert load_texts(folder, "val")[:] == ["No EOT at all, as in shakespeare."]
    assert load_meta(folder) == meta


@pytest.fixture(scope="module")
def source_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    return train.main([*TINY, f"--dataset={corpus}", f"--out_dir={out}", "--max_iters=3", "--eval_interval=3"])


def nanogpt_checkpoint(gpt, path, dataset):
    """gpt saved as nanoGPT's train.py saves a compiled run: bare model.py names under '_orig_mod.', the tied head
    under both its names, and the causal-mask buffers of its readable attention."""
    model = {f"_orig_mod.{k}": v for k, v in gpt.state_dict().items()}
    T = gpt.config.block_size
    for i in range(gpt.config.n_layer):
        model[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    c = gpt.config
    torch.save({"model": model, "optimizer": {}, "iter_num": 60, "best_val_loss": torch.tensor(1.5),
                "model_args": dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                                   bias=c.bias, vocab_size=c.vocab_size, dropout=0.0),
                "config": {"dataset": dataset, "always_save_checkpoint": False, "backend": "nccl"}}, path)
    return str(path)


def test_a_nanogpt_checkpoint_tunes_from_the_same_function_and_samples(source_run, corpus, tmp_path, capsys):
    path = nanogpt_checkpoint(source_run.model.gpt, tmp_path / "ckpt.pt", corpus)
    tuned = train.main([*TINY, f"--dataset={corpus}", f"--out_dir={tmp_path / 'tune'}", f"--init_from={path}",
                        "--max_iters=0", "--n_layer=4"])
    assert tuned.model.gpt.config.n_layer == 2  # the checkpoint's shape
    idx = torch.randint(0, source_run.model.gpt.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(tuned.model.gpt(idx)[0], source_run.model.gpt.eval()(idx)[0], atol=0, rtol=0)
    n = source_run.model.gpt.config.vocab_size
    assert f"its {n} ids are taken to be those of dataset 'tiny', which has as many" in capsys.readouterr().err
    sample.main([f"--init_from={path}", "--device=cpu", "--num_samples=1", "--max_new_tokens=20", "--start=the"])
    out = capsys.readouterr()
    assert out.out.startswith("the") and "ids are taken to be those of its dataset" in out.err
    other = tmp_path / "other"
    other.mkdir()
    nanogpt_char_folder(other / "chars", text="abc\n" * 100)
    from_nanogpt.convert(other / "chars")
    with pytest.raises(ConfigError, match=f"has {n} token ids and does not record which characters.*has 4 char"):
        train.main([*TINY, f"--dataset={other / 'chars'}", f"--out_dir={tmp_path / 'x'}", f"--init_from={path}"])


def test_sample_takes_a_gpt2_folder_as_nanogpt_sample_takes_gpt2(tmp_path, capsys):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    sample.main([f"--init_from={tmp_path / 'gpt2-tiny'}", "--device=cpu", "--num_samples=1", "--max_new_tokens=8",
                 "--start=Hello world", "--temperature=0", "--compile=False"])
    out = capsys.readouterr()
    prompt = torch.tensor([gpt2_encoding().encode("Hello world")])
    greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                         pad_token_id=0)
    assert out.out.startswith(gpt2_encoding().decode(greedy[0].tolist()) + "\n----")
    assert "compile (from '--compile=False') is nanoGPT's setting" in out.err
