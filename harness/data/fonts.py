"""CJK font faces on this machine: scan font files, read their cmaps, merge duplicate designs.

Used by the ``glyphs`` dataset (:mod:`harness.data.glyphs`). A *face* is one font inside
a file (a ``.ttc``/``.otc`` collection holds several). fontTools reads each face's cmap,
so a character counts only where the face really maps it to a glyph: nothing is ever
rendered through a fallback font or as a "tofu" box.

Duplicates count once, by two rules (docs/architecture.md, "glyphs"):

1. **One collection, one design per weight.** A collection file bundles variants that
   share one glyph table (Noto CJK's JP/KR/SC/TC/HK and Mono faces, AR PL UKai/UMing
   CN/HK/TW/TW MBE, WenQuanYi Mono/Sharp): faces of one file with the same
   ``OS/2.usWeightClass`` are one design.
2. **Identical outlines across files.** Two faces whose renders of a fixed probe set of
   common ideographs are byte-identical (on at least ``IDENTICAL_SHARE`` of the probe
   characters both have) are one design: IPAPGothic = IPAGothic, LXGW WenKai Mono =
   LXGW WenKai, symlinked copies.

Of each group the face that covers the most ideographs is kept (ties: the first by
path and face index), so the result does not depend on the scan order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CJK Unified Ideographs (the basic block).
CJK_FIRST, CJK_LAST = 0x4E00, 0x9FFF
FONT_SUFFIXES = (".ttf", ".ttc", ".otf", ".otc")
# Where Linux, macOS and Windows keep their fonts.
DEFAULT_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/System/Library/Fonts",
    "/Library/Fonts",
    "~/Library/Fonts",
    "C:/Windows/Fonts",
)
# Common ideographs (frequent in Chinese and Japanese) that every CJK design draws.
PROBE_CHARACTERS = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
PROBE_SIZE = 32
IDENTICAL_SHARE = 0.9
# A face with fewer basic-block ideographs is a supplement (HanaMinB draws Extension B),
# not a CJK design of its own.
MIN_FACE_IDEOGRAPHS = 1000


@dataclass
class FontFace:
    """One face of one font file, with the CJK ideographs its cmap maps."""

    path: str  # resolved (real) path
    index: int  # face index inside a collection (0 for .ttf / .otf)
    family: str
    style: str
    weight: int
    sha256: str  # of the font file
    characters: frozenset[int] = field(repr=False, default_factory=frozenset)
    duplicates: list[str] = field(default_factory=list)  # "path:index" of the merged faces

    @property
    def key(self) -> str:
        return f"{self.path}:{self.index}"

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}".strip()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def font_files(dirs: list[str | Path]) -> list[Path]:
    """Font files under ``dirs`` (recursively), resolved, each once, sorted."""
    found: set[Path] = set()
    for d in dirs:
        root = Path(d).expanduser()
        if root.is_file() and root.suffix.lower() in FONT_SUFFIXES:
            found.add(root.resolve())
            continue
        if not root.is_dir():
            continue
        for dirpath, _, names in os.walk(root, followlinks=True):
            for n in names:
                if n.lower().endswith(FONT_SUFFIXES):
                    p = Path(dirpath, n)
                    if p.exists():
                        found.add(p.resolve())
    return sorted(found)


def read_faces(path: Path, min_ideographs: int = MIN_FACE_IDEOGRAPHS) -> list[FontFace]:
    """The faces of one font file that map ``min_ideographs`` CJK ideographs or more ([] if unreadable)."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    try:
        if path.suffix.lower() in (".ttc", ".otc"):
            count = len(TTCollection(str(path), lazy=True).fonts)
        else:
            count = 1
    except (TTLibError, OSError, AssertionError, KeyError, ValueError, IndexError):
        return []
    digest = None
    faces = []
    for i in range(count):
        try:
            font = TTFont(str(path), fontNumber=i, lazy=True)
            cmap = font.getBestCmap() or {}
            glyph_order = set(font.getGlyphOrder())
            chars = frozenset(c for c, g in cmap.items()
                              if CJK_FIRST <= c <= CJK_LAST and g != ".notdef" and g in glyph_order)
            if not chars or len(chars) < min_ideographs:
                continue
            names = font["name"]
            family = names.getDebugName(16) or names.getDebugName(1) or path.stem
            style = names.getDebugName(17) or names.getDebugName(2) or ""
            weight = int(font["OS/2"].usWeightClass) if "OS/2" in font else 400
        except (TTLibError, OSError, AssertionError, KeyError, ValueError, IndexError, AttributeError):
            continue  # a damaged face is skipped, not fatal: the others may be fine
        if digest is None:
            digest = sha256_file(path)
        faces.append(FontFace(str(path), i, family, style, weight, digest, chars))
    return faces


def scan_faces(dirs: list[str | Path] | None = None, min_ideographs: int = MIN_FACE_IDEOGRAPHS) -> list[FontFace]:
    """All faces with CJK ideographs under ``dirs`` (default: the system font folders)."""
    faces: list[FontFace] = []
    for path in font_files(list(dirs) if dirs else list(DEFAULT_FONT_DIRS)):
        faces.extend(read_faces(path, min_ideographs))
    return faces


def _preference(face: FontFace) -> tuple:
    # Most ideographs first, then a fixed order: the kept face does not depend on the scan.
    return (-len(face.characters), len(face.family), face.path, face.index)


def _merge(groups: list[list[FontFace]]) -> list[FontFace]:
    kept = []
    for group in groups:
        group = sorted(group, key=_preference)
        head = group[0]
        head.duplicates = sorted({*head.duplicates, *(d for f in group[1:] for d in [f.key, *f.duplicates])})
        kept.append(head)
    return sorted(kept, key=lambda f: (f.path, f.index))


# ---------------------------------------------------------------- rendering

GLYPH_SCALE = 0.875  # font size / canvas: CJK ink spans ~90% of the em, this leaves a margin


def load_font(face: FontFace, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(face.path, size=max(1, int(round(GLYPH_SCALE * size))), index=face.index)


def render_glyph(font, char: str, size: int):
    """``char`` in ``font`` on a white ``size``² grey canvas, its ink box centred."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 255)
    x0, y0, x1, y1 = font.getbbox(char)
    if x1 <= x0 or y1 <= y0:
        return image
    ImageDraw.Draw(image).text(((size - x0 - x1) // 2, (size - y0 - y1) // 2), char, font=font, fill=0)
    return image


def probe_renders(face: FontFace, size: int = PROBE_SIZE) -> dict[int, bytes]:
    """Rendered probe characters of ``face`` (character -> raw 8-bit pixels)."""
    font = load_font(face, size)
    return {ord(c): render_glyph(font, c, size).tobytes()
            for c in PROBE_CHARACTERS if ord(c) in face.characters}


def same_outlines(a: dict[int, bytes], b: dict[int, bytes]) -> bool:
    shared = [c for c in a if c in b]
    if len(shared) < 8:
        return False
    same = sum(a[c] == b[c] for c in shared)
    return same >= IDENTICAL_SHARE * len(shared)


def distinct_faces(faces: list[FontFace]) -> list[FontFace]:
    """``faces`` with each design counted once (the two rules of the module docstring)."""
    # Rule 1: one design per (collection file, weight).
    by_file: dict[tuple, list[FontFace]] = {}
    for f in faces:
        collection = f.path.lower().endswith((".ttc", ".otc"))
        key = (f.path, f.weight) if collection else (f.path, f.index)
        by_file.setdefault(key, []).append(f)
    merged = _merge(list(by_file.values()))
    # Rule 2: identical probe renders across files (same weight only: cheaper, and a
    # different weight never draws identical outlines).
    renders = {f.key: probe_renders(f) for f in merged}
    groups: list[list[FontFace]] = []
    for f in merged:
        for g in groups:
            if g[0].weight == f.weight and same_outlines(renders[g[0].key], renders[f.key]):
                g.append(f)
                break
        else:
            groups.append([f])
    return _merge(groups)


def coverage(faces: list[FontFace]) -> np.ndarray:
    """Faces per ideograph, indexed by ``codepoint - CJK_FIRST``."""
    counts = np.zeros(CJK_LAST - CJK_FIRST + 1, dtype=np.int64)
    for f in faces:
        idx = np.fromiter(f.characters, dtype=np.int64, count=len(f.characters)) - CJK_FIRST
        counts[idx] += 1
    return counts
