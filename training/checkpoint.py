"""
Checkpoints of train.py in one place: what one holds, how it is written and read, and when a resume may continue it.

A checkpoint is a dict of tensors and plain values (no pickled objects), so it loads with torch's safe unpickler:
    model, model_args, config (the run's settings), iter_num, tokenizer and vocab (so it can be sampled without its
    data), data (the checksums of the token files it trained on), and in ckpt.pt, which a resume continues, also
    optimizer, scaler, best_val_loss, elapsed_s and log_record (the evaluation it was written at). best.pt
    (keep_best) holds the weights only.
Older checkpoints lack some keys; `vocab` falls back to what they do name. A checkpoint of nanoGPT's train.py is
read as one of this repository's plain GPT (from_nanogpt).
"""

import os
import pickle
import re
import sys

import torch

from configurator import ConfigError
from data.dataset import load_meta
from data.files import write_atomically
from data.vocabulary import vocabulary
from data.prepare import ensure_prepared
from training.hf import GPT2_VOCAB_SIZE
from training.lora import merge_lora

# Settings that fix what the checkpoint's weights mean: resuming with different ones would be a different run.
# batch_size, gradient_accumulation_steps and seed fix the batches and random draws an exact resume replays.
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "bias", "vocab_size")
RUN_KEYS = ("dataset", "block_size", "batch_size", "gradient_accumulation_steps", "seed", "base", "lora_rank",
            "lora_alpha", "lora_targets", "train_ln_f", "label_smoothing", "ngram_mode", "ngram_n", "ngram_r",
            "ngram_alpha", "mod_k", "mod_lambda", "mod_distill_frac", "mod_router_entropy", "plan_mode", "plan_k",
            "plan_context", "plan_tau", "plan_lambda", "plan_embedder", "plan_seed")


def state(trainer, run, record, resumable=True):
    """What a checkpoint of the trainer's run holds now (run: train.py's loop state, record: this evaluation's log
    line): the weights and what reads them, and, when resumable, everything a resume continues from."""
    weights = {"model": trainer.model.state_dict(), "model_args": trainer.model_args, "config": trainer.s,
               "iter_num": run["iter_num"], "tokenizer": trainer.meta["tokenizer"], "vocab": trainer.vocab,
               "data": data_identity(trainer.meta)}
    if not resumable:
        return {**weights, "val_loss": record["val_loss"]}
    return {**weights, "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(),
            "best_val_loss": run["best_val_loss"], "elapsed_s": run["elapsed_s"], "log_record": record}


def save(path, checkpoint):
    """Write a checkpoint atomically. A failed write (a full disk, a folder gone read-only) keeps the previous
    checkpoint and stops the run with one line; so does Ctrl-C while it writes."""
    try:
        write_atomically(path, lambda f: torch.save(checkpoint, f))
    except (OSError, RuntimeError) as e:
        # torch.save's zip writer turns what its file raised (an OSError, or Ctrl-C's KeyboardInterrupt) into a
        # RuntimeError, the original kept as its context
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if not isinstance(cause, OSError):
            raise
        raise OSError(f"cannot write the checkpoint to {path}: {(cause.strerror or str(cause)).lower()}; the "
                      f"previous checkpoint is kept: free space or fix the folder, then --init_from=resume") from None


def load(path, fix="train first, or point init_from at an existing file"):
    """A checkpoint of train.py, read with torch's safe unpickler (weights_only: tensors and plain values, never
    code); fix says how the caller's settings point at another one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the safe unpickler met an object: a foreign or crafted file
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise ValueError(f"checkpoint {path} holds a Python object ({found.group(1) if found else 'not a tensor'}), "
                         f"which a checkpoint of this repository never does: it is not loaded, since loading it "
                         f"could run its code") from None
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is truncated or not a "
                         f"checkpoint of this repository; resume from an earlier copy or train again") from None
    return from_nanogpt(checkpoint) if is_nanogpt(checkpoint) else checkpoint


def is_nanogpt(checkpoint):
    """nanoGPT's GPT is this repository's model.py GPT, saved bare: 'transformer.*' where this one saves 'gpt.*'."""
    return "transformer.wte.weight" in {k.removeprefix("_orig_mod.") for k in checkpoint.get("model", {})}


def from_nanogpt(saved):
    """A checkpoint of nanoGPT's train.py as one of this repository's plain GPT: its weights under 'gpt.', less a
    compiled run's '_orig_mod.' prefix and the causal-mask buffers of nanoGPT's readable attention (model.py makes
    its mask as it goes); the tied head is saved under both its names, as here. Its settings are the plain GPT's,
    but for its dataset's name. It records no vocabulary: one of GPT-2's size is GPT-2 BPE, a smaller one
    characters, whose ids only the dataset it was trained on knows (vocab, nanogpt_characters)."""
    weights = {"gpt." + k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()
               if not k.endswith(".attn.bias")}
    model_args = {k: saved["model_args"][k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias",
                                                      "vocab_size")}
    config = saved.get("config", {})
    return {"model": weights, "model_args": model_args, "config": {"dataset": config["dataset"]} if "dataset" in config
            else {}, "iter_num": saved.get("iter_num", 0), "nanogpt": True,
            "tokenizer": "gpt2" if model_args["vocab_size"] >= GPT2_VOCAB_SIZE else "char"}


def nanogpt_characters(checkpoint, meta):
    """The vocabulary of nanoGPT's character checkpoint when tuned on the dataset meta: the dataset's characters, the
    only ones at hand, which are the checkpoint's when it has as many (nanoGPT numbers a text's sorted characters)."""
    n = checkpoint["model_args"]["vocab_size"]
    if meta["tokenizer"] != "char" or meta["vocab_size"] != n:
        raise ConfigError(f"the nanoGPT checkpoint has {n} token ids and does not record which characters they "
                          f"are; dataset '{meta['dataset']}' has {describe_vocab(meta)}: tune it on the dataset it "
                          f"was trained on (nanoGPT's folder, after python -m tools.from_nanogpt <folder>)")
    print(f"note: the nanoGPT checkpoint does not record its characters: its {n} ids are taken to be those of "
          f"dataset '{meta['dataset']}', which has as many", file=sys.stderr)
    return vocabulary(meta)


def describe_vocab(meta):
    return f"{meta['vocab_size']} characters" if meta["tokenizer"] == "char" else "the GPT-2 BPE"


def check_same_run(checkpoint, settings):
    """Resuming continues one run: the settings that shape the weights and the data must be the checkpoint's
    settings. (Its model shape can differ from them: a tuned run took it from init_from. vocab_size is no setting:
    the dataset fixes it.)"""
    saved = checkpoint["config"]
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {settings[k]!r}" for k in MODEL_KEYS + RUN_KEYS
              if k in settings and saved.get(k) != settings[k]]
    if differ:
        raise ConfigError("cannot resume: the checkpoint comes from another configuration (" + "; ".join(differ)
                          + "). Pass the same config file and overrides as the original run, or continue its weights "
                          "as a new run in a new out_dir with --init_from=<its ckpt.pt>")


def data_identity(meta):
    """What identifies a dataset's tokens: the checksums of its token files, which its meta.json records."""
    return {name: meta["files"][name]["crc32"] for name in ("train.bin", "val.bin")}


def check_same_data(checkpoint, meta):
    """Resuming continues one run on the same data: the same vocabulary (a character's id is its learned row) and
    the same tokens (an edited text, prepared again, is another dataset under the same --dataset name)."""
    fix = ("to go on from its weights on this data, start a new run in a new out_dir with --init_from=<its ckpt.pt> "
           "(tuning moves the rows of the characters both share)")
    saved = checkpoint.get("vocab")
    if saved is not None and (saved["tokenizer"], saved["stoi"]) != (meta["tokenizer"], meta["stoi"]):
        raise ConfigError(f"cannot resume: the dataset's vocabulary is not the checkpoint's "
                          f"({vocabulary_change(saved, meta)}); {fix}")
    if "data" in checkpoint and checkpoint["data"] != data_identity(meta):
        changed = [name for name, crc in data_identity(meta).items() if checkpoint["data"].get(name) != crc]
        raise ConfigError(f"cannot resume: the dataset's tokens are not those the checkpoint trained on "
                          f"({' and '.join(changed)} changed: the text was edited, or prepared again differently); "
                          f"{fix}")


def vocabulary_change(saved, meta):
    if saved["tokenizer"] != meta["tokenizer"]:
        return f"{saved['tokenizer']} then, {meta['tokenizer']} now"
    new, gone = sorted(set(meta["stoi"]) - set(saved["stoi"])), sorted(set(saved["stoi"]) - set(meta["stoi"]))
    return (f"{len(saved['stoi'])} characters then, {len(meta['stoi'])} now; new: {''.join(new)!r}, gone: "
            f"{''.join(gone)!r}")


def gpt_weights(checkpoint):
    """The plain GPT a checkpoint stands for: its 'gpt.*' weights, with a LoRA run's adapters merged into them."""
    weights = strip_prefix(checkpoint["model"], "gpt.")
    adapters = strip_prefix(checkpoint["model"], "lora.")
    if adapters:
        weights = merge_lora(weights, adapters, checkpoint["config"]["lora_alpha"] / checkpoint["config"]["lora_rank"])
    return weights


def strip_prefix(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def vocab(checkpoint):
    """The vocabulary a checkpoint was trained with (a meta for data.vocabulary.get_codec). Checkpoints carry it; older
    ones name only their tokenizer, all that GPT-2 BPE needs, and their dataset, which a character one reads."""
    if "vocab" in checkpoint:
        return checkpoint["vocab"]
    if checkpoint.get("tokenizer") == "gpt2":
        return {"dataset": "GPT-2 BPE", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256, "stoi": None,
                "itos": None}
    config = checkpoint["config"]
    if "dataset" not in config:
        raise ValueError(f"the checkpoint names neither its vocabulary nor its dataset (its tokenizer: "
                         f"{checkpoint.get('tokenizer')!r}): it cannot be decoded or tuned here")
    why = ("this nanoGPT checkpoint does not record its vocabulary" if checkpoint.get("nanogpt") else
           "this checkpoint predates checkpoints that carry their vocabulary")
    try:
        meta = load_meta(ensure_prepared(config["dataset"], config.get("tokenizer", "char")))
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{why}, and its dataset '{config['dataset']}' cannot be read ({e}): put the dataset back, "
                         f"or train it again") from None
    n = checkpoint["model_args"]["vocab_size"]
    if meta["tokenizer"] == "char" and meta["vocab_size"] != n:
        raise ValueError(f"{why}, and its dataset '{config['dataset']}' here has {describe_vocab(meta)}, not the "
                         f"checkpoint's {n} ids: put the dataset it was trained on there")
    if checkpoint.get("nanogpt") and meta["tokenizer"] == "char":
        print(f"note: the nanoGPT checkpoint does not record its characters: its {n} ids are taken to be those of "
              f"its dataset '{config['dataset']}' here", file=sys.stderr)
    return vocabulary(meta)
