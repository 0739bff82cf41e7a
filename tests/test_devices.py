"""The lines that differ on a GPU (training/devices.py and the trainer's set-up), held to torch's own contract on a
machine without one: conftest.py's fake_gpu reports a chosen GPU while torch's Python functions run their real
checks."""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import GPT, GPTConfig, estimate_mfu
from training import devices
from training.trainer import Trainer

pytestmark = pytest.mark.picks_device  # device='auto' on a fake GPU is what these tests are about

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
T4 = ("Tesla T4", (7, 5))


def set_up(**settings):
    """The trainer's device set-up alone, as a run with these settings does it first."""
    trainer = Trainer.__new__(Trainer)
    trainer.s = {"gradient_accumulation_steps": 1, "device": "auto", "dtype": "auto", "compile": None, **settings}
    trainer.setup_device()
    return trainer


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_one_gpu_run_makes_its_gpu_current_with_an_index_as_torch_requires(fake_gpu, device):
    gpu = fake_gpu(*H100)
    trainer = set_up(device=device)
    assert trainer.device == "cuda:0" and gpu.set_devices == [0]
    assert not trainer.ddp and trainer.preparation_group is None
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_device("cuda")  # what the fake holds a run to: torch's own check


@pytest.mark.parametrize("gpu, emulates_bf16, dtype", [
    (T4, True, "float16"),  # torch emulates bfloat16 here: slow, and Inductor skips it
    (("Tesla V100-SXM2-16GB", (7, 0)), False, "float16"),
    (("NVIDIA A100-SXM4-40GB", (8, 0)), True, "bfloat16"),
    (H100, True, "bfloat16"),
])
def test_auto_precision_is_bfloat16_only_where_the_gpu_has_it_in_hardware(fake_gpu, gpu, emulates_bf16, dtype):
    fake_gpu(*gpu, emulates_bf16=emulates_bf16)
    assert torch.cuda.is_bf16_supported() == (emulates_bf16 or gpu[1] >= (8, 0))  # the fake answers as torch would
    assert set_up().dtype == dtype
    assert set_up(dtype="float32").dtype == "float32"  # a named dtype is kept


def test_only_float16_scales_the_loss_and_a_disabled_scalers_state_resumes_into_an_enabled_one():
    assert devices.grad_scaler("cpu", "float16").is_enabled()
    assert not devices.grad_scaler("cpu", "bfloat16").is_enabled()
    saved = devices.grad_scaler("cpu", "float32").state_dict()
    assert saved == {}  # what torch refuses to load into an enabled scaler
    resumed = devices.grad_scaler("cpu", "float16", saved)
    assert resumed.is_enabled() and resumed.get_scale() == 2.0 ** 16
    kept = devices.grad_scaler("cpu", "float16", {**devices.grad_scaler("cpu", "float16").state_dict(), "scale": 8.0})
    assert kept.get_scale() == 8.0


def test_a_run_saved_in_float32_resumes_in_float16(corpus, tmp_path):
    from test_train import run
    run(corpus, tmp_path, "--max_iters=2", "--eval_interval=2", "--device=cpu")
    run(corpus, tmp_path, "--max_iters=4", "--eval_interval=2", "--device=cpu", "--init_from=resume",
        "--dtype=float16")


@pytest.fixture
def torchrun_env(monkeypatch):
    """This process as rank `rank` of a torchrun with two processes, its process group calls recorded."""
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "new_group", lambda backend, timeout: calls.append(("group", backend, timeout)))

    def as_rank(rank):
        for name, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2}.items():
            monkeypatch.setenv(name, str(value))
        return calls
    return as_rank


def test_each_ddp_process_takes_its_own_gpu_and_nccl(fake_gpu, torchrun_env):
    gpu = fake_gpu(*H100, count=2)
    calls = torchrun_env(1)
    trainer = set_up(gradient_accumulation_steps=2)
    assert trainer.device == "cuda:1" and gpu.set_devices == [1] and calls[0] == ("init", "nccl")
    assert (trainer.rank, trainer.world, trainer.local_accum) == (1, 2, 1)


def test_a_cpu_run_on_a_gpu_machine_puts_its_cpu_tensors_on_gloo_not_nccl(fake_gpu, torchrun_env):
    gpu = fake_gpu(*H100, count=2)
    calls = torchrun_env(0)
    trainer = set_up(device="cpu", gradient_accumulation_steps=2)
    assert trainer.device == "cpu" and gpu.set_devices == [] and calls[0] == ("init", "gloo")


def test_the_other_ranks_wait_for_the_preparation_in_a_group_without_the_training_timeout(fake_gpu, torchrun_env):
    fake_gpu(*H100, count=2)
    calls = torchrun_env(0)
    set_up(gradient_accumulation_steps=2)
    assert calls[1] == ("group", "gloo", devices.PREPARATION_TIMEOUT)
    assert devices.PREPARATION_TIMEOUT >= datetime.timedelta(hours=2)  # the n-gram build of OpenWebText: ~50 min


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_slow_preparation(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    # The training group's timeout shortened to 2 s, so that a preparation of 4 s outlasts it as hours would.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=2))
    group = dist.new_group(backend="gloo", timeout=devices.PREPARATION_TIMEOUT)
    try:
        built = devices.rank_zero_first(group, rank, lambda: __import__("time").sleep(4 * (rank == 0)) or rank)
        dist.barrier()  # the training group still works afterwards
        results[rank] = built
    finally:
        dist.destroy_process_group()


def test_a_preparation_longer_than_the_process_groups_timeout_does_not_abort_the_other_ranks():
    results = mp.Manager().dict()
    mp.spawn(wait_for_slow_preparation, args=(free_port(), results), nprocs=2)
    assert dict(results) == {0: 0, 1: 1}


def test_mfu_divides_every_process_s_tokens_among_their_gpus(fake_gpu):
    fake_gpu(*H100)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100))
    one_gpu = estimate_mfu(gpt, 1000.0, H100[0])
    assert one_gpu > 0 and devices.mfu(gpt, 4000.0, 4, "cuda:0") == pytest.approx(one_gpu)
    assert devices.mfu(gpt, 4000.0, 4, "cpu") is None


def test_compile_is_on_by_default_only_on_cuda_with_triton(fake_gpu, monkeypatch):
    fake_gpu(*H100)
    found = {"triton": object()}
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: found.get(name))
    assert set_up().compile and not set_up(device="cpu").compile and not set_up(device="cuda", compile=False).compile
    found.clear()  # Windows, where Triton does not install
    assert not set_up().compile


def test_batches_go_to_the_gpu_through_pinned_memory(fake_gpu, monkeypatch):
    fake_gpu(*H100)
    moved = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: moved.append("pinned") or t)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, device, non_blocking=False: moved.append((device, non_blocking))
                        or t)
    devices.to_device(torch.zeros(2), "cuda:0")
    devices.to_device(torch.zeros(2), "cpu")
    assert moved == ["pinned", ("cuda:0", True), ("cpu", False)]
