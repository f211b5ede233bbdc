"""harness/core/metrics.py's search backends: one faiss distribution, the torch search
against faiss (ties included), and the fallback to the CPU on a GPU error."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core import metrics as M
from harness.doctor.fixtures import tie_heavy_embeddings

ROOT = Path(__file__).resolve().parents[2]

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
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.core.metrics"):
        assert M.retrieval_metrics(x, y, ks=(1, 4), use_gpu=True) == expected
    assert len(caplog.records) == 1


