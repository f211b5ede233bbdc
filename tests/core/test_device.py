"""harness/core/device.py: ``device: auto`` refuses a GPU torch cannot use, bf16 only
where native, a trial sees exactly the GPUs Ray assigned (none for ``gpus: 0``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fixtures.local_ray import local_ray
from harness.core import device as D
from harness.errors import ConfigError

# ---------------------------------------------------------------- device choice


def test_auto_refuses_a_gpu_that_torch_cannot_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(D, "nvidia_devices", lambda: [])
    assert D.pick_device("auto") == torch.device("cpu")  # a CPU machine
    monkeypatch.setattr(D, "nvidia_devices", lambda: ["/dev/nvidia0"])
    with pytest.raises(ConfigError, match="NVIDIA GPU but torch") as e:
        D.pick_device("auto")
    assert "\n" not in str(e.value) and "train.device=cpu" in str(e.value)
    assert D.pick_device("cpu") == torch.device("cpu")  # deliberate CPU runs stay possible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a gpus: 0 trial: hidden on purpose
    assert D.pick_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("capability,dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                              ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_bf16_only_where_native(monkeypatch, capability, dtype):
    monkeypatch.setattr(D, "gpu_capability", lambda device: capability)
    cuda = torch.device("cuda", 0)
    assert D.amp_dtype(cuda, "auto") == dtype
    assert D.needs_grad_scaler(D.amp_dtype(cuda, "auto")) == (dtype == torch.float16)
    assert D.amp_dtype(cuda, "off") is None


def test_isolate_gpus_sets_exactly_the_assigned_ones(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    D.isolate_gpus([])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and D.gpus_hidden()
    D.isolate_gpus([2, 3])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3" and not D.gpus_hidden()


def _record_visible_gpus(marks: Path):
    """A train_fn for the sweep: records what the trial's process sees."""
    from harness.core.run_result import RunResult

    def train(config, out_dir, on_epoch=None, resume=True):
        (marks / f"{os.getpid()}.json").write_text(json.dumps({
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_device_count": torch.cuda.device_count(),
            "device": str(D.pick_device(config.train.device)),
        }))
        if on_epoch:
            on_epoch(1, {"val.recall@1": 0.5, "loss": 1.0})
        return RunResult("completed", 1, 1, {"val.recall@1": 0.5}, {"test.recall@1": 0.4}, 0.1, "cpu", Path(out_dir))

    return train


@pytest.mark.slow
def test_zero_gpu_trials_see_no_cuda_device(tmp_path):
    """Ray >= 2.50 leaves CUDA_VISIBLE_DEVICES alone for gpus: 0; the trainable blanks it."""
    import ray
    import ray.cloudpickle
    import yaml

    from harness.sweep.runner import prepare_sweep, run_sweep

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marks = tmp_path / "marks"
    marks.mkdir()
    exp = {"description": "gpus: 0", "base": {"data": {"name": "digits"}, "model": {"backbone": "tiny_cnn_small"},
                                              "train": {"epochs": 1, "batch_size": 16}},
           "search": {"algorithm": "random", "trials": 1, "reproduction_seeds": [1],
                      "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
                      "resources": {"cpus": 1, "gpus": 0}}}
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(exp))
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    with local_ray():
        run_sweep(prepare_sweep(str(path), storage=str(tmp_path / "results")),
                  train_fn=_record_visible_gpus(marks), render=False)
    seen = [json.loads(p.read_text()) for p in marks.glob("*.json")]
    assert seen, "no trial ran"
    for s in seen:
        assert s == {"CUDA_VISIBLE_DEVICES": "", "torch_device_count": 0, "device": "cpu"}




# ---------------------------------------------------------------- memory layout on CUDA


@pytest.mark.parametrize("device, expected", [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_channels_last_and_cudnn_benchmark_only_on_cuda(device, expected):
    d = torch.device(device)
    assert D.channels_last(d) is expected
    assert D.memory_format(d) == (torch.channels_last if expected else torch.contiguous_format)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_apply_layout_converts_the_model_on_cuda_only(monkeypatch, device):
    """The decision without a GPU: the model stays on the CPU, only the device is named."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    fmt = D.apply_layout(model, torch.device(device))
    weight = model[0].weight
    cuda = device == "cuda"
    assert fmt == (torch.channels_last if cuda else torch.contiguous_format)
    assert weight.is_contiguous(memory_format=torch.channels_last) is cuda
    assert weight.is_contiguous() is not cuda
    assert torch.backends.cudnn.benchmark is cuda


def test_cpu_training_keeps_the_contiguous_layout(monkeypatch, tmp_path, tiny_config):
    """The trainer asks the device decision and follows it (here patched to CUDA's layout
    while the tensors stay on the CPU): the model's weights and every training batch."""
    from harness.config import build_config
    from harness.core import trainer as T

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = build_config(tiny_config(train={"epochs": 1}))
    cpu = T.Trainer(cfg, tmp_path / "cpu")
    assert cpu.memory_format == torch.contiguous_format and torch.backends.cudnn.benchmark is False
    assert all(p.is_contiguous() for p in cpu.model.parameters())

    monkeypatch.setattr(D, "channels_last", lambda device: True)  # the CUDA decision
    patched = T.Trainer(cfg, tmp_path / "patched")
    assert patched.memory_format == torch.channels_last and torch.backends.cudnn.benchmark is True
    seen = []
    real = patched.train_step

    def spy(images, *args, **kwargs):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return real(images, *args, **kwargs)

    patched.train_step = spy
    assert patched.train_epoch(1) is not None
    assert seen and all(seen)
