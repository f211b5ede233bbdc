"""harness/doctor (its __init__ and checks.py): the whole self-check on this CPU machine, the
exit code, ``--require-gpu``, the driver/CUDA decision, the loader-vs-GPU verdict and the
2-rank collectives."""

from __future__ import annotations


import pytest
import torch


# ---------------------------------------------------------------- harness doctor


@pytest.mark.slow
def test_doctor_passes_on_a_cpu_machine_and_says_so(harness_cli, monkeypatch):
    """The whole self-check on the CPU path, on any machine (Ray's GPU isolation:
    tests/core/test_device.py, test_zero_gpu_trials_see_no_cuda_device)."""
    from harness.core import device as D

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(D, "cuda_unusable_reason", lambda: None)
    code, out, err = harness_cli(["doctor", "--no-ray"])
    assert code == 0, out + err
    for row in ("NVIDIA driver", "driver vs torch CUDA", "torch CUDA", "faiss / retrieval search",
                "mixed precision", "2-rank collectives", "train: every memory kind + XML",
                "kill + resume", "evaluate best.pt", "throughput"):
        assert row in out, row
    assert "2 loader workers" in out
    assert "CPU-only" in out and "FAIL" not in out
    assert "all checks passed" in out


def test_doctor_exits_non_zero_on_any_failure(monkeypatch, harness_cli):
    import harness.doctor as doctor

    def fake(require_gpu=False, with_ray=True, on_check=None):
        assert require_gpu and not with_ray
        return [doctor.Check("NVIDIA driver", doctor.INFO, "none"),
                doctor.Check("torch CUDA", doctor.FAIL, "no GPU visible but --require-gpu was given")]

    monkeypatch.setattr(doctor, "run_doctor", fake)
    code, out, _ = harness_cli(["doctor", "--require-gpu", "--no-ray"])
    assert code == 1 and "FAILED" in out and "--require-gpu" in out


def test_doctor_require_gpu_fails_without_a_usable_gpu(monkeypatch):
    from harness.doctor import FAIL, check_torch

    from harness.core import device as D

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    monkeypatch.setattr(D, "cuda_unusable_reason", lambda: None)
    check, device = check_torch(0, require_gpu=True)
    assert check.verdict == FAIL and device is None and "--require-gpu" in check.detail


@pytest.mark.parametrize("build, driver, cuda, ok", [
    ("13.0", "580.65.06", 13000, True),
    ("13.0", "590.10", 13020, True),
    ("12.8", "570.133.20", 12080, True),
    ("12.8", "535.183.01", 12020, True),   # minor-version compatibility within CUDA 12
    ("13.0", "570.133.20", 12080, False),  # the cu130 wheel on a 570 driver
    ("12.4", "470.256.02", 11040, False),
    (None, "470.256.02", 11040, True),     # a CPU-only torch needs no driver
])
def test_driver_cuda_decision(build, driver, cuda, ok):
    from harness.doctor.checks import driver_mismatch

    problem = driver_mismatch("2.14.1", build, driver, cuda)
    assert (problem is None) == ok
    if not ok:
        assert "\n" not in problem
        assert f"CUDA {build}" in problem and driver in problem  # both versions named
        assert f"CUDA <= {cuda // 1000}.{cuda % 1000 // 10}" in problem
        assert "install driver >=" in problem and "torch build for CUDA" in problem


def test_driver_check_names_both_versions_on_a_too_old_driver(monkeypatch):
    import harness.doctor.checks as dc

    monkeypatch.setattr(dc.torch.version, "cuda", "13.0")
    monkeypatch.setattr(dc, "driver_versions", lambda: ("570.133.20", 12080))
    check = dc.check_driver_cuda()
    assert check.verdict == dc.FAIL
    assert "CUDA 13.0" in check.detail and "570.133.20" in check.detail and "580.65.06" in check.detail
    monkeypatch.setattr(dc, "driver_versions", lambda: ("580.82.07", 13000))
    assert dc.check_driver_cuda().verdict == dc.PASS


@pytest.mark.parametrize("gpu, per_cpu, cpus, require, verdict", [
    (800, 135, 8, True, "INFO"),    # needs ceil(800/135) + 1 = 7 vCPUs: 8 feed it
    (1200, 135, 8, True, "FAIL"),   # needs 10
    (1200, 135, 8, False, "INFO"),  # not a GPU worker's setup: reported only
    (500, 135, 8, True, "INFO"),    # needs 5
    (1200, 135, 12, True, "INFO"),  # g5.12xlarge-like: 12 per GPU, needs 10
])
def test_loader_short_of_the_gpu_fails_under_require_gpu(gpu, per_cpu, cpus, require, verdict):
    from harness.doctor.checks import throughput_verdict
    from harness.doctor.throughput import vcpus_needed

    check = throughput_verdict(gpu, per_cpu, cpus, require)
    assert check.verdict == verdict
    short = gpu == 1200 and cpus == 8
    assert check.detail.startswith("loader short:") == short
    if short:
        assert "8 vCPUs per GPU feed about 945 images/s, the GPU trains 1200/s" in check.detail
        assert f">= {vcpus_needed(gpu, per_cpu)} vCPUs" in check.detail and "\n" not in check.detail


def test_the_loader_is_sized_with_the_data_settings_of_a_shipped_gpu_trial():
    """The SOP experiment's data as its GPU trials get it: the image cache it turns on,
    and augment_on auto, which is the device on CUDA."""
    from harness.doctor.throughput import shipped_gpu_data

    data = shipped_gpu_data()
    assert (data.name, data.image_size, data.augment) == ("sop", 224, "randaugment")
    assert data.image_cache is True and data.augment_on == "device"


@pytest.mark.parametrize("per_cpu, verdict", [(135, "FAIL"), (400, "INFO")])
def test_throughput_check_measures_that_setting_and_fails_when_short(monkeypatch, per_cpu, verdict):
    import harness.doctor.checks as dc
    import harness.doctor.throughput as tp

    measured = []

    def loader_rate(batches=4, data=None):
        measured.append(data)
        return per_cpu

    monkeypatch.setattr(tp, "per_cpu_loader_rate", loader_rate)
    monkeypatch.setattr(tp, "gpu_step_images_per_s", lambda device, image_size=224: 1500.0)
    monkeypatch.setattr(tp, "device_augment_images_per_s", lambda device, augment, image_size: 6000.0)
    monkeypatch.setattr(dc.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check = dc.check_throughput(torch.device("cuda"), require_gpu=True)
    assert measured == [tp.shipped_gpu_data()]
    # the GPU's rate includes its augmentation: 1 / (1/1500 + 1/6000) = 1200 images/s
    assert check.verdict == verdict
    assert ("loader short: 8 vCPUs per GPU feed about 945 images/s, the GPU trains 1200/s" in check.detail) == (
        verdict == "FAIL")
    assert "resnet50 224 px batch 64: 1200 images/s" in check.detail
    assert "randaugment on the GPU, image cache on, as sop-axbn on a GPU" in check.detail
    cpu = dc.check_throughput(torch.device("cpu"), require_gpu=False)
    assert cpu.verdict == "INFO" and "no GPU to size for" in cpu.detail and "image cache on" in cpu.detail


@pytest.mark.slow
def test_doctor_two_rank_collectives_pass_on_gloo_and_report_a_broken_backend(monkeypatch):
    from harness.doctor.checks import PASS, check_collectives
    from harness.doctor.collectives import two_rank_problems

    check = check_collectives(torch.device("cpu"))
    assert check.verdict == PASS, check.detail
    assert "gloo on the CPU" in check.detail and "SyncBatchNorm" in check.detail
    # a backend the ranks cannot use (NCCL without a GPU: the spawned ranks see none)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problems = two_rank_problems("nccl", timeout_s=20)
    assert len(problems) == 2 and all(p.startswith("rank ") and "error" in p for p in problems)
