"""``data.image_cache``: decoded images resized once and kept as uint8 NumPy arrays.

Decoding a 500 px JPEG is a large share of what a loader worker does per image, every
epoch and every trial again. With the cache, the first load of an image decodes it,
crops its box (if any), shrinks its shorter side to ``floor(image_size / crop_pct)``
(256 for 224 px: timm's evaluation resize, so the random-resized crop still has the
whole picture to choose from) and stores the pixels as an ``.npy`` file; later loads
read that file instead of decoding the photo.

* Where: ``$HARNESS_CACHE_DIR/images/<short side>px/`` (default
  ``~/.cache/metric-harness``), one file per image, named by a hash of the image file's
  absolute path, size and modification time, its box and the short side: an edited or
  replaced photo gets a new entry, and trials with the same image size share entries.
* Written atomically (:mod:`harness.utils.atomic`), so parallel trials and loader workers may
  fill the same cache; the last writer wins with identical bytes.
* A corrupt entry (truncated, not an array, wrong shape) is rebuilt from the photo.
* Size: about ``3 × 256 × 341`` bytes (0.26 MB) per 4:3 image at 224 px, several times
  the JPEG; delete the folder to reclaim it.
* Pixels: the evaluation transform of a cached image is the same as without the cache
  (its resize to the short side is then the identity, the resize arithmetic being
  torchvision's); training crops are resampled from the 256 px image rather than from
  the photo, which changes the pixels of a crop slightly, not its content.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from harness.utils.atomic import atomic_write_bytes
from harness.errors import DataError
from harness.utils.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def cache_short_side(image_size: int, crop_pct: float) -> int:
    """The shorter side a cached image keeps: timm's evaluation resize (``scale_size``)."""
    return math.floor(image_size / crop_pct)


def resize_short_side(image: Image.Image, short: int) -> Image.Image:
    """Shrink ``image`` so its shorter side is ``short`` (bicubic, as the transforms);
    a smaller image is kept as is. The long side is truncated as torchvision's Resize
    does, so that Resize(short) of the result is the identity."""
    w, h = image.size
    if min(w, h) <= short:
        return image
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image.resize(size, Image.BICUBIC)


@dataclass(frozen=True)
class ImageCache:
    """The cache of one short side; small and picklable (it travels to loader workers)."""

    root: Path
    short_side: int

    @classmethod
    def for_size(cls, image_size: int, crop_pct: float, root: Path | None = None) -> "ImageCache":
        short = cache_short_side(image_size, crop_pct)
        return cls(Path(root or cache_dir() / "images") / f"{short}px", short)

    def entry(self, path: str, box) -> Path:
        """The cache file of image ``path`` (cropped to ``box``, or None)."""
        st = os.stat(path)
        box_key = "" if box is None else ",".join(f"{float(v):g}" for v in box)
        key = hashlib.sha256(
            f"{FORMAT_VERSION}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{box_key}\0{self.short_side}".encode()
        ).hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def load(self, path: str, box, decode: Callable[[], Image.Image]) -> Image.Image:
        """The cached image of ``path``, decoded with ``decode()`` and stored on a miss."""
        entry = self.entry(path, box)
        try:
            pixels = np.load(entry, allow_pickle=False)
            if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.size:
                return Image.fromarray(pixels)
            log.warning("image cache: %s holds a %s %s array, not an RGB image; rebuilding it from %s",
                        entry, pixels.dtype, pixels.shape, path)
        except (FileNotFoundError, NotADirectoryError):  # not cached yet (or no cache folder)
            pass
        except (OSError, ValueError, EOFError) as e:  # truncated or not an .npy file
            log.warning("image cache: %s is corrupt (%s); rebuilding it from %s", entry, e, path)
        image = resize_short_side(decode(), self.short_side)
        buf = io.BytesIO()
        np.save(buf, np.asarray(image, dtype=np.uint8), allow_pickle=False)
        try:
            atomic_write_bytes(entry, buf.getvalue())
        except OSError as e:
            # Not a decode error: a full or read-only cache must stop the run, not skip images.
            raise DataError(
                f"data.image_cache: cannot write {entry} ({e.strerror or e}); free space there, point "
                "HARNESS_CACHE_DIR at a writable folder, or set data.image_cache=false"
            ) from None
        return image
