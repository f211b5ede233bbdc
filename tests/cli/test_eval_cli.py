"""`harness eval`: embed a split from a checkpoint; saved embeddings reproduce the metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness.config import build_config
from harness.core.checkpoint import save_checkpoint
from harness.core.evaluate import embed, evaluate_split, load_embeddings, metrics_of, save_embeddings
from harness.core.components import build_model
from harness.data import create_datasets
from harness.errors import HarnessError

CFG = {
    "seed": 3,
    "data": {"name": "digits", "image_size": 16},
    "model": {"backbone": "tiny_cnn_small", "embedding_size": 16},
    "eval": {"ks": [1, 2, 4]},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    config = build_config(CFG)
    model = build_model(config)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": config.model_dump(mode="json")}, path)
    return path


def _printed_metrics(output: str) -> dict[str, float]:
    out = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 2 and cells[0] and cells[1] and cells[0] != "metric":
            out[cells[0]] = float(cells[1])
    return out


@pytest.mark.parametrize("suffix", [".parquet", ".npz", ".npy"])
def test_eval_prints_metrics_and_saved_embeddings_reproduce_them(tmp_path, checkpoint, cli_runner, suffix):
    out = tmp_path / f"emb{suffix}"
    result = cli_runner.invoke(["eval", str(checkpoint), "--save-embeddings", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    printed = _printed_metrics(result.output)
    assert {"recall@1", "recall@2", "recall@4", "map@r", "r_precision", "n_queries", "n_skipped"} <= set(printed)
    saved = load_embeddings(out)
    assert saved["split"] == "test" and saved["gallery"] is None
    emb, labels = saved["query"]
    assert emb.shape == (896, 16) and set(np.unique(labels)) == {5, 6, 7, 8, 9}
    recomputed = metrics_of(saved, ks=(1, 2, 4))
    for key, value in printed.items():
        assert recomputed[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 < printed["recall@1"] <= 1.0 and printed["n_queries"] == 896


def test_eval_val_split_matches_evaluate_split(checkpoint, cli_runner):
    from harness.core.checkpoint import load_model

    result = cli_runner.invoke(["eval", str(checkpoint), "--split", "val", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    model, config = load_model(checkpoint)
    bundle = create_datasets(config.data, config.seed, model.mean, model.std)
    direct = evaluate_split(model, bundle.val, ks=(1, 2, 4), device="cpu", batch_size=64)
    printed = _printed_metrics(result.output)
    assert printed["n_queries"] == direct["n_queries"] == len(bundle.val.query)
    assert printed["map@r"] == pytest.approx(direct["map@r"], abs=1e-6)


def test_embed_returns_normalised_float32_and_labels(checkpoint):
    from harness.core.checkpoint import load_model

    model, config = load_model(checkpoint)
    bundle = create_datasets(config.data, config.seed, model.mean, model.std)
    emb, labels = embed(model, bundle.test.query, batch_size=100, device="cpu")
    assert emb.dtype.is_floating_point and str(emb.dtype) == "torch.float32"
    assert np.allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert np.array_equal(labels, bundle.test.query.labels)


def test_query_gallery_embeddings_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    embedded = {
        "query": (rng.standard_normal((7, 5)).astype(np.float32), np.arange(7) % 3),
        "gallery": (rng.standard_normal((9, 5)).astype(np.float32), np.arange(9) % 3),
    }
    for suffix in (".parquet", ".npz", ".npy"):
        back = load_embeddings(save_embeddings(embedded, tmp_path / f"e{suffix}", split="val"))
        assert back["split"] == "val"
        for role in ("query", "gallery"):
            assert np.array_equal(back[role][0], embedded[role][0])
            assert np.array_equal(back[role][1], embedded[role][1])
        assert metrics_of(back, (1,)) == metrics_of(embedded, (1,))


def test_bad_inputs_are_harness_errors(tmp_path, checkpoint, cli_runner):
    result = cli_runner.invoke(["eval", str(tmp_path / "missing.pt")])
    assert isinstance(result.exception, HarnessError)
    result = cli_runner.invoke(["eval", str(checkpoint), "--save-embeddings", str(tmp_path / "e.csv")])
    assert isinstance(result.exception, HarnessError) and "parquet" in str(result.exception)
    with pytest.raises(HarnessError):
        load_embeddings(tmp_path / "nothing.parquet")


def test_cli_exit_code_2_and_one_line_for_bad_dataset_root(tmp_path):
    code = "import sys; from harness.cli import main; sys.argv = sys.argv[1:]; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "harness", "data", "check", "sop", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Ebay_train.txt" in lines[0] and "expected layout" in lines[0]
