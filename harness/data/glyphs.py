"""``glyphs``: one class per CJK ideograph, one image per distinct font face that has it.

A many-class, few-images-per-class retrieval dataset (the regime of SOP) built from font
packages alone, so it runs anywhere. ``build_glyphs`` scans the CJK faces
(:mod:`harness.data.fonts`), keeps the ideographs that at least ``min_faces`` distinct
faces map, samples ``characters`` of them (seeded), splits them class-disjointly into
train / test (seeded, like SOP's halves) and renders each (character, face) pair once.

Layout of a build (``harness data build glyphs --out DIR``)::

    DIR/manifest.json   fonts (path, SHA-256, face index, family/style, weight, merged
                        duplicates), build settings, classes (character, split, faces)
    DIR/images.npy      uint8 [N, size, size], black ink on white, in manifest order:
                        classes by code point, then faces by face id

Rendering: the glyph's ink box is centred on the canvas at font size
``GLYPH_SCALE × size``; a glyph that draws nothing is dropped (and a character left
with fewer than ``min_faces`` images is replaced by the next sampled one). The same
font files and Pillow/FreeType give byte-identical images.

Without ``data.root`` the first use builds the default settings into a cache folder
(``$HARNESS_CACHE_DIR`` or ``~/.cache/metric-harness``), keyed by the font files'
paths, sizes and modification times, under a file lock so parallel trials build once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tokenize
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness.data import fonts as fontscan
from harness.data.fonts import GLYPH_SCALE, load_font, render_glyph
from harness.data.datasets import ArrayImageDataset, DatasetParts, RetrievalSplit, register_dataset
from harness.data.annotations import read_text, short
from harness.errors import DataError
from harness.utils.paths import cache_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.npy"
LAYOUT = "root/manifest.json and root/images.npy as written by `harness data build glyphs --out DIR`"
DEBIAN_PACKAGES = (
    "fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei fonts-wqy-microhei "
    "fonts-ipafont-gothic fonts-ipafont-mincho fonts-unfonts-core fonts-hanazono fonts-lxgw-wenkai"
)


@dataclass(frozen=True)
class GlyphSettings:
    """What a build is made of (all in the manifest). The defaults are the auto-built
    dataset of the demo and the glyphs benchmarks (docs/glyphs.md)."""

    size: int = 32  # pixels (square)
    characters: int = 1600  # classes sampled from the eligible ideographs
    min_faces: int = 12  # distinct faces a character needs (of ~19 from the Debian packages)
    test_fraction: float = 0.5  # of the classes, class-disjoint (SOP: ~0.5)
    seed: int = 0
    min_face_ideographs: int = fontscan.MIN_FACE_IDEOGRAPHS  # smaller faces are supplements


# ---------------------------------------------------------------- building


def too_few_faces_error(found: int, need: int, dirs) -> DataError:
    where = ", ".join(str(d) for d in dirs) if dirs else "the system font folders"
    return DataError(
        f"glyphs: {found} distinct CJK font face(s) with ideographs under {where}, need at least {need}; "
        f"install them (Debian/Ubuntu: apt-get install {DEBIAN_PACKAGES}) or pass --fonts DIR "
        "for other font folders (macOS: /System/Library/Fonts, Windows: C:/Windows/Fonts)"
    )


def build_glyphs(
    out: str | Path,
    settings: GlyphSettings = GlyphSettings(),
    font_dirs: list[str | Path] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> dict:
    """Render the dataset into ``out`` (written to a temporary folder, then renamed).

    Returns the manifest. ``on_progress(done, total)`` is called per rendered character.
    ``exclude``: code points never sampled (the pretraining set leaves out every
    character of the benchmark build, :mod:`harness.pretraining.glyphs`).
    """
    out = Path(out)
    faces = fontscan.distinct_faces(fontscan.scan_faces(font_dirs, settings.min_face_ideographs))
    if len(faces) < settings.min_faces:
        raise too_few_faces_error(len(faces), settings.min_faces, font_dirs)
    counts = fontscan.coverage(faces)
    eligible = np.flatnonzero(counts >= settings.min_faces) + fontscan.CJK_FIRST
    if exclude:
        eligible = eligible[~np.isin(eligible, np.fromiter(exclude, dtype=np.int64))]
    if len(eligible) < settings.characters:
        raise DataError(
            f"glyphs: only {len(eligible)} ideographs have at least {settings.min_faces} faces, "
            f"{settings.characters} requested; lower --characters or --min-faces, or install more fonts"
        )
    rng = np.random.default_rng(settings.seed)
    candidates = rng.permutation(eligible).tolist()
    loaded = [load_font(f, settings.size) for f in faces]
    kept: dict[int, list[tuple[int, np.ndarray]]] = {}
    for cp in candidates:
        if len(kept) == settings.characters:
            break
        char = chr(cp)
        images = []
        for fid, (face, font) in enumerate(zip(faces, loaded)):
            if cp not in face.characters:
                continue
            pixels = np.asarray(render_glyph(font, char, settings.size), dtype=np.uint8)
            if pixels.min() < 255:  # a mapped glyph that draws nothing is no image
                images.append((fid, pixels))
        if len(images) >= settings.min_faces:
            kept[cp] = images
            if on_progress is not None:
                on_progress(len(kept), settings.characters)
    if len(kept) < settings.characters:
        raise DataError(
            f"glyphs: only {len(kept)} ideographs rendered in at least {settings.min_faces} faces; "
            "lower --characters or --min-faces"
        )
    codepoints = sorted(kept)
    n_test = int(round(settings.test_fraction * len(codepoints)))
    test = set(np.random.default_rng([settings.seed, 1]).permutation(codepoints)[:n_test].tolist())
    classes, stack = [], []
    for cp in codepoints:
        classes.append({"codepoint": cp, "char": chr(cp), "split": "test" if cp in test else "train",
                        "faces": [fid for fid, _ in kept[cp]]})
        stack.extend(p for _, p in kept[cp])
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": "glyphs",
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "render": {"glyph_scale": GLYPH_SCALE, "mode": "L, black ink on white, ink box centred"},
        "images": len(stack),
        "excluded_characters": len(exclude),
        "faces": [{"id": i, "path": f.path, "sha256": f.sha256, "face_index": f.index,
                   "family": f.family, "style": f.style, "weight": f.weight,
                   "ideographs": len(f.characters), "duplicates": f.duplicates}
                  for i, f in enumerate(faces)],
        "classes": classes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.save(tmp / IMAGES, np.stack(stack).astype(np.uint8))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return manifest


# ---------------------------------------------------------------- reading


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    rebuild = "rebuild with `harness data build glyphs`"
    text = read_text(path, "glyphs", LAYOUT)
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise DataError(f"glyphs: {path}:{getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)}); "
                        f"{rebuild}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or "classes" not in manifest:
        raise DataError(f"glyphs: {path}: not a format-{FORMAT_VERSION} glyphs manifest; {rebuild}")
    if not isinstance(manifest.get("faces"), list):
        raise DataError(f"glyphs: {path}: faces: expected the list of font faces; {rebuild}")
    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes:
        raise DataError(f"glyphs: {path}: classes: expected a non-empty list of classes; {rebuild}")
    seen: dict[int, int] = {}
    for i, c in enumerate(classes):
        where = f"glyphs: {path}: classes[{i}]"
        if not isinstance(c, dict):
            raise DataError(f"{where}: {short(c)}; expected an object with codepoint, split and faces; {rebuild}")
        cp = c.get("codepoint")
        if isinstance(cp, bool) or not isinstance(cp, int) or not 0 <= cp <= 0x10FFFF:
            raise DataError(f"{where}.codepoint: {short(cp)} is not a code point; expected an integer; {rebuild}")
        if c.get("split") not in ("train", "test"):
            raise DataError(f"{where}.split: {short(c.get('split'))}; expected 'train' or 'test'; {rebuild}")
        faces = c.get("faces")
        if not isinstance(faces, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in faces):
            raise DataError(f"{where}.faces: {short(faces)}; expected a list of face ids (integers); {rebuild}")
        if cp in seen:
            raise DataError(f"{where}.codepoint: {cp} is listed twice (first at classes[{seen[cp]}]); expected each "
                            f"character once (one class in one split); {rebuild}")
        seen[cp] = i
    return manifest


def read_build(root: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, images [N,S,S], labels (code points) [N], face ids [N])."""
    manifest = read_manifest(root)
    path = Path(root) / IMAGES
    try:
        with warnings.catch_warnings():  # numpy warns (Python 2 header, overflow) on mutated headers
            warnings.simplefilter("ignore")
            images = np.load(path, mmap_mode="r", allow_pickle=False)
    # A mutated header reaches numpy's header parser (ast.literal_eval, tokenize): besides
    # ValueError it raises SyntaxError, tokenize.TokenError, TypeError (a bytes key sorted
    # with str keys) and OverflowError (a dimension beyond a C long).
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, TypeError, OverflowError,
            MemoryError) as e:
        text = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {text}" if text else type(e).__name__
        raise DataError(f"glyphs: {path} is missing, truncated or not a NPY file ({reason}); expected the uint8 "
                        "NPY array `harness data build glyphs` writes; rebuild with `harness data build glyphs`") from None
    labels = np.array([c["codepoint"] for c in manifest["classes"] for _ in c["faces"]], dtype=np.int64)
    face_ids = np.array([f for c in manifest["classes"] for f in c["faces"]], dtype=np.int64)
    if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"glyphs: {path} holds an array of shape {getattr(images, 'shape', '?')} and dtype "
                        f"{getattr(images, 'dtype', '?')}; expected uint8 [images, size, size]; rebuild with "
                        "`harness data build glyphs`")
    if len(images) != len(labels):
        raise DataError(f"glyphs: {path} holds {len(images)} images, the manifest "
                        f"lists {len(labels)}; rebuild with `harness data build glyphs`")
    return manifest, images, labels, face_ids


def default_build_key(settings: GlyphSettings = GlyphSettings()) -> str:
    """The cache key of a build: installed fonts, settings and format."""
    return hashlib.sha256(json.dumps([fonts_fingerprint(), settings.__dict__, FORMAT_VERSION],
                                     sort_keys=True).encode()).hexdigest()[:12]


def fonts_fingerprint(dirs=None) -> str:
    """A cheap key of the installed fonts: paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in fontscan.font_files(list(dirs) if dirs else list(fontscan.DEFAULT_FONT_DIRS)):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_build(settings: GlyphSettings = GlyphSettings()) -> Path:
    """The default build in the cache folder, built on first use (once, under a lock)."""
    key = default_build_key(settings)
    root = cache_dir() / f"glyphs-{key}"
    if (root / MANIFEST).is_file():
        return root
    with locked(cache_dir() / f".glyphs-{key}.lock"):
        if not (root / MANIFEST).is_file():  # another process may have built it meanwhile
            print(f"glyphs: building the dataset into {root} (first use; `harness data build glyphs` "
                  "builds it explicitly)", flush=True)
            build_glyphs(root, settings)
    return root


@register_dataset("glyphs", layout=LAYOUT, needs_root=False, crop_pct=1.0)
def read_glyphs(root: Path | None = None) -> DatasetParts:
    manifest, images, labels, _ = read_build(root if root is not None else cached_build())
    split = {c["codepoint"]: c["split"] for c in manifest["classes"]}
    is_test = np.array([split[int(cp)] == "test" for cp in labels], dtype=bool)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return DatasetParts(
        train=ArrayImageDataset(images[train], labels[train]),
        test=RetrievalSplit(ArrayImageDataset(images[test], labels[test])),
    )
