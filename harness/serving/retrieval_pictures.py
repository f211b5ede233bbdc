"""Pictures of what a model retrieves: its worst queries and a few typical successes.

From a split's embeddings, ``nearest_neighbours`` keeps, for every query, its top-``k``
gallery items (self excluded in one-set mode) with their cosine similarities, and the
similarity of its best positive. That small record is what a reproduction saves
(``retrievals.npz``, with the dataset positions of the embedded items) and what the
report and ``harness eval --show`` draw from.

The worst queries are the most confidently wrong ones (largest sim(top-1) - sim(best
positive)), then the narrowest wins; typical successes are right at top-1 with the
median gap sim(best positive) - sim(best wrong).

Each picked query becomes one PNG strip: the query (blue frame), then its top-``k``
(green frame: same label, red: another label), each captioned with its similarity.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harness.results.contract import (
    RETRIEVALS_FILE,
    best_checkpoint,
)

SAVED_K = 10
THUMB = 96
COLOURS = {"query": (40, 90, 200), "right": (30, 150, 60), "wrong": (210, 40, 40)}


@dataclass
class Neighbours:
    """Per query (row): top-k gallery rows, similarities, and its best positive."""

    ids: np.ndarray  # int64 [Nq, k], gallery rows (-1: fewer than k)
    sims: np.ndarray  # float32 [Nq, k]
    best_positive_sim: np.ndarray  # float32 [Nq], -inf: no positive in the gallery
    query_labels: np.ndarray  # int64 [Nq]
    gallery_labels: np.ndarray  # int64 [Ng]
    query_positions: np.ndarray  # int64 [Nq], position in the query dataset
    gallery_positions: np.ndarray  # int64 [Ng], position in the gallery dataset
    one_set: bool

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in self.__dict__.items()})
        return path

    @classmethod
    def load(cls, path: Path) -> "Neighbours":
        with np.load(path) as z:
            return cls(**{k: z[k] for k in z.files if k != "one_set"}, one_set=bool(z["one_set"]))


def nearest_neighbours(query: np.ndarray, query_labels, gallery: np.ndarray | None = None,
                       gallery_labels=None, k: int = SAVED_K, query_positions=None,
                       gallery_positions=None) -> Neighbours:
    """Exact cosine top-``k`` (``gallery=None``: one-set, each query's own row excluded)."""
    from harness.core.exact_search import ExactCosineSearch, TorchExactSearch, gpu_available, normalised

    one_set = gallery is None
    q = normalised(query)
    g = q if one_set else normalised(gallery)
    ql = np.asarray(query_labels, np.int64)
    gl = ql if one_set else np.asarray(gallery_labels, np.int64)
    n_q, n_g = len(q), len(g)
    k = max(0, min(k, n_g - (1 if one_set else 0)))
    ids = np.full((n_q, k), -1, np.int64)
    sims = np.full((n_q, k), -np.inf, np.float32)
    if k and n_q:
        search = TorchExactSearch(g, "cuda") if gpu_available() else ExactCosineSearch(g)
        s, i = search.search(q, k + (1 if one_set else 0))
        for r in range(n_q):
            keep = (i[r] != r) if one_set else np.ones(len(i[r]), bool)
            keep &= i[r] >= 0
            ids[r, :min(k, keep.sum())] = i[r][keep][:k]
            sims[r, :min(k, keep.sum())] = s[r][keep][:k]
    # best positive per query: one small matrix product per class
    best = np.full(n_q, -np.inf, np.float32)
    g_by_label: dict[int, np.ndarray] = {}
    for row, lab in enumerate(gl.tolist()):
        g_by_label.setdefault(lab, []).append(row)
    for lab in np.unique(ql):
        qrows = np.flatnonzero(ql == lab)
        grows = np.asarray(g_by_label.get(int(lab), []), np.int64)
        if len(grows) == 0:
            continue
        m = q[qrows] @ g[grows].T
        if one_set:
            m[qrows[:, None] == grows[None, :]] = -np.inf
        best[qrows] = m.max(axis=1)
    qp = np.arange(n_q) if query_positions is None else np.asarray(query_positions, np.int64)
    gp = qp if one_set else (np.arange(n_g) if gallery_positions is None else np.asarray(gallery_positions, np.int64))
    return Neighbours(ids, sims, best, ql, gl, qp, gp, one_set)


@dataclass
class PickedQuery:
    kind: str  # "worst" | "typical"
    row: int  # query row in Neighbours
    margin: float


def pick_queries(nb: Neighbours, n_worst: int, n_typical: int = 3) -> list[PickedQuery]:
    """The ``n_worst`` hardest queries, then ``n_typical`` median successes.

    Difficulty: the margin sim(top-1) - sim(best positive) when the top-1 is wrong (the
    more confidently wrong, the worse), else minus the gap sim(best positive) - sim(best
    wrong) (a narrow win is harder than a wide one); equal difficulty: the later first
    right answer is worse. A model with few errors thus still shows its closest calls.
    """
    k = nb.ids.shape[1]
    valid = np.isfinite(nb.best_positive_sim) & (k > 0)
    if not valid.any():
        return []
    correct = (nb.gallery_labels[np.clip(nb.ids, 0, None)] == nb.query_labels[:, None]) & (nb.ids >= 0)
    first_right = np.where(correct.any(1), correct.argmax(1), k)
    margin = nb.sims[:, 0] - nb.best_positive_sim
    best_wrong = np.where(~correct & (nb.ids >= 0), nb.sims, -np.inf).max(1)
    # no wrong answer in the top-k: the best wrong one is at most the k-th similarity
    gap = nb.best_positive_sim - np.where(np.isfinite(best_wrong), best_wrong, nb.sims[:, -1])
    difficulty = np.where(correct[:, 0], -gap, margin)
    difficulty = np.where(valid, difficulty, -np.inf)
    order = np.lexsort((-first_right, -difficulty))  # hardest first
    worst = [int(r) for r in order[:n_worst] if valid[r]]
    picked = [PickedQuery("worst", r, float(margin[r])) for r in worst]
    ok = np.setdiff1d(np.flatnonzero(valid & correct[:, 0]), worst)
    if len(ok) and n_typical:
        median = np.median(gap[ok])
        closest = ok[np.argsort(np.abs(gap[ok] - median), kind="stable")[:n_typical]]
        picked += [PickedQuery("typical", int(r), float(margin[r])) for r in sorted(closest)]
    return picked


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _thumb(image: Image.Image | None, frame: tuple[int, int, int], caption: str, sub: str, size: int) -> Image.Image:
    pad, text_h = 4, 30
    tile = Image.new("RGB", (size + 2 * pad, size + 2 * pad + text_h), "white")
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, size + 2 * pad - 1, size + 2 * pad - 1], fill=frame)
    if image is None:
        inner = Image.new("RGB", (size, size), (230, 230, 230))
        ImageDraw.Draw(inner).text((size // 2 - 20, size // 2 - 6), "missing", fill="black", font=_font(11))
    else:
        inner = image.convert("RGB")
        inner.thumbnail((size, size), Image.Resampling.BICUBIC)
        if inner.size != (size, size):  # pad to a square, centred
            canvas = Image.new("RGB", (size, size), "white")
            canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
            inner = canvas
        if min(image.size) < size // 3:  # tiny images: nearest-neighbour so pixels stay crisp
            inner = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
    tile.paste(inner, (pad, pad))
    font = _font(12)
    draw.text((pad, size + 2 * pad + 1), caption[:18], fill=frame, font=font)
    draw.text((pad, size + 2 * pad + 15), sub[:18], fill=(60, 60, 60), font=font)
    return tile


def render_strip(nb: Neighbours, pick: PickedQuery, load_query: Callable[[int], Image.Image | None],
                 load_gallery: Callable[[int], Image.Image | None], label_name: Callable[[int], str],
                 k: int = 5, size: int = THUMB) -> tuple[Image.Image, dict]:
    """One query and its top-``k`` as a PNG-able strip, plus the same facts as data."""
    r = pick.row
    q_label = int(nb.query_labels[r])
    tiles = [_thumb(load_query(int(nb.query_positions[r])), COLOURS["query"], "query", label_name(q_label), size)]
    neighbours = []
    for j in range(min(k, nb.ids.shape[1])):
        g = int(nb.ids[r, j])
        if g < 0:
            break
        lab = int(nb.gallery_labels[g])
        right = lab == q_label
        sim = float(nb.sims[r, j])
        tiles.append(_thumb(load_gallery(int(nb.gallery_positions[g])), COLOURS["right" if right else "wrong"],
                            f"{j + 1}. {sim:.3f} {'right' if right else 'wrong'}", label_name(lab), size))
        neighbours.append({"rank": j + 1, "similarity": sim, "right": right, "label": label_name(lab),
                           "position": int(nb.gallery_positions[g])})
    gap = 6
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1) + 12, tiles[0].height), "white")
    x = 0
    for i, t in enumerate(tiles):
        strip.paste(t, (x, 0))
        x += t.width + (gap + 12 if i == 0 else gap)  # a wider gap after the query
    facts = {"kind": pick.kind, "query_label": label_name(q_label), "query_position": int(nb.query_positions[r]),
             "best_positive_similarity": float(nb.best_positive_sim[r]), "margin": pick.margin,
             "neighbours": neighbours}
    return strip, facts


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def dataset_loader(dataset) -> Callable[[int], Image.Image | None]:
    """position -> the dataset's image (no transform), None when it cannot be read."""

    def load(position: int):
        try:
            return dataset.load_image(position)
        except (OSError, ValueError, SyntaxError):
            return None

    return load


def label_namer(dataset) -> Callable[[int], str]:
    names = getattr(dataset, "class_names", None)
    return (lambda c: str(names[c])) if names is not None else (lambda c: f"label {c}")


@dataclass
class Picture:
    """One rendered strip: PNG bytes and its facts (for captions and tables)."""

    png: bytes
    facts: dict

    @property
    def caption(self) -> str:
        f = self.facts
        right = [n for n in f["neighbours"] if n["right"]]
        first = f"first right answer at rank {right[0]['rank']}" if right else "no right answer in the top-k"
        return (f"{'hardest' if f['kind'] == 'worst' else 'typical success'}: query {f['query_label']} "
                f"(item {f['query_position']}); {first}; best positive similarity "
                f"{f['best_positive_similarity']:.3f}")


def draw_pictures(nb: Neighbours, query_ds, gallery_ds, n_worst: int, n_typical: int = 3,
                  k: int = 5, size: int = THUMB) -> list[Picture]:
    """Pick the queries and render their strips from the datasets' images."""
    gallery_ds = query_ds if gallery_ds is None else gallery_ds
    out = []
    for pick in pick_queries(nb, n_worst, n_typical):
        strip, facts = render_strip(nb, pick, dataset_loader(query_ds), dataset_loader(gallery_ds),
                                    label_namer(query_ds), k=k, size=size)
        out.append(Picture(png_bytes(strip), facts))
    return out


def write_show(pictures: list[Picture], out_dir: Path, title: str) -> dict[str, Path]:
    """``retrievals.md`` (PNGs in ``retrievals/``) and a self-contained ``retrievals.html``."""
    import html

    out_dir = Path(out_dir)
    png_dir = out_dir / "retrievals"
    png_dir.mkdir(parents=True, exist_ok=True)
    for old in png_dir.glob("*.png"):  # pictures of an earlier call
        old.unlink()
    md = [f"# {title}", "", "Blue: the query; green: same label (right); red: another label (wrong); "
          "numbers: rank and cosine similarity.", ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>Blue: the query; green: same label (right); red: another label (wrong); "
            "numbers: rank and cosine similarity.</p>"]
    for i, p in enumerate(pictures, 1):
        name = f"{i:02d}-{p.facts['kind']}.png"
        (png_dir / name).write_bytes(p.png)
        md += [f"![{p.caption}](retrievals/{name})", "", p.caption, ""]
        body.append(f'<figure><img src="{data_uri(p.png)}" alt="{html.escape(p.caption)}">'
                    f"<figcaption>{html.escape(p.caption)}</figcaption></figure>")
    if not pictures:
        md.append("No query has a positive in the gallery: nothing to show.")
        body.append("<p>No query has a positive in the gallery: nothing to show.</p>")
    (out_dir / "retrievals.md").write_text("\n".join(md) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
            "</title><style>body{font-family:sans-serif;margin:2em}figure{margin:1em 0}"
            "figcaption{color:#444;font-size:90%}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    (out_dir / "retrievals.html").write_text(page)
    return {"md": out_dir / "retrievals.md", "html": out_dir / "retrievals.html"}


def save_run_retrievals(config, out_dir: Path, k: int = SAVED_K) -> Path | None:
    """Embed the test split with the run's ``best.pt`` and save its ``Neighbours`` as
    ``out_dir/retrievals.npz`` (what the report draws from); None without a ``best.pt``."""
    out_dir = Path(out_dir)
    ckpt = best_checkpoint(out_dir)
    if not ckpt.is_file():
        return None
    # after the check: a run without best.pt (diverged, or a test double of
    # run_training) costs no import of the training stack (torch, timm, torchvision)
    from harness.core.checkpoint import load_model
    from harness.core.device import amp_dtype, pick_device
    from harness.core.evaluate import embed_positions
    from harness.data.registry import create_datasets

    model, _ = load_model(ckpt)
    test = create_datasets(config.data, config.seed, model.mean, model.std).test
    dev = pick_device(config.train.device)
    model.to(dev)
    kw = dict(batch_size=config.train.eval_batch_size, device=dev, workers=config.data.workers,
              amp_dtype=amp_dtype(dev, config.train.amp))
    q, qp = embed_positions(model, test.query, **kw)
    if test.gallery is None:
        nb = nearest_neighbours(q, test.query.labels[qp], k=k, query_positions=qp)
    else:
        g, gp = embed_positions(model, test.gallery, **kw)
        nb = nearest_neighbours(q, test.query.labels[qp], g, test.gallery.labels[gp], k=k,
                                query_positions=qp, gallery_positions=gp)
    return nb.save(out_dir / RETRIEVALS_FILE)
