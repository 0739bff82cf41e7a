"""
GPT-2 between this repository and Hugging Face transformers, both ways.

In: train.py's `--init_from=gpt2` (or gpt2-medium, gpt2-large, gpt2-xl, or a folder written by `save_pretrained`)
loads the weights with transformers and tunes them. Out: this file, run as a script, writes a trained checkpoint as
a transformers GPT-2 folder (model and tokenizer), so that any tool that loads Hugging Face models can score it:

    python hf.py --out_dir=out-tune --to=out-tune/hf

The two models have the same parameter names; only GPT-2's Conv1D layers store their matrices as (in, out) where
nn.Linear stores (out, in). transformers is optional: only these two paths need it (`pip install -r
requirements-dev.txt`).
"""

import os
import shutil
import sys
import tempfile

import torch

import checkpoint as ckpt
from configurator import ConfigError, configure
from data.vocabulary import TOKENIZER_DIR, gpt2_encoding

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_VOCAB_SIZE = 50257
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_hf_source(init_from):
    return init_from in GPT2_NAMES or os.path.isdir(init_from)


def swap_conv1d(state_dict):
    """transformers' GPT-2 weights as model.py's, or back: transpose the Conv1D matrices, keep the rest."""
    return {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in state_dict.items()}


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face GPT-2 needs transformers: pip install -r requirements-dev.txt") from None
    transformers.logging.set_verbosity_error()  # its warnings about unused generation settings are noise here
    return transformers


def gpt2_checkpoint(source):
    """A Hugging Face GPT-2 (a model name or a save_pretrained folder) as a checkpoint of this repository, the part
    that train.py's init_from reads: model_args, the GPT's weights under 'gpt.' and the tokenizer's name. The
    vocabulary stays at GPT-2's 50257 rows: a padded row would be an output token GPT-2 never learned to push
    down, taking probability from the real ones."""
    transformers = import_transformers()
    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(source)
    except OSError as e:
        if os.path.isdir(source):
            raise ConfigError(f"cannot load folder {source} as a GPT-2 ({str(e).splitlines()[0]}): pass a folder "
                              f"written by save_pretrained, or the path of a checkpoint (its ckpt.pt)") from None
        raise ConfigError(f"cannot load '{source}' from the Hugging Face hub: {str(e).splitlines()[0]} Without "
                          f"internet, load it once where there is (GPT2LMHeadModel.from_pretrained('{source}')"
                          f".save_pretrained('folder')), copy the folder here and pass --init_from=folder") from None
    c = hf.config
    as_model_py = {"model_type": c.model_type == "gpt2",
                   "activation_function": c.activation_function in ("gelu_new", "gelu_pytorch_tanh"),
                   "n_inner": c.n_inner in (None, 4 * c.n_embd),
                   "layer_norm_epsilon": c.layer_norm_epsilon == 1e-5,
                   "scale_attn_weights": c.scale_attn_weights,
                   "scale_attn_by_inverse_layer_idx": not c.scale_attn_by_inverse_layer_idx}
    unlike = [name for name, same in as_model_py.items() if not same]
    if unlike:
        raise ConfigError(f"{source} is not the GPT-2 that model.py computes: its config differs in "
                          f"{', '.join(unlike)}")
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                      block_size=c.n_positions, bias=True)
    tokenizer = "gpt2" if c.vocab_size == GPT2_VOCAB_SIZE else f"unknown ({c.vocab_size} tokens)"
    weights = {"gpt." + k: v for k, v in swap_conv1d(hf.state_dict()).items()}
    return {"model": weights, "model_args": model_args, "config": {}, "tokenizer": tokenizer}


# -----------------------------------------------------------------------------
out_dir = "out"  # export out_dir/ckpt.pt
to = ""  # the folder to write; empty: out_dir/hf
# -----------------------------------------------------------------------------


def main(argv):
    """Write out_dir/ckpt.pt as a transformers GPT-2 folder; returns the folder."""
    s = {"out_dir": out_dir, "to": to}
    configure(s, argv, help_from=__file__)
    folder = s["to"] or os.path.join(s["out_dir"], "hf")
    if os.path.exists(folder):
        raise ConfigError(f"{folder} exists: remove it or pass another --to")
    checkpoint = ckpt.load(os.path.join(s["out_dir"], "ckpt.pt"), fix="train first, or point out_dir at a run's folder")
    techniques = sorted({k.split(".")[0] for k in checkpoint["model"]} - {"gpt", "lora"})
    if techniques:
        raise ConfigError(f"{s['out_dir']} was trained with {' and '.join(techniques)}, which change the model's "
                          f"forward; only the plain GPT is a GPT-2 (a LoRA run's adapters are merged on export)")
    if checkpoint.get("tokenizer") != "gpt2":
        raise ConfigError(f"{s['out_dir']} was trained on the '{checkpoint.get('tokenizer')}' tokenizer; GPT-2 tools "
                          f"read token ids as GPT-2 BPE: export only models trained on a GPT-2 BPE dataset")
    transformers = import_transformers()
    args = checkpoint["model_args"]
    config = transformers.GPT2Config(vocab_size=GPT2_VOCAB_SIZE, n_positions=args["block_size"],
                                     n_embd=args["n_embd"], n_layer=args["n_layer"], n_head=args["n_head"],
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(config)
    weights = swap_conv1d(ckpt.gpt_weights(checkpoint))
    # The rows past GPT-2's vocabulary only padded the matrix for speed; no token has their ids.
    for name in ("transformer.wte.weight", "lm_head.weight"):
        weights[name] = weights[name][:GPT2_VOCAB_SIZE]
    for name, p in hf.state_dict().items():  # a model trained with bias=False has zero biases
        weights.setdefault(name, torch.zeros_like(p))
    hf.load_state_dict(weights)
    gpt2_encoding()  # makes sure GPT-2's vocabulary files are in TOKENIZER_DIR
    tokenizer = transformers.GPT2Tokenizer(vocab=str(TOKENIZER_DIR / "encoder.json"),
                                           merges=str(TOKENIZER_DIR / "vocab.bpe"))
    # A fresh temporary folder beside the export, renamed into place when whole: an earlier export that died
    # half-way leaves nothing in it.
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", suffix=".tmp", dir=os.path.dirname(folder) or ".")
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # so that tools load model and tokenizer from one folder
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {folder}: load it with transformers' GPT2LMHeadModel.from_pretrained('{folder}') and "
          f"AutoTokenizer.from_pretrained('{folder}')")
    return folder


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
