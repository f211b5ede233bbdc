"""The glyph-pretrained backbone: the ImageNet of the ``glyphs`` benchmarks.

The papers fine-tune an ImageNet-pretrained backbone; their claims about memories are
made in that regime, where embeddings drift slowly. Here the role of ImageNet is played
by glyph classes that never occur in the benchmark build (train, validation or test):
a classification network is trained on them, and ``model.pretrained: glyphs`` loads its
convolutional part into the same registry backbone (head and prototypes stay new).

A build (``cached_glyph_backbone(name)``, first use; or ``build_glyph_backbone``)::

    DIR/data/manifest.json, DIR/data/images.npy   the pretraining glyphs (a glyphs build
                                                  with every character of the benchmark
                                                  build excluded)
    DIR/backbone.pt                               the backbone's state dict
    DIR/manifest.json                             settings, per-epoch loss and accuracy,
                                                  seconds, the benchmark build it avoids,
                                                  SHA-256 of backbone.pt

It is deterministic: the same fonts, settings and software give a byte-identical
``backbone.pt`` (one intra-op thread during the build, seeded data order and shifts).
Cached beside the glyphs dataset (``$HARNESS_CACHE_DIR`` or ``~/.cache/metric-harness``),
keyed by fonts, settings and the torch version, under a file lock so parallel trials
build it once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import glyphs as glyph_data
from harness.errors import DataError

FORMAT_VERSION = 1
BACKBONE_FILE = "backbone.pt"
MANIFEST = "manifest.json"
DATA_DIR = "data"
# () -> a randomly initialised backbone with forward_features and num_features (the
# model registry's; passed in, so that this module does not import the model's).
BackboneFactory = Callable[[], torch.nn.Module]


@dataclass(frozen=True)
class GlyphPretraining:
    """What a pretrained backbone is made of (all in its manifest)."""

    backbone: str = "tiny_cnn_small"
    characters: int = 2000  # pretraining classes, none of them in the benchmark build
    min_faces: int = 12
    size: int = 32  # pixels, as the benchmark build
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.4  # SGD (Nesterov momentum 0.9), cosine to 0
    weight_decay: float = 5e-4
    shift: int = 2  # random translation of up to this many pixels (no flips: a
    # flipped glyph is another character)
    seed: int = 0
    min_face_ideographs: int = glyph_data.GlyphSettings.min_face_ideographs


def benchmark_characters(root: Path) -> set[int]:
    """Every code point of a glyphs build, whatever its split."""
    return {int(c["codepoint"]) for c in glyph_data.read_manifest(root)["classes"]}


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,S,S] grey -> [N,3,S,S], normalised as the glyphs reader's transform
    does for these backbones (mean = std = 0.5 per channel)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)  # a copy: the build is memory-mapped
    return x.sub_(0.5).div_(0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _shifted(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """One random translation per batch, padded with white (1.0 after normalising)."""
    if shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
    padded = F.pad(x, (shift, shift, shift, shift), value=1.0)
    s = x.shape[-1]
    return padded[..., shift + dy: shift + dy + s, shift + dx: shift + dx + s]


def train_backbone(
    images: np.ndarray, labels: np.ndarray, cfg: GlyphPretraining, make_backbone: BackboneFactory
) -> tuple[dict, list[dict]]:
    """Train ``make_backbone()`` (``cfg.backbone``, randomly initialised) + a linear
    classifier on the pretraining glyphs.

    -> (the backbone's state dict, per-epoch {epoch, loss, accuracy}). Runs on the CPU
    on one intra-op thread, so the result is the same on every run.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # the layers' initialisation
        net = make_backbone()
        classes, y = np.unique(labels, return_inverse=True)
        head = torch.nn.Linear(net.num_features, len(classes))
        params = list(net.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
        x_all, y_all = _to_tensor(images), torch.as_tensor(y, dtype=torch.long)
        steps_per_epoch = len(x_all) // cfg.batch_size
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
        log = []
        net.train()
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(len(x_all), generator=gen)
            loss_sum = correct = seen = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size: (b + 1) * cfg.batch_size]
                x = _shifted(x_all[idx], cfg.shift, gen)
                logits = head(net.forward_features(x).mean(dim=(2, 3)))
                loss = F.cross_entropy(logits, y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += float((logits.argmax(1) == y_all[idx]).sum())
                seen += len(idx)
            log.append({"epoch": epoch, "loss": loss_sum / seen, "accuracy": correct / seen})
        return {k: v.detach().clone() for k, v in net.state_dict().items()}, log
    finally:
        torch.set_num_threads(threads)


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def build_glyph_backbone(
    out: str | Path,
    make_backbone: BackboneFactory,
    cfg: GlyphPretraining = GlyphPretraining(),
    benchmark_root: str | Path | None = None,
    font_dirs: list[str | Path] | None = None,
    log=print,
) -> dict:
    """Render the pretraining glyphs and train the backbone into ``out``; -> manifest.

    ``benchmark_root``: the glyphs build whose characters are excluded (default: the
    benchmarks' cached default build).
    """
    out = Path(out)
    t0 = time.perf_counter()
    bench = Path(benchmark_root) if benchmark_root is not None else glyph_data.cached_build()
    exclude = benchmark_characters(bench)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    settings = glyph_data.GlyphSettings(size=cfg.size, characters=cfg.characters, min_faces=cfg.min_faces,
                                        test_fraction=0.0, seed=cfg.seed,
                                        min_face_ideographs=cfg.min_face_ideographs)
    glyph_data.build_glyphs(tmp / DATA_DIR, settings, font_dirs=font_dirs, exclude=exclude)
    _, images, labels, _ = glyph_data.read_build(tmp / DATA_DIR)
    t_render = time.perf_counter() - t0
    log(f"glyph backbone: training {cfg.backbone} on {len(images)} images of {cfg.characters} characters "
        f"(none in the benchmark build), {cfg.epochs} epochs")
    state, history = train_backbone(np.asarray(images), labels, cfg, make_backbone)
    data = _state_bytes(state)
    (tmp / BACKBONE_FILE).write_bytes(data)
    manifest = {
        "format": FORMAT_VERSION,
        "settings": asdict(cfg),
        "benchmark_build": {"root": str(bench), "characters": len(exclude)},
        "images": int(len(images)),
        "history": history,
        "seconds": {"render": round(t_render, 1), "total": round(time.perf_counter() - t0, 1)},
        "torch": torch.__version__,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return manifest


def cache_key(cfg: GlyphPretraining) -> str:
    parts = [glyph_data.default_build_key(), asdict(cfg), FORMAT_VERSION, torch.__version__]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def cached_glyph_backbone(backbone: str, make_backbone: BackboneFactory) -> Path:
    """``backbone.pt`` of the pretrained ``backbone``, built on first use (once, locked)."""
    cfg = replace(GlyphPretraining(), backbone=backbone)
    root = glyph_data.cache_dir() / f"glyph-backbone-{backbone}-{cache_key(cfg)}"
    path = root / BACKBONE_FILE
    if path.is_file():
        return path
    with glyph_data.locked(glyph_data.cache_dir() / f".glyph-backbone-{root.name}.lock"):
        if not path.is_file():
            print(f"glyph backbone: building {root} (first use, a few minutes on 2 cores; "
                  "`harness data build glyph-backbone` builds it explicitly)", flush=True)
            try:
                build_glyph_backbone(root, make_backbone, cfg)
            except DataError as e:
                raise DataError(f"model.pretrained=glyphs: {e}") from None
    return path
