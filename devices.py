"""
Where a run computes: its device, its precision, and the processes of a DDP run (torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK in each process's environment).
"""

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from configurator import ConfigError


def init_processes(accumulation_steps):
    """(ddp, rank, world size, local rank) of this process, joining the process group under torchrun (NCCL on
    CUDA, gloo on the CPU)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 1, 0
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if accumulation_steps % world:
        raise ConfigError(f"gradient_accumulation_steps ({accumulation_steps}) must be a multiple of the number of "
                          f"processes ({world}): each process runs an equal share of the micro-batches")
    return True, rank, world, int(os.environ["LOCAL_RANK"])


def rank_zero_first(ddp, rank, build):
    """Run build on rank 0 before the other ranks, so that they read the cache it writes (data, n-gram targets,
    sentence labels) instead of all building it at once."""
    if ddp and rank != 0:
        dist.barrier()
    result = build()
    if ddp and rank == 0:
        dist.barrier()
    return result


def pick_device(requested="auto", local_rank=None):
    """'auto' means CUDA (this process's GPU under DDP), then Apple's MPS, then the CPU. A named device must exist
    here: torch's own message for a missing one is about device indices or a build option."""
    if requested != "auto":
        try:
            named = torch.device(requested)
        except RuntimeError:
            named = None
        if named is None or named.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unknown device '{requested}': use auto, cpu, cuda, cuda:N or mps")
        kind = named.type
        present = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                   "mps": int(torch.backends.mps.is_available())}[kind]
        if (named.index or 0) >= present:
            raise ValueError(f"device '{requested}' is not on this machine ({present} {kind} device(s) found): use "
                             f"--device=auto, which picks the best one present, or --device=cpu")
        if requested == "cuda" and local_rank is not None:  # under DDP each process takes its own GPU
            return f"cuda:{local_rank}"
        return requested
    if torch.cuda.is_available():
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(device_type, requested="auto"):
    """The compute dtype's name and the autocast context that applies it. 'auto' is bfloat16 on CUDA where the
    GPU has it, float16 on older CUDA GPUs (train.py then scales the loss), and float32 elsewhere: on CPUs
    bfloat16 autocast is available (dtype=bfloat16) but rarely faster for models this small."""
    dtype = requested
    if dtype == "auto":
        on_cuda = device_type == "cuda"
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if on_cuda else "float32"
    if dtype == "float32":
        return dtype, nullcontext()
    return dtype, torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
