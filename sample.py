"""
Generate text from a checkpoint of train.py, with whichever techniques it was trained with.

    python sample.py                                   # from out/ckpt.pt, three samples
    python sample.py --out_dir=out-wiki --start="The history of" --num_samples=1 --max_new_tokens=200
    python sample.py --start=FILE:prompt.txt --temperature=0
"""

import sys
import time

import torch

from configurator import ConfigError, configure
from data.common import document_start, ensure_prepared, get_codec, load_meta
from lm import load_checkpoint, load_language_model, pick_device, pick_precision

# -----------------------------------------------------------------------------
out_dir = "out"  # sample from out_dir/ckpt.pt
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


def main(argv):
    configure(globals(), argv)
    if num_samples < 1 or max_new_tokens < 1 or temperature < 0 or top_k < 0:
        raise ConfigError("num_samples and max_new_tokens must be at least 1, temperature and top_k at least 0")
    checkpoint = load_checkpoint(f"{out_dir}/ckpt.pt")
    run_device = pick_device(device)
    _, autocast = pick_precision(run_device.split(":")[0], dtype)
    model = load_language_model(checkpoint, run_device)
    meta = load_meta(ensure_prepared(checkpoint["config"]["dataset"]))
    encode, decode = get_codec(meta)
    prompt = read_prompt(start, meta)
    idx = torch.tensor([encode(prompt)], dtype=torch.long, device=run_device)
    if idx.size(1) >= model.gpt.config.block_size:
        keep = model.gpt.config.block_size - 1  # the model only ever sees its last block_size tokens
        print(f"note: the prompt has {idx.size(1)} tokens, more than the model reads (block_size "
              f"{model.gpt.config.block_size}); it is cut to its last {keep}", file=sys.stderr)
        idx = idx[:, -keep:]
    torch.manual_seed(seed)
    for _ in range(num_samples):
        t0 = time.time()
        with autocast:
            out = model.generate(idx, max_new_tokens, temperature, top_k or None, use_cache)
        print(decode(out[0].tolist()))
        print(f"---------------- {max_new_tokens / (time.time() - t0):.0f} tokens/s")


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
