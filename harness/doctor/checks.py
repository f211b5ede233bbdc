"""The checks of ``harness doctor`` (:mod:`harness.doctor` runs them in order and
prints the verdict table): one function per row, each returning a :class:`Check`.

Node checks (driver, torch CUDA, Ray GPU isolation, faiss, AMP) and the tiny-run checks
(every memory kind + XML, SIGKILL + resume, evaluation, throughput). One concept: what
one verdict row verifies and how.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.doctor.fixtures import misplaced_state, tie_heavy_embeddings, tiny_config
from harness.results.contract import MEMORY_KINDS, STATUS_COMPLETED, best_checkpoint, last_checkpoint

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"


@dataclass
class Check:
    name: str
    verdict: str
    detail: str
    seconds: float = 0.0


# ------------------------------------------------------------------ helpers


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# ------------------------------------------------------------------ checks


def check_driver() -> tuple[Check, int]:
    """-> (check, GPUs the driver sees)."""
    from harness.core.device import nvidia_devices

    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                n = pynvml.nvmlDeviceGetCount()
                names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(n)]
                driver = pynvml.nvmlSystemGetDriverVersion()
                cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            finally:
                pynvml.nvmlShutdown()
            names = [x.decode() if isinstance(x, bytes) else x for x in names]
            cuda_s = f"{cuda // 1000}.{cuda % 1000 // 10}"
            return Check("NVIDIA driver", PASS if n else INFO,
                         f"driver {driver}, supports CUDA <= {cuda_s}; {n} GPU(s): {', '.join(names) or 'none'}"), n
        except pynvml.NVMLError as e:
            if nvidia_devices():
                return Check("NVIDIA driver", FAIL, f"/dev/nvidia* exist but NVML fails: {e}"), len(nvidia_devices())
    devs = nvidia_devices()
    if devs:
        smi = _nvidia_smi()
        return Check("NVIDIA driver", PASS if smi else FAIL,
                     smi or f"{len(devs)} GPU device file(s) but no nvidia-smi / NVML to query the driver"), len(devs)
    return Check("NVIDIA driver", INFO, "no NVIDIA GPU on this machine: CPU-only, checking the CPU path"), 0


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "; ".join(out.stdout.strip().splitlines()) if out.returncode == 0 else None


# The oldest Linux driver of each CUDA major version (NVIDIA's CUDA compatibility
# table): a build for CUDA X.y runs on any driver that supports CUDA X.0 (minor-version
# compatibility), not on an older major.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def driver_versions() -> tuple[str, int] | None:
    """(driver version, newest CUDA version it supports as 1000*major + 10*minor) from
    NVML, else nvidia-smi; None when neither answers."""
    import re

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return (driver.decode() if isinstance(driver, bytes) else driver), int(cuda)
    except Exception:  # noqa: BLE001 - no NVML: try nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    d = re.search(r"Driver Version:\s*([\d.]+)", out)
    c = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out)
    if not (d and c):
        return None
    return d.group(1), int(c.group(1)) * 1000 + int(c.group(2)) * 10


def driver_mismatch(torch_version: str, torch_cuda: str | None, driver: str, driver_cuda: int) -> str | None:
    """The one-line failure when torch's CUDA build needs a newer driver than the
    node's (None: they match). ``torch_cuda``: ``torch.version.cuda`` ("13.0", None for a
    CPU-only build); ``driver_cuda``: the newest CUDA the driver supports, as NVML gives
    it (12040 = 12.4)."""
    if not torch_cuda:
        return None
    major, minor = (int(x) for x in torch_cuda.split(".")[:2])
    have_major, have_minor = driver_cuda // 1000, driver_cuda % 1000 // 10
    if have_major >= major:
        return None
    need = MIN_DRIVER.get(major)
    return (f"torch {torch_version} is built for CUDA {major}.{minor} but NVIDIA driver {driver} supports "
            f"CUDA <= {have_major}.{have_minor}: install driver >= {need or f'one for CUDA {major}'} "
            f"(an AMI that ships it) or a torch build for CUDA {have_major} "
            f"(pip install torch --index-url https://download.pytorch.org/whl/cu{have_major}{have_minor})")


def check_driver_cuda() -> Check:
    """torch's CUDA build against the driver's newest supported CUDA (NVML)."""
    build = torch.version.cuda
    if not build:
        return Check("driver vs torch CUDA", INFO, f"torch {torch.__version__} is a CPU-only build")
    found = driver_versions()
    if found is None:
        return Check("driver vs torch CUDA", INFO,
                     f"torch {torch.__version__} is built for CUDA {build} (needs driver >= "
                     f"{MIN_DRIVER.get(int(build.split('.')[0]), '?')}); no NVIDIA driver to compare")
    driver, cuda = found
    problem = driver_mismatch(torch.__version__, build, driver, cuda)
    if problem:
        return Check("driver vs torch CUDA", FAIL, problem)
    return Check("driver vs torch CUDA", PASS,
                 f"torch {torch.__version__} built for CUDA {build}; driver {driver} supports CUDA <= "
                 f"{cuda // 1000}.{cuda % 1000 // 10}")


def check_torch(driver_gpus: int, require_gpu: bool) -> tuple[Check, torch.device | None]:
    """torch's build and the device a `device: auto` run picks (None: it would refuse)."""
    from harness.core.device import describe_device, pick_device
    from harness.errors import HarnessError

    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only wheel)'}"
    try:
        device = pick_device("auto")
    except HarnessError as e:
        return Check("torch CUDA", FAIL, f"{build}; {e}"), None
    if device.type == "cuda":
        n = torch.cuda.device_count()
        caps = {f"sm_{''.join(map(str, torch.cuda.get_device_capability(i)))}" for i in range(n)}
        archs = torch.cuda.get_arch_list()
        missing = [c for c in caps if c not in archs and not any(a.startswith("compute_") for a in archs)]
        verdict = FAIL if missing or (driver_gpus and n != driver_gpus) else PASS
        detail = f"{build}; {n} GPU(s) usable, {describe_device(device)}; capability {', '.join(sorted(caps))}"
        if missing:
            detail += f"; torch has no kernels for {', '.join(missing)} (has {' '.join(archs)})"
        if driver_gpus and n != driver_gpus:
            detail += f"; but the driver sees {driver_gpus}"
        return Check("torch CUDA", verdict, detail), device
    if require_gpu:
        return Check("torch CUDA", FAIL, f"{build}; no GPU visible but --require-gpu was given"), None
    return Check("torch CUDA", INFO, f"{build}; no GPU: `device: auto` trains on the CPU"), device


def _ray_probe() -> dict[str, Any]:
    """Runs inside a Ray task: isolate to the assigned GPUs, report what torch sees."""
    import ray

    from harness.core.device import isolate_gpus

    ids = [str(i) for i in ray.get_gpu_ids()]
    isolate_gpus(ids)
    return {"assigned": ids, "visible_env": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "torch_count": torch.cuda.device_count()}


def check_ray_gpus(gpus: int) -> Check:
    """A zero-GPU task sees no CUDA device; a one-GPU task sees exactly its GPU."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", _node_ip_address="127.0.0.1")
    try:
        ray_gpus = int(ray.cluster_resources().get("GPU", 0))
        probe = ray.remote(_ray_probe)
        zero = ray.get(probe.options(num_cpus=1, num_gpus=0).remote(), timeout=120)
        problems, seen = [], [f"gpus=0 task: CUDA_VISIBLE_DEVICES={zero['visible_env']!r}, torch sees {zero['torch_count']}"]
        if zero["torch_count"] != 0:
            problems.append("a zero-GPU task sees a GPU")
        if gpus:
            one = ray.get(probe.options(num_cpus=1, num_gpus=1).remote(), timeout=120)
            seen.append(f"gpus=1 task: assigned {one['assigned']}, torch sees {one['torch_count']}")
            if one["torch_count"] != len(one["assigned"]) or len(one["assigned"]) != 1:
                problems.append("a one-GPU task does not see exactly its GPU")
            if ray_gpus != gpus:
                problems.append(f"Ray counts {ray_gpus} GPU(s), torch {gpus}")
        verdict = FAIL if problems else PASS
        return Check("Ray GPU assignment", verdict, "; ".join(problems + seen))
    finally:
        if started:
            ray.shutdown()


def check_faiss(device: torch.device) -> Check:
    """One faiss distribution; the exact search on the training device == the CPU one."""
    import logging

    from harness.core import metrics as M
    from harness.core.install import faiss_report

    report = faiss_report()
    dists = report["distributions"]
    problems = []
    if len(dists) != 1:
        problems.append(f"{len(dists)} faiss distributions installed ({', '.join(dists) or 'none'}); "
                        "keep faiss-cpu only: pip uninstall the others, then pip install --force-reinstall faiss-cpu")
    x, y = tie_heavy_embeddings(3000, 24)
    cpu = M.retrieval_metrics(x, y, ks=(1, 4), use_gpu=False)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    M.log.addHandler(handler)
    try:
        on_device = M.retrieval_metrics(x, y, ks=(1, 4), device=device, use_gpu=True)
    finally:
        M.log.removeHandler(handler)
    if warnings:
        problems.append(f"GPU search fell back to the CPU ({warnings[0]})")
    if on_device != cpu:
        problems.append(f"search on {device.type} disagrees with faiss on the CPU")
    where = "torch exact top-k on " + (str(device) if device.type == "cuda" else "cpu (as on a GPU)")
    detail = (f"faiss {report['version']} from {', '.join(dists) or 'nothing'} (faiss GPUs: {report['gpus']}); "
              f"{where} == faiss CPU: {'yes' if on_device == cpu else 'no'} (recall@1 {cpu['recall@1']:.4f})")
    return Check("faiss / retrieval search", FAIL if problems else PASS, "; ".join(problems + [detail]))


def check_amp(device: torch.device) -> Check:
    from harness.core.device import amp_dtype, native_bf16, needs_grad_scaler

    dtype = amp_dtype(device, "auto")
    if device.type != "cuda":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ones(8, 8) @ torch.ones(8, 8)
        ok = out.dtype == torch.bfloat16
        return Check("mixed precision", PASS if ok else FAIL,
                     "CPU: amp auto = off (fp32); `amp: on` = bf16 autocast " + ("works" if ok else "failed"))
    a = torch.randn(64, 64, device=device, requires_grad=True)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(dtype))
    opt = torch.optim.SGD([a], lr=0.1)
    with torch.autocast("cuda", dtype=dtype):
        loss = (a @ a).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    ok = bool(torch.isfinite(a).all())
    name = str(dtype).removeprefix("torch.")
    return Check("mixed precision", PASS if ok else FAIL,
                 f"bf16 native: {'yes' if native_bf16(device) else 'no (emulated)'}; amp auto = {name}"
                 + (" + GradScaler" if scaler.is_enabled() else "") + f"; autocast step {'finite' if ok else 'NOT finite'}")


def check_memory_kinds(device: torch.device, root: Path) -> Check:
    """Two epochs on the device for every memory kind, each with XML."""
    from harness.config import build_config
    from harness.core.train import run_training

    done, problems = [], []
    for kind in MEMORY_KINDS:
        cfg = build_config(tiny_config(kind, device.type))
        result = run_training(cfg, root / f"kind-{kind.replace('+', '_')}")
        if result.status != STATUS_COMPLETED or not math.isfinite(result.test.get("test.recall@1", math.nan)):
            problems.append(f"{kind}: {result.status}")
        else:
            done.append(f"{kind} {result.test['test.recall@1']:.2f}")
    detail = f"2 epochs + XML on {device.type}, test recall@1: " + ", ".join(done)
    return Check("train: every memory kind + XML", FAIL if problems else PASS, "; ".join(problems + [detail]))


_KILL_AFTER_EPOCH_1 = """
import os, signal, sys, yaml
from harness.config import build_config
from harness.core.train import run_training
cfg = build_config(yaml.safe_load(open(sys.argv[1])))
def on_epoch(epoch, metrics):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
run_training(cfg, sys.argv[2], on_epoch=on_epoch)
"""


LOADER_WORKERS = 2


def check_kill_resume(device: torch.device, root: Path) -> tuple[Check, Path | None]:
    """SIGKILL a run after epoch 1, resume it: state on the device, epoch 2 matches."""
    import yaml

    from harness.config import build_config
    from harness.core.checkpoint import load_checkpoint
    from harness.core.train import run_training
    from harness.core.trainer import Trainer

    raw = tiny_config("axbn", device.type)
    # the loader as a trial has it: worker processes, and pinned memory on CUDA
    raw["data"]["workers"] = LOADER_WORKERS
    cfg_path = root / "resume.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = build_config(raw)
    full: dict[int, dict] = {}
    run_training(cfg, root / "uninterrupted", on_epoch=lambda e, m: full.__setitem__(e, m))
    out = root / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")] if p)}
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_EPOCH_1, str(cfg_path), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != -signal.SIGKILL:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("kill + resume", FAIL, f"the child run was not killed as planned (exit {proc.returncode}: {tail})"), None
    trainer = Trainer(cfg, out)
    trainer.load_state_dict(load_checkpoint(last_checkpoint(out)))
    misplaced = misplaced_state(trainer, trainer.device)
    trainer.close()
    resumed: dict[int, dict] = {}
    result = run_training(cfg, out, on_epoch=lambda e, m: resumed.__setitem__(e, m))
    problems = []
    if misplaced:
        problems.append(f"after loading last.pt, off the training device: {', '.join(misplaced[:4])}")
    if result.status != STATUS_COMPLETED or list(resumed) != [2]:
        problems.append(f"resume ran epochs {list(resumed)} ({result.status}), expected [2]")
    diff = abs(resumed.get(2, {}).get("loss", math.nan) - full[2]["loss"]) / max(abs(full[2]["loss"]), 1e-12)
    drift = resumed.get(2, {}).get("drift_mean", math.nan)
    if not math.isfinite(drift):
        problems.append("drift after resume is not finite")
    # CPU runs are bit-reproducible; GPU kernels (atomics) may differ in the last bits.
    tol = 1e-6 if device.type == "cpu" else 1e-2
    if not diff <= tol:
        problems.append(f"epoch 2 loss differs from the uninterrupted run by {diff:.2e} (> {tol:g})")
    pinned = "pinned memory" if device.type == "cuda" else "no pinned memory (CPU)"
    detail = (f"{LOADER_WORKERS} loader workers, {pinned}; "
              f"SIGKILL after epoch 1, resumed on {device.type}: state on the device, "
              f"epoch 2 loss rel. diff {diff:.1e}, drift {drift:.4f}")
    return Check("kill + resume", FAIL if problems else PASS, "; ".join(problems + [detail])), out


def check_evaluate(device: torch.device, run_dir: Path | None) -> Check:
    from harness.core.checkpoint import load_model
    from harness.core.evaluate import evaluate_split
    from harness.data.registry import create_datasets

    if run_dir is None:
        return Check("evaluate best.pt", SKIP, "no resumed run to evaluate")
    model, cfg = load_model(best_checkpoint(run_dir), map_location=device)
    model.to(device)
    data = create_datasets(cfg.data, cfg.seed, model.mean, model.std)
    m = evaluate_split(model, data.test, ks=(1, 4), device=device, batch_size=128)
    ok = all(math.isfinite(m[k]) for k in ("recall@1", "map@r"))
    return Check("evaluate best.pt", PASS if ok else FAIL,
                 f"on {device.type}: recall@1 {m['recall@1']:.4f}, map@r {m['map@r']:.4f} ({m['n_queries']} queries)")


def check_throughput(device: torch.device, require_gpu: bool = False) -> Check:
    """Loader images/s per CPU with the data settings a GPU trial of the shipped SOP
    experiment runs (its image cache, augmentation on the GPU as ``augment_on: auto``
    gives on CUDA) and, on a GPU, the shipped ResNet-50's training images/s including
    that augmentation: how many vCPUs a GPU trial needs to keep its GPU busy."""
    from harness.doctor.throughput import (
        SHIPPED_GPU_EXPERIMENT,
        describe_data,
        device_augment_images_per_s,
        gpu_step_images_per_s,
        per_cpu_loader_rate,
        shipped_gpu_data,
    )

    data = shipped_gpu_data()
    setting = f"{describe_data(data)}, as {SHIPPED_GPU_EXPERIMENT} on a GPU"
    per_cpu = per_cpu_loader_rate(data=data)
    if device.type != "cuda":
        return Check("throughput", INFO, f"loader {per_cpu:.0f} images/s per CPU ({setting}); no GPU to size for")
    gpu = gpu_step_images_per_s(device, image_size=data.image_size)
    if data.augment_on == "device":  # the GPU spends its own time on the augmentation
        gpu = 1 / (1 / gpu + 1 / device_augment_images_per_s(device, data.augment, data.image_size))
    cpus_per_gpu = (os.cpu_count() or 1) / max(torch.cuda.device_count(), 1)
    return throughput_verdict(gpu, per_cpu, cpus_per_gpu, require_gpu, setting)


def throughput_verdict(gpu_rate: float, per_cpu: float, cpus_per_gpu: float, require_gpu: bool,
                       setting: str = "224 px, RandAugment") -> Check:
    """Whether this node's CPUs can feed its GPUs: a trial needs ``vcpus_needed`` vCPUs
    (loader workers at ``per_cpu`` images/s each, plus the training process). Short of
    that the GPU waits for data: a FAIL under ``--require-gpu`` (a GPU worker's setup),
    else INFO. ``setting``: the loader's data settings, named in the detail."""
    from harness.doctor.throughput import vcpus_needed

    need = vcpus_needed(gpu_rate, per_cpu)
    short = cpus_per_gpu < need
    detail = (f"resnet50 224 px batch 64: {gpu_rate:.0f} images/s; loader {per_cpu:.0f} images/s per CPU "
              f"({setting}) -> a GPU trial needs {need} vCPUs (cpus: {need}, data.workers: "
              f"{need - 1}); this node has {cpus_per_gpu:.0f} per GPU")
    if short:
        detail = (f"loader short: {cpus_per_gpu:.0f} vCPUs per GPU feed about "
                  f"{per_cpu * max(cpus_per_gpu - 1, 0):.0f} images/s, the GPU trains {gpu_rate:.0f}/s: use a node "
                  f"type with >= {need} vCPUs per GPU or fewer GPUs per node; " + detail)
    return Check("throughput", FAIL if short and require_gpu else INFO, detail)


def check_collectives(device: torch.device) -> Check:
    """Two data-parallel ranks on this node: all-reduce, synchronised BatchNorm and DDP's
    gradient averaging (:mod:`harness.doctor.collectives`). NCCL on two GPUs where the
    node has 2+, else gloo on the CPU (the path of a CPU run)."""
    from harness.doctor.collectives import two_rank_problems

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    where = "NCCL on cuda:0 and cuda:1" if backend == "nccl" else "gloo on the CPU" + (
        " (1 GPU: no NCCL pair to check)" if gpus == 1 else "")
    problems = two_rank_problems(backend)
    detail = f"2 ranks, {where}: all-reduce, SyncBatchNorm (output and gradient == one BatchNorm), DDP gradient mean"
    return Check("2-rank collectives", FAIL if problems else PASS, "; ".join(problems + [detail]))
