"""
GPT-2 between this repository and Hugging Face transformers, both ways.

In: train.py's `--init_from=gpt2` (or gpt2-medium, gpt2-large, gpt2-xl, or a folder written by `save_pretrained`)
loads the weights with transformers and tunes them. Out: tools/export_gpt2.py writes a trained checkpoint as a
transformers GPT-2 folder (model and tokenizer), so that any tool that loads Hugging Face models can score it.

The two models have the same parameter names; only GPT-2's Conv1D layers store their matrices as (in, out) where
nn.Linear stores (out, in). transformers is optional: only these two paths need it (`pip install -r
requirements-dev.txt`).
"""

import os

from configurator import ConfigError

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

