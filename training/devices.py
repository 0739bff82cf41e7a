"""
Where a run computes: the lines that differ on a GPU, kept together so that tests can hold each to torch's own
contract on a machine without one (tests/test_devices.py drives them through a stand-in for torch.cuda).

The processes of a DDP run: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment.
"""

import datetime
import importlib.util
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from configurator import ConfigError
from model import estimate_mfu

# Rank 0 prepares the data, the n-gram targets and the sentence labels while the other ranks wait; on a large corpus
# that takes hours (the n-gram build of OpenWebText about 50 minutes), far past the process group's default timeout
# (10 minutes for NCCL), which is right for a training step. So the waiting happens in a group of its own.
PREPARATION_TIMEOUT = datetime.timedelta(hours=24)


def processes():
    """(ddp, rank, world size, local rank) of this process, from the environment torchrun sets."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 1, 0
    return True, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def join_processes(device, accumulation_steps):
    """Join the run's process group, on the backend of this process's device: NCCL for CUDA tensors, gloo for CPU
    ones (a CPU run on a GPU machine included). Returns the group rank_zero_first waits in."""
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    world = dist.get_world_size()
    if accumulation_steps % world:
        raise ConfigError(f"gradient_accumulation_steps ({accumulation_steps}) must be a multiple of the number of "
                          f"processes ({world}): each process runs an equal share of the micro-batches")
    return dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)


def rank_zero_first(preparation_group, rank, build):
    """Run build on rank 0 before the other ranks, so that they read the cache it writes (data, n-gram targets,
    sentence labels) instead of all building it at once. preparation_group is None outside DDP."""
    if preparation_group is not None and rank != 0:
        dist.barrier(group=preparation_group)
    result = build()
    if preparation_group is not None and rank == 0:
        dist.barrier(group=preparation_group)
    return result


def pick_device(requested="auto", local_rank=None):
    """'auto' means CUDA (this process's GPU under DDP), then Apple's MPS, then the CPU. A named device must exist
    here: torch's own message for a missing one is about device indices or a build option. A CUDA device always
    comes back with its index, which torch.cuda.set_device requires."""
    if requested == "auto":
        if torch.cuda.is_available():
            return f"cuda:{local_rank or 0}"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        named = torch.device(requested)
    except RuntimeError:
        named = None
    if named is None or named.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device '{requested}': use auto, cpu, cuda, cuda:N or mps")
    present = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
               "mps": int(torch.backends.mps.is_available())}[named.type]
    if (named.index or 0) >= present:
        raise ValueError(f"device '{requested}' is not on this machine ({present} {named.type} device(s) found): "
                         f"use --device=auto, which picks the best one present, or --device=cpu")
    if named.type == "cuda" and named.index is None:  # under DDP each process takes its own GPU
        return f"cuda:{local_rank or 0}"
    return requested


def use_device(device):
    """Make a CUDA device this process's current one (kernels, NCCL and the autocast default follow it) and let
    float32 matmuls use TF32 tensor cores."""
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def pick_precision(device_type, requested="auto"):
    """The compute dtype's name and the autocast context that applies it. 'auto' is bfloat16 on CUDA GPUs that
    have it in hardware (compute capability 8.0 and up), float16 on older ones (train.py then scales the loss: a
    T4 or V100 would otherwise run bfloat16 by slow emulation), and float32 elsewhere: on CPUs bfloat16 autocast
    exists but is rarely faster for models this small."""
    dtype = requested
    if dtype == "auto":
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            dtype = "float32"
    if dtype == "float32":
        return dtype, nullcontext()
    return dtype, torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def grad_scaler(device_type, dtype, saved_state=None):
    """The loss scaler: float16 gradients underflow without it; bfloat16 has float32's range and needs none. A
    scaler saved while disabled (a float32 or bfloat16 run resumed in float16) has an empty state, which torch
    refuses to load: this run's scaler then starts afresh."""
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    if saved_state:
        scaler.load_state_dict(saved_state)
    return scaler


def compiles_by_default(device_type):
    """torch.compile is worth its start-up on CUDA, where Inductor needs Triton (absent on Windows, for one)."""
    return device_type == "cuda" and importlib.util.find_spec("triton") is not None


def to_device(t, device):
    """A batch's CPU tensor on the device; on CUDA through pinned memory, so the copy overlaps the GPU's work."""
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def mfu(gpt, tokens_per_sec, world, device):
    """Model FLOPs utilisation of one GPU: tokens_per_sec counts every process's tokens, the peak is one GPU's.
    None off CUDA and on GPUs whose peak model.py does not know."""
    if not device.startswith("cuda"):
        return None
    return estimate_mfu(gpt, tokens_per_sec / world, torch.cuda.get_device_name(device))
