"""
Write a trained checkpoint as a transformers GPT-2 folder (model and tokenizer), so that any tool that loads Hugging
Face models can score it (training/hf.py maps the weights, both ways):

    python -m tools.export_gpt2 --out_dir=out-tune --to=out-tune/hf
"""

import os
import shutil
import sys
import tempfile

import torch

from configurator import ConfigError, configure
from data.vocabulary import TOKENIZER_DIR, gpt2_encoding
from training import checkpoint as ckpt
from training.hf import GPT2_VOCAB_SIZE, import_transformers, swap_conv1d


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
