"""
Tuning: a new run that starts from another run's GPT (`--init_from=path/to/ckpt.pt`, nanoGPT's included) or from a
Hugging Face GPT-2 (`--init_from=gpt2`, or a save_pretrained folder: training/hf.py). The GPT's shape comes from the
checkpoint, its weights are loaded (a LoRA run's adapters merged in), its context is cropped to this run's block_size,
and a character model's token rows are moved onto the dataset's characters (a nanoGPT checkpoint records none: it
must have as many as the dataset, whose ids it then takes). The techniques' own modules start fresh around it,
except a planner the checkpoint already has (lm.initialise_techniques).
"""

import torch

import lm
from configurator import ConfigError
from training import checkpoint as ckpt
from training.hf import gpt2_checkpoint, is_hf_source


def load(s, meta, model_args, master=True):
    """The checkpoint to tune from, and model_args updated to its shape."""
    source = s["init_from"]
    checkpoint = gpt2_checkpoint(source) if is_hf_source(source) else ckpt.load(source)
    if checkpoint.get("nanogpt") and checkpoint["tokenizer"] == "char":
        checkpoint["vocab"] = ckpt.nanogpt_characters(checkpoint, meta)
    check_same_tokenizer(ckpt.vocab(checkpoint), meta)
    saved = checkpoint["model_args"]
    if s["block_size"] > saved["block_size"]:
        raise ConfigError(f"block_size {s['block_size']} is longer than the checkpoint's {saved['block_size']}: "
                          f"its position table has no rows for it")
    shape = {k: saved[k] for k in ckpt.MODEL_KEYS}
    if meta["tokenizer"] == "char":  # the dataset's characters; map_token_rows moves the learned rows
        shape["vocab_size"] = model_args["vocab_size"]
    depth = lm.depth_problem(s, saved["n_layer"])
    if depth:
        raise ConfigError(f"{depth} (n_layer is the checkpoint's)")
    if master:
        print(f"tuning {source}: model shape {shape} taken from the checkpoint")
    return checkpoint, {**model_args, **shape, "block_size": saved["block_size"]}


def load_weights(gpt, checkpoint, meta, block_size):
    """Put the checkpoint's GPT into gpt (a new GPT of the checkpoint's shape), then crop it to block_size."""
    weights = ckpt.gpt_weights(checkpoint)
    if meta["tokenizer"] == "char":
        weights = map_token_rows(weights, ckpt.vocab(checkpoint), meta, gpt.state_dict())
    gpt.load_state_dict(weights)
    gpt.crop_block_size(block_size)


def check_same_tokenizer(vocab, meta):
    """Tuning maps token rows between two vocabularies of one kind (map_token_rows); characters and BPE tokens share
    no rows."""
    if vocab["tokenizer"] != meta["tokenizer"]:
        raise ConfigError(f"the checkpoint's vocabulary ({describe(vocab)}) and that of dataset '{meta['dataset']}' "
                          f"({describe(meta)}) are of different kinds: tune on a dataset with the checkpoint's "
                          f"tokenizer (your own text: --tokenizer={vocab['tokenizer']})")


def describe(vocab):
    if vocab["tokenizer"] == "char":
        return f"the {vocab['vocab_size']} characters of {vocab['dataset']}"
    return f"GPT-2 BPE, {vocab['vocab_size']:,} tokens"


def map_token_rows(weights, vocab, meta, fresh):
    """The tuned GPT's weights with their token rows (the tied wte and lm_head) moved to the dataset's character ids:
    a character in both vocabularies keeps its learned row, a character new to the checkpoint keeps its row of
    `fresh` (a new GPT's state_dict, so it starts as in a model trained from scratch)."""
    pairs = [(i, vocab["stoi"][c]) for c, i in meta["stoi"].items() if c in vocab["stoi"]]
    new = sorted(set(meta["stoi"]) - set(vocab["stoi"]))
    if new or len(pairs) < len(vocab["stoi"]):
        print(f"tuning across vocabularies: {len(pairs)} of the dataset's {len(meta['stoi'])} characters keep "
              f"their learned rows; {len(new)} new ones start fresh ({''.join(new[:40])!r}); "
              f"{len(vocab['stoi']) - len(pairs)} of the checkpoint's are not in the dataset")
    rows = fresh["lm_head.weight"].clone()
    if pairs:
        new_ids, old_ids = torch.tensor(pairs).T
        rows[new_ids] = weights["lm_head.weight"][old_ids]
    return {**weights, "lm_head.weight": rows, "transformer.wte.weight": rows}
