"""Retrieval evaluation speed: ours vs pytorch-metric-learning's AccuracyCalculator vs bare faiss.

SOP-sized synthetic clustered embeddings (default 60,502 x 512, 11,316 classes of 2 to
12 images, noise chosen so Recall@1 lands near SOP's ~0.65). Each contender runs in its
own subprocess on the same saved embeddings, so wall time and peak RSS (the child's
own ``ru_maxrss``) do not contaminate each other:

* ``bare``: faiss ``IndexFlatIP`` add + search with k = the largest class (the floor);
* ``ours``: ``harness.core.metrics.retrieval_metrics`` (one-set mode);
* ``pml``: ``AccuracyCalculator(k="max_bin_count")`` (precision_at_1, r_precision, MAP@R).

``bare`` and ``ours`` run ``--repeat`` times, alternated, and the fastest run of each
counts (the usual timeit rule on a shared machine); ``pml`` runs once.

Prints a table with the ratios against the baselines measured in the same run and
whether our metrics equal AccuracyCalculator's (|diff| <= 1e-6).

    .venv/bin/python benchmarks/eval_speed.py                 # full size
    .venv/bin/python benchmarks/eval_speed.py --n 3000 --classes 600 --dim 64   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def class_sizes(n: int, classes: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes in [lo, hi] summing to ``n``: lo + Poisson, clipped, then nudged
    one image at a time to the exact total (SOP: 2..12 images, mean 5.3)."""
    if not lo * classes <= n <= hi * classes:
        raise SystemExit(f"--n {n} cannot be split into {classes} classes of {lo}..{hi}")
    sizes = np.clip(lo + rng.poisson(n / classes - lo, classes), lo, hi)
    while (diff := n - int(sizes.sum())) != 0:
        room = np.flatnonzero(sizes < hi) if diff > 0 else np.flatnonzero(sizes > lo)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        sizes[pick] += 1 if diff > 0 else -1
    return sizes


def make_data(n: int, classes: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, classes, 2, 12, rng)
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[labels]
    x += (noise / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64)


# --------------------------------------------------------------------- children


def _child(kind: str, emb_path: str, labels_path: str) -> dict:
    x = np.load(emb_path)
    y = np.load(labels_path)
    base_mb = _peak_rss_mb()
    if kind == "bare":
        import faiss

        k = int(np.bincount(y).max())  # self + the largest R
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        index.search(x, k)
        wall = time.perf_counter() - t0
        metrics = {}
    elif kind == "ours":
        from harness.core.metrics import retrieval_metrics

        t0 = time.perf_counter()
        m = retrieval_metrics(x, y, ks=(1,))
        wall = time.perf_counter() - t0
        metrics = {"recall@1": m["recall@1"], "r_precision": m["r_precision"], "map@r": m["map@r"]}
    elif kind == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count", device=torch.device("cpu"),
        )
        t0 = time.perf_counter()
        a = calc.get_accuracy(x, y)
        wall = time.perf_counter() - t0
        metrics = {"recall@1": a["precision_at_1"], "r_precision": a["r_precision"],
                   "map@r": a["mean_average_precision_at_r"]}
    else:
        raise SystemExit(f"unknown kind {kind}")
    return {"kind": kind, "wall_s": wall, "peak_mb": _peak_rss_mb(), "base_mb": base_mb, "metrics": metrics}


def _peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM, reset at exec).

    ``ru_maxrss`` is not used: Linux carries the parent's high-water mark across
    fork + exec, so a child would report at least the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, emb: Path, labels: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(emb), str(labels)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_502)
    ap.add_argument("--classes", type=int, default=11_316)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--noise", type=float, default=2.32, help="per-image noise norm relative to the class centre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pml", action="store_true", help="omit AccuracyCalculator (slow, memory hungry)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of bare and ours, alternated; the fastest counts (the machine is shared)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "EMB", "LABELS"), help=argparse.SUPPRESS)
    ap.add_argument("--generate", nargs=2, metavar=("EMB", "LABELS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    if args.generate:
        x, y = make_data(args.n, args.classes, args.dim, args.noise, args.seed)
        np.save(args.generate[0], x)
        np.save(args.generate[1], y)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        emb, lab = Path(tmp) / "emb.npy", Path(tmp) / "labels.npy"
        # Generated in a child as well, so this process stays small while it spawns
        # the measured ones.
        gen = [sys.executable, __file__, "--generate", str(emb), str(lab)] + [
            f"--{k}={getattr(args, k)}" for k in ("n", "classes", "dim", "noise", "seed")]
        if subprocess.run(gen).returncode != 0:
            raise SystemExit("generating the embeddings failed")
        sizes = np.bincount(np.load(lab))
        print(f"embeddings: {args.n} x {args.dim} float32, {len(sizes)} classes of "
              f"{sizes.min()}..{sizes.max()} (mean {sizes.mean():.2f}); cores: {os.cpu_count()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        kinds = ["bare", "ours"] + ([] if args.skip_pml else ["pml"])
        res: dict[str, dict] = {}
        for _ in range(max(1, args.repeat)):
            for k in ("bare", "ours"):
                r = run_child(k, emb, lab)
                if k not in res or r["wall_s"] < res[k]["wall_s"]:
                    res[k] = r
        if "pml" in kinds:
            res["pml"] = run_child("pml", emb, lab)

    bare, ours = res["bare"], res["ours"]
    print()
    print(f"{'':<26}{'wall s':>9}{'peak RSS MB':>13}{'over loaded MB':>16}{'time / bare':>13}{'time / ours':>13}")
    names = {"bare": "bare faiss search (floor)", "ours": "ours retrieval_metrics", "pml": "AccuracyCalculator"}
    for k in kinds:
        r = res[k]
        print(f"{names[k]:<26}{r['wall_s']:>9.2f}{r['peak_mb']:>13.0f}{r['peak_mb'] - r['base_mb']:>16.0f}"
              f"{r['wall_s'] / bare['wall_s']:>13.2f}{r['wall_s'] / ours['wall_s']:>13.2f}")
    m = ours["metrics"]
    print()
    print(f"ours: recall@1 {m['recall@1']:.4f}  r_precision {m['r_precision']:.4f}  map@r {m['map@r']:.4f}")
    ok = True
    if "pml" in res:
        p = res["pml"]
        diff = max(abs(m[key] - p["metrics"][key]) for key in m)
        agree = diff <= 1e-6
        ok &= agree
        print(f"pml:  recall@1 {p['metrics']['recall@1']:.4f}  r_precision {p['metrics']['r_precision']:.4f}  "
              f"map@r {p['metrics']['map@r']:.4f}")
        print(f"metrics agree with AccuracyCalculator: {'yes' if agree else 'NO'} (max |diff| {diff:.2e})")
        print(f"targets: ours / bare {ours['wall_s'] / bare['wall_s']:.2f} (<= 1.10), "
              f"pml / ours {p['wall_s'] / ours['wall_s']:.2f} (>= 1.70), "
              f"peak ours / pml {ours['peak_mb'] / p['peak_mb']:.2f} (<= 0.25)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
