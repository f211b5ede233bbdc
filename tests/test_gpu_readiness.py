"""What a first run on a cloud GPU would hit, made visible on the CPU.

Checkpoints written on a GPU node (their tensors tagged ``cuda:N``) resumed elsewhere,
every state tensor on the training device after a resume, a run saved without a grad
scaler resumed with fp16, RNG states of more GPUs than present, ``device: auto`` on a
GPU torch cannot use, bf16 only where native, ``gpus: 0`` trials seeing no GPU, one
faiss distribution, the torch search against faiss (ties included) and its fallback,
no host reads in the memory / XML forward, and the persistent training loader.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tomllib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.local_ray import local_ray
from harness.config import build_config
from harness.core import device as D
from harness.core import metrics as M
from harness.core.checkpoint import load_checkpoint, save_checkpoint, set_rng_states, rng_states
from harness.core.train import run_training
from harness.core.trainer import Trainer, load_scaler_state
from harness.doctor_fixtures import misplaced_state, tensors_in, tie_heavy_embeddings, tiny_config
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def saved_as_if_on(location: str):
    """torch.save tags every storage with ``location`` (e.g. "cuda:1"), as on a GPU node."""
    entry = (1, lambda storage: location, lambda storage, loc: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def resave_as_gpu_checkpoint(path: Path, location: str = "cuda:1") -> None:
    state = load_checkpoint(path)
    with saved_as_if_on(location):
        save_checkpoint(state, path)


# ---------------------------------------------------------------- checkpoints / resume


def test_checkpoint_from_a_gpu_node_loads_on_a_cpu_machine(tmp_path):
    path = tmp_path / "gpu.pt"
    with saved_as_if_on("cuda:1"):
        save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}, "probe_prev": torch.zeros(2, 2)}, path)
    if not torch.cuda.is_available():
        # the simulation is real: torch's own default restores to the saved device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    state = load_checkpoint(path)
    assert {t.device.type for _, t in tensors_in(state)} == {"cpu"}
    assert torch.equal(state["model"]["w"], torch.ones(3))


@pytest.mark.slow
def test_resume_of_a_gpu_checkpoint_places_every_state_tensor(tmp_path):
    """A last.pt written on cuda:1 resumes here: the state is on the training device,
    the drift probe on the CPU, and the resumed epoch's drift is finite."""
    cfg = build_config(tiny_config("axbn", "auto", epochs=1))
    run_training(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    resave_as_gpu_checkpoint(last)
    trainer = Trainer(cfg, tmp_path)
    trainer.load_state_dict(load_checkpoint(last))
    assert misplaced_state(trainer, trainer.device) == []
    assert trainer.probe_prev is not None and trainer.probe_prev.device.type == "cpu"
    assert trainer.memory.kalman.mean.device == trainer.device
    # every tensor of the state is visited (the check can fail)
    paths = [p for p, _ in tensors_in(trainer.state_dict())]
    assert "probe_prev" in paths and any(p.startswith("memory.") for p in paths)
    trainer.close()
    seen = {}
    result = run_training(build_config(tiny_config("axbn", "auto", epochs=2)), tmp_path,
                          on_epoch=lambda e, m: seen.__setitem__(e, m))
    assert result.status == "completed" and list(seen) == [2]
    assert math.isfinite(seen[2]["drift_mean"]) and seen[2]["drift_mean"] > 0


def test_misplaced_state_reports_tensors_off_the_device():
    class Fake:
        memory = type("Mem", (), {"kalman": None})()

        def state_dict(self):
            return {"model": {"w": torch.zeros(1, device="meta")}, "rng": {"torch": torch.zeros(1)},
                    "optimizer": {"state": {0: {"step": torch.zeros(()), "exp_avg": torch.zeros(1)}}},
                    "probe_prev": torch.zeros(1)}

    assert misplaced_state(Fake(), torch.device("cpu")) == ["model.w@meta"]


def test_scaler_less_checkpoint_resumes_with_fp16_loss_scaling(tmp_path, monkeypatch):
    """Saved in fp32 or bf16 (empty scaler state), resumed where fp16 + GradScaler is used."""
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what used to happen
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    load_scaler_state(scaler, {})
    assert scaler.get_scale() == 2.0**16

    run_training(build_config(tiny_config("xbm", "cpu", epochs=1)), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"] == {}
    import harness.core.trainer as T

    monkeypatch.setattr(T, "needs_grad_scaler", lambda dtype: True)  # as with fp16 on a T4
    result = run_training(build_config(tiny_config("xbm", "cpu", epochs=2)), tmp_path)
    assert result.status == "completed" and result.epochs_run == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]["scale"] > 0


def test_rng_restore_with_fewer_gpus_than_saved(monkeypatch):
    states = rng_states()
    states["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((int(s[0]), device)))
    set_rng_states(states)
    assert calls == [(0, 0)]  # GPU 0 restored, the saved state of GPU 1 dropped
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    calls.clear()
    set_rng_states(states)
    assert calls == [(0, 0), (1, 1)]  # GPUs 2, 3 keep their state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls.clear()
    set_rng_states(states)  # a CPU node
    assert calls == []


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


# ---------------------------------------------------------------- faiss / search


def test_one_faiss_distribution_and_truthful_versions():
    import faiss

    from harness.core.install import faiss_distributions, library_versions

    assert faiss_distributions() == ["faiss-cpu"]
    versions = library_versions()
    assert versions["faiss"] == f"{faiss.__version__} (faiss-cpu)"
    assert versions["torch"] == torch.__version__.split("+")[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    faiss_reqs = [r for r in reqs if r.lower().startswith("faiss")]
    assert faiss_reqs == ["faiss-cpu>=1.8"]  # no extra installs a second faiss over it


@pytest.mark.parametrize("one_set", [True, False])
def test_torch_search_matches_faiss_including_ties(one_set):
    x, y = tie_heavy_embeddings(1500, 16, seed=3)
    args = (x, y) if one_set else (x[500:], y[500:], x[:500], y[:500])
    cpu = M.retrieval_metrics(*args, ks=(1, 2, 8), use_gpu=False)
    torch_path = M.retrieval_metrics(*args, ks=(1, 2, 8), device="cpu", use_gpu=True)
    assert cpu == torch_path and cpu["recall@1"] > 0
    # exact ties: the same neighbours in the same order (ascending gallery index)
    q = M.normalised(x)
    ours = M.knn(q[:200], M.TorchExactSearch(q, "cpu", block_bytes=4 * 1500 * 7), 12, self_index=np.arange(200))
    ref = M.knn(q[:200], M.ExactCosineSearch(q), 12, self_index=np.arange(200))
    assert np.array_equal(ours[1], ref[1]) and np.array_equal(ours[0], ref[0])


def test_gpu_search_failure_falls_back_to_cpu_with_one_warning(monkeypatch, caplog):
    x, y = tie_heavy_embeddings(600, 16, seed=1)
    expected = M.retrieval_metrics(x, y, ks=(1, 4), use_gpu=False)

    def no_kernel(self, queries, k):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(M.TorchExactSearch, "search", no_kernel)
    with caplog.at_level(logging.WARNING, logger="harness.core.metrics"):
        got = M.retrieval_metrics(x, y, ks=(1, 4), device="cpu", use_gpu=True)
    assert got == expected
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no kernel image" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage() and "CPU" in warnings[0].getMessage()
    # a machine without a usable GPU asked for one (use_gpu=True): the same fallback
    if not torch.cuda.is_available():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="harness.core.metrics"):
            assert M.retrieval_metrics(x, y, ks=(1, 4), use_gpu=True) == expected
        assert len(caplog.records) == 1


# ---------------------------------------------------------------- hot-path host reads


@contextmanager
def host_reads_from(prefix: str):
    """Counts tensor -> python reads (item, float, bool, int, tolist) made by code under ``prefix``."""
    calls: list[str] = []
    names = ["item", "tolist", "__bool__", "__float__", "__int__"]
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name):
        orig = originals[name]

        def counted(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(prefix):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return orig(self, *a, **k)

        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield calls
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("kind", ["xbm", "xbn", "axbn"])
def test_memory_and_xml_steps_read_nothing_on_the_host(kind):
    from pytorch_metric_learning import losses, miners

    from harness.core.memory import CrossBatchMemory
    from harness.core.xml import PrototypePooling, XMLLoss, split_halves
    from harness.core.model import ModelOutput

    torch.manual_seed(0)
    mem = CrossBatchMemory(losses.SupConLoss(), 16, 64, kind=kind, miner=miners.PairMarginMiner(0.2, 0.8))
    pool = PrototypePooling(8, 6)
    xml = XMLLoss(losses.SupConLoss(), alpha=1.0)
    head = torch.nn.Linear(8, 16)
    core = str(ROOT / "harness" / "core")
    for step in range(40):
        labels = torch.arange(8).repeat_interleave(4)
        halves = split_halves(labels)  # the training loop does this on the CPU labels
        feats = torch.randn(32, 8, 3, 3)
        with host_reads_from(core) as reads:
            pooled, gap, hist = pool(feats)
            emb = torch.nn.functional.normalize(head(pooled), dim=1)
            out = ModelOutput(emb, pooled, gap, hist)
            loss = mem(emb, labels) + xml(out, labels, pool.prototypes, lambda g: torch.nn.functional.normalize(head(g), dim=1), halves)
            loss.backward()
        # the affine's range check: one read every range_check_interval adaptations
        allowed = 1 if kind != "xbm" and mem._since_fold and mem._since_fold % mem.range_check_interval == 0 else 0
        assert len(reads) <= allowed, reads
    assert float(mem.last_parts["loss.memory"]) > 0


def test_train_step_reads_the_host_once(tmp_path):
    cfg = build_config(tiny_config("axbn", "cpu", epochs=1))
    trainer = Trainer(cfg, tmp_path)
    trainer._set_stage(False)
    loader = trainer.train_loader
    loader.batch_sampler.set_epoch(1)
    images, labels, *_ = next(iter(loader))
    from harness.core.xml import split_halves

    halves = split_halves(labels)
    labels = torch.searchsorted(trainer.classes, labels)
    trainer.train_step(images, labels, trainer.optimizer, halves)  # prototypes initialised
    with host_reads_from(str(ROOT / "harness")) as reads:
        parts = trainer.train_step(images, labels, trainer.optimizer, halves)
    assert reads == [r for r in reads if "trainer.py" in r] and len(reads) == 1, reads
    assert set(parts) == {"loss", "loss.batch", "loss.memory", "loss.xml"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    trainer.close()


# ---------------------------------------------------------------- loaders


@pytest.mark.slow
def test_persistent_training_loader_is_deterministic_per_batch(tmp_path):
    """Augmented batches depend on (seed, epoch, batch) only: not on the worker count,
    nor on whether the loader lived through earlier epochs (a resumed run)."""
    from harness.core.loaders import training_loader
    from harness.data.registry import create_datasets
    from harness.data.sampler import ClassBalancedBatchSampler

    cfg = build_config(tiny_config("none", "cpu", epochs=1))
    data = create_datasets(cfg.data.model_copy(update={"augment": "standard"}), 0, (0.5,) * 3, (0.25,) * 3)

    def epoch_batches(loader, epoch):
        loader.batch_sampler.set_epoch(epoch)
        return [batch[0] for batch in loader]

    def new_loader(workers):
        sampler = ClassBalancedBatchSampler(data.train.labels, 16, 4, seed=0, iters_per_epoch=3)
        return training_loader(data.train, sampler, seed=0, workers=workers, pin_memory=False)

    persistent = new_loader(2)
    first, second = epoch_batches(persistent, 1), epoch_batches(persistent, 2)
    resumed = epoch_batches(new_loader(1), 2)
    assert len(second) == 3 and all(torch.equal(a, b) for a, b in zip(second, resumed))
    assert not torch.equal(first[0], second[0])  # epochs differ
    assert persistent._iterator is not None and persistent._iterator._workers  # workers kept


# ---------------------------------------------------------------- harness doctor


@pytest.mark.slow
def test_doctor_passes_on_this_cpu_machine_and_says_so(harness_cli):
    """The whole self-check on the CPU path (Ray isolation: test_zero_gpu_trials_...)."""

    code, out, err = harness_cli(["doctor", "--no-ray"])
    assert code == 0, out + err
    for row in ("NVIDIA driver", "driver vs torch CUDA", "torch CUDA", "faiss / retrieval search",
                "mixed precision", "2-rank collectives", "train: every memory kind + XML",
                "kill + resume", "evaluate best.pt", "throughput"):
        assert row in out, row
    assert "2 loader workers" in out
    if not torch.cuda.is_available():
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


def test_doctor_require_gpu_fails_without_a_usable_gpu():
    from harness.doctor import FAIL, PASS, check_torch

    check, device = check_torch(torch.cuda.device_count(), require_gpu=True)
    if torch.cuda.is_available():
        assert check.verdict == PASS and device.type == "cuda"
    else:
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
    from harness.doctor_checks import driver_mismatch

    problem = driver_mismatch("2.14.1", build, driver, cuda)
    assert (problem is None) == ok
    if not ok:
        assert "\n" not in problem
        assert f"CUDA {build}" in problem and driver in problem  # both versions named
        assert f"CUDA <= {cuda // 1000}.{cuda % 1000 // 10}" in problem
        assert "install driver >=" in problem and "torch build for CUDA" in problem


def test_driver_check_names_both_versions_on_a_too_old_driver(monkeypatch):
    import harness.doctor_checks as dc

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
    from harness.doctor_checks import throughput_verdict
    from harness.throughput import vcpus_needed

    check = throughput_verdict(gpu, per_cpu, cpus, require)
    assert check.verdict == verdict
    short = gpu == 1200 and cpus == 8
    assert check.detail.startswith("loader short:") == short
    if short:
        assert "8 vCPUs per GPU feed about 945 images/s, the GPU trains 1200/s" in check.detail
        assert f">= {vcpus_needed(gpu, per_cpu)} vCPUs" in check.detail and "\n" not in check.detail


@pytest.mark.slow
def test_doctor_two_rank_collectives_pass_on_gloo_and_report_a_broken_backend():
    import time

    from harness.doctor_checks import PASS, check_collectives
    from harness.doctor_collectives import two_rank_problems

    t0 = time.perf_counter()
    check = check_collectives(torch.device("cpu"))
    assert check.verdict == PASS, check.detail
    assert "gloo on the CPU" in check.detail and "SyncBatchNorm" in check.detail
    assert time.perf_counter() - t0 < 90  # a doctor row: seconds, not minutes
    if not torch.cuda.is_available():
        problems = two_rank_problems("nccl", timeout_s=20)
        assert len(problems) == 2 and all(p.startswith("rank ") and "error" in p for p in problems)
