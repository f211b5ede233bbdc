"""Export a trained embedding model: ONNX (checked with onnxruntime) and ``torch.export``.

The exported graph maps a preprocessed image batch ``float32 [N, 3, S, S]`` to the
L2-normalised embeddings ``[N, d]`` (``ModelOutput.embeddings``); the batch dimension is
dynamic. The preprocessing a caller must apply (resize, centre crop, mean / std) is the
model's eval transform and is written beside the artefact as ``<artefact>.json`` (``model.onnx.json``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from harness.utils.atomic import atomic_write_json
from harness.errors import ConfigError, HarnessError

# Embeddings are unit vectors; float32 kernels of PyTorch and onnxruntime differ by ~1e-7
# per element, so a max abs difference above this means a wrong graph, not rounding.
DEFAULT_TOLERANCE = 1e-4
OPSET = 18
CHECK_BATCH_SIZES = (1, 5)


class ExportError(HarnessError):
    """The exported model does not reproduce the PyTorch embeddings (or cannot be written)."""


class EmbeddingsOnly(torch.nn.Module):
    """``EmbeddingModel`` -> its L2-normalised embeddings only (exporters want tensors out)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).embeddings


def preprocessing(config, model) -> dict:
    """The eval transform of ``harness.data.transforms.eval_transform``, as data."""
    from harness.data.registry import get_dataset_info

    crop_pct = get_dataset_info(config.data.name).crop_pct
    size = config.data.image_size
    return {
        "input": "float32 [N, 3, H, W], RGB, pixel values scaled to [0, 1] then (x - mean) / std",
        "image_size": size,
        "resize_shorter_side": int(math.floor(size / crop_pct)),
        "center_crop": size,
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "mean": list(model.mean),
        "std": list(model.std),
        "output": f"float32 [N, {config.model.embedding_size}], L2-normalised embeddings (cosine = dot product)",
    }


def _example(image_size: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=g)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--onnx needs {', '.join(missing)}: pip install 'metric-harness[export]' (onnx, onnxruntime, onnxscript)"
        )


def export_onnx(model: torch.nn.Module, path: Path, image_size: int) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with a dynamic batch dimension."""
    _require("onnx", "onnxscript", "onnxruntime")
    wrapped = EmbeddingsOnly(model).eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(image_size, 2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        # The torch.export-based exporter (onnxscript); weights inside the one file.
        torch.onnx.export(
            wrapped, (example,), str(path),
            input_names=["images"], output_names=["embeddings"],
            dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, dynamo=True,
            external_data=False, verbose=False,
        )
    return path


def check_onnx(path: Path, model: torch.nn.Module, inputs: list[torch.Tensor],
               tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Max abs difference onnxruntime vs PyTorch over ``inputs``; ExportError above ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapped = EmbeddingsOnly(model).eval().cpu()
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = wrapped(x).numpy()
        got = session.run(["embeddings"], {"images": x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"{path}: onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= tolerance:
        raise ExportError(
            f"{path}: onnxruntime embeddings differ from PyTorch by {worst:.3g} > tolerance {tolerance:g}; "
            "the exported graph is wrong for this model (try --torch-export)"
        )
    return worst


def export_program(model: torch.nn.Module, path: Path, image_size: int,
                   tolerance: float = DEFAULT_TOLERANCE) -> float:
    """``torch.export`` to ``path`` (a ``.pt2`` ExportedProgram, dynamic batch; load it with
    ``torch.export.load(path).module()``, no harness needed); -> max abs difference."""
    wrapped = EmbeddingsOnly(model).eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(wrapped, (_example(image_size, 2),), dynamic_shapes={"images": {0: batch}})
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
        worst = max(float((loaded(x) - wrapped(x)).abs().max()) for x in
                    (_example(image_size, b, seed=b) for b in CHECK_BATCH_SIZES))
    if not worst <= tolerance:
        raise ExportError(f"{path}: torch.export embeddings differ from PyTorch by {worst:.3g} > {tolerance:g}")
    return worst


def export_checkpoint(checkpoint: Path, onnx_path: Path | None = None, program_path: Path | None = None,
                      tolerance: float = DEFAULT_TOLERANCE, check_images: torch.Tensor | None = None) -> dict:
    """Export a ``best.pt`` / ``last.pt``; write ``<artefact>.json`` beside each artefact.

    The ONNX model is checked on random batches of sizes ``CHECK_BATCH_SIZES`` (the batch
    is dynamic) plus ``check_images`` when given. Returns the recorded metadata.
    """
    from harness.core.checkpoint import load_model

    if onnx_path is None and program_path is None:
        raise ConfigError("nothing to export: give --onnx FILE and/or --torch-export FILE.pt2")
    model, config = load_model(checkpoint)
    size = config.data.image_size
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "backbone": config.model.backbone,
        "embedding_size": config.model.embedding_size,
        "preprocessing": preprocessing(config, model),
    }
    inputs = [_example(size, b, seed=b) for b in CHECK_BATCH_SIZES]
    if check_images is not None and len(check_images):
        inputs.append(check_images)
    written = {}
    if onnx_path is not None:
        export_onnx(model, Path(onnx_path), size)
        diff = check_onnx(Path(onnx_path), model, inputs, tolerance)
        written["onnx"] = {
            "path": str(onnx_path), "opset": OPSET, "dynamic_axes": {"images": "batch", "embeddings": "batch"},
            "check": {"runtime": "onnxruntime CPUExecutionProvider", "batch_sizes": [len(x) for x in inputs],
                      "max_abs_diff": diff, "tolerance": tolerance},
        }
    if program_path is not None:
        diff = export_program(model, Path(program_path), size, tolerance)
        written["torch.export"] = {"path": str(program_path), "check": {
            "batch_sizes": list(CHECK_BATCH_SIZES), "max_abs_diff": diff, "tolerance": tolerance}}
    for kind, info in written.items():
        p = Path(info["path"])
        atomic_write_json(p.with_name(p.name + ".json"), {**meta, "format": kind, **info})
    return {**meta, **written}
