"""Fixtures several test files share."""

from types import SimpleNamespace

import pytest
import torch

from data.write import write_dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus")
    text = "the quick brown fox jumps over the lazy dog. " * 200
    write_dataset(path, {"train": [text[:7000]], "val": [text[7000:]]}, "char", "tiny", "made by the test")
    return str(path)


class FakeGPU:
    """Stands in for torch.cuda on a machine without a GPU: it reports a chosen GPU, while torch's own Python
    functions (set_device, is_bf16_supported, get_device_name, ...) run as they would on one, their argument checks
    included. Only the calls into the CUDA driver are replaced; set_device's is recorded."""

    def __init__(self, monkeypatch, name, capability, emulates_bf16=True, count=1):
        self.name, self.capability, self.count, self.current = name, capability, count, 0
        self.set_devices = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_device_properties", self.properties)
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: emulates_bf16)
        monkeypatch.setattr(torch._C, "_cuda_setDevice", self.set_device, raising=False)
        monkeypatch.setattr(torch.version, "hip", None)

    def properties(self, device=None):
        index = torch.cuda._utils._get_device_index(device, optional=True)  # torch's own check, as the real one
        if not 0 <= index < self.count:
            raise AssertionError("Invalid device id")
        return SimpleNamespace(name=self.name, major=self.capability[0], minor=self.capability[1])

    def set_device(self, index):
        self.set_devices.append(index)
        self.current = index


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu(name, capability, emulates_bf16=True, count=1): this test's machine has that CUDA GPU."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # use_device turns them on
    yield lambda *args, **kwargs: FakeGPU(monkeypatch, *args, **kwargs)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture(autouse=True)
def device_named(request, monkeypatch):
    """A test that trains, samples or embeds names its device (--device=cpu): on a machine with a GPU, 'auto' would
    run it there and compare with numbers exact on the CPU. Tests of 'auto' itself are marked picks_device."""
    if request.node.get_closest_marker("picks_device"):
        return
    from training import devices
    pick = devices.pick_device

    def named_only(requested="auto", local_rank=None):
        assert requested != "auto", "this test must name its device: pass --device=cpu (tests/conftest.py)"
        return pick(requested, local_rank)
    monkeypatch.setattr(devices, "pick_device", named_only)
