"""
Generate text from a checkpoint of train.py, with whichever techniques it was trained with, or from OpenAI's GPT-2
or a checkpoint of nanoGPT's train.py.

    python sample.py                                   # from out/ckpt.pt, three samples
    python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
    python sample.py --out_dir=out-wiki --start="The history of" --num_samples=1 --max_new_tokens=200
    python sample.py --start=FILE:prompt.txt --temperature=0
"""

import sys
import time

import torch

from configurator import ConfigError, configure, is_setting
from data.vocabulary import document_start, get_codec
from lm import load_language_model
from training import checkpoint as ckpt, devices, hf
from training.replanner import plan_data_of

# -----------------------------------------------------------------------------
# what to sample: 'resume' (out_dir/ckpt.pt), a checkpoint's path (nanoGPT's too), OpenAI's GPT-2 ('gpt2',
# 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a folder written by transformers' save_pretrained (training/hf.py)
init_from = "resume"
out_dir = "out"  # init_from='resume' samples out_dir/ckpt.pt
start = ""  # the prompt, or FILE:path to read it from a file; empty starts a new document
num_samples = 3
max_new_tokens = 300
temperature = 0.8  # 0 is greedy decoding
top_k = 200  # sample among the k most likely tokens; 0 keeps them all
seed = 1337
use_cache = True  # the KV cache; False recomputes the whole context at every step (same tokens, slower)
device = "auto"
dtype = "auto"
# -----------------------------------------------------------------------------
SETTINGS = {k: v for k, v in globals().items() if is_setting(k, v)}


def main(argv):
    """Print samples with the settings above, overridden by argv (a copy: the defaults stay for the next call)."""
    s = dict(SETTINGS)
    configure(s, argv, help_from=__file__)
    if s["num_samples"] < 1 or s["max_new_tokens"] < 1 or s["temperature"] < 0 or s["top_k"] < 0:
        raise ConfigError("num_samples and max_new_tokens must be at least 1, temperature and top_k at least 0")
    checkpoint = load(s["init_from"], s["out_dir"])
    run_device = devices.pick_device(s["device"])
    _, autocast = devices.pick_precision(run_device.split(":")[0], s["dtype"])
    model = load_language_model(checkpoint, run_device)
    meta = ckpt.vocab(checkpoint)
    plan_data = plan_data_of(checkpoint["config"]) if model.plan is not None else None
    encode, decode = get_codec(meta)
    prompt = read_prompt(s["start"], meta)
    idx = torch.tensor([encode(prompt)], dtype=torch.long, device=run_device)
    if idx.size(1) >= model.gpt.config.block_size:
        keep = model.gpt.config.block_size - 1  # the model only ever sees its last block_size tokens
        print(f"note: the prompt has {idx.size(1)} tokens, more than the model reads (block_size "
              f"{model.gpt.config.block_size}); it is cut to its last {keep}", file=sys.stderr)
        idx = idx[:, -keep:]
    torch.manual_seed(s["seed"])
    for _ in range(s["num_samples"]):
        t0 = time.time()
        with autocast:
            out = model.generate(idx, s["max_new_tokens"], s["temperature"], s["top_k"] or None, s["use_cache"],
                                 plan_data, meta)
        print(decode(out[0].tolist()))
        print(f"---------------- {s['max_new_tokens'] / (time.time() - t0):.0f} tokens/s")


def load(init_from, out_dir):
    if init_from == "resume":
        return ckpt.load(f"{out_dir}/ckpt.pt", fix="train first (python train.py), or point out_dir at a run's folder")
    if hf.is_hf_source(init_from):
        return hf.gpt2_checkpoint(init_from)
    return ckpt.load(init_from, fix=f"init_from is 'resume' (out_dir/ckpt.pt), a checkpoint's path, one of "
                                    f"{', '.join(hf.GPT2_NAMES)} or a folder written by save_pretrained")


def read_prompt(text, meta):
    if text.startswith("FILE:"):
        with open(text[len("FILE:"):], encoding="utf-8") as f:
            text = f.read()
    return text or document_start(meta)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:  # our messages name the problem and the fix
        sys.exit(f"error: {e}")
