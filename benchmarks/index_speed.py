"""Approximate gallery indexes (IVF, HNSW) against exact search, as `harness index build` makes them.

SOP-sized synthetic clustered embeddings (default 60,502 x 512, 11,316 classes of 2 to
12 images), all in the index. Trained embeddings lie near a low-dimensional subspace of
their 512 dimensions, so the classes are drawn (with ``eval_speed.py``'s generator) in a
``--latent-dim`` space (default 32), rotated into 512 dimensions by a random orthonormal
map, plus a little isotropic noise (``--ambient-noise``). ``--latent-dim 0`` uses
``eval_speed.py``'s data as it is: isotropic noise in all 512 dimensions, where a point's
nearest neighbours are barely nearer than the rest -- the adversarial case for any
approximate index (there IVF and HNSW lose several points of Recall@1 at any useful speed). A seeded sample of ``--queries`` of those images (default
10,000; 0: all) queries it, each query's own entry dropped (one-set retrieval, like
SOP's test protocol). For each index: build time, search time for all
queries (fastest of ``--repeat`` runs), queries/s, speed-up over exact search measured
in the same run, label Recall@1 and its difference to exact, and the share of queries
whose top-1 is the exact top-1.

    .venv/bin/python benchmarks/index_speed.py                     # full size
    .venv/bin/python benchmarks/index_speed.py --n 6000 --classes 1100 --dim 64   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval_speed import make_data  # noqa: E402

from harness.serving.index import IndexParams, create_index, search_without_self  # noqa: E402


def timed_search(index, x, query_ids, k, repeat):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        _, ids = search_without_self(index, x[query_ids], query_ids, k)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_502)
    ap.add_argument("--classes", type=int, default=11_316)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--noise", type=float, default=0.75, help="class noise (eval_speed.py's, in the latent space)")
    ap.add_argument("--latent-dim", type=int, default=32, help="0: isotropic 512-d noise (eval_speed.py's data)")
    ap.add_argument("--ambient-noise", type=float, default=0.1, help="isotropic noise norm added in --dim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=10_000, help="sampled queries (0: every image)")
    ap.add_argument("--repeat", type=int, default=2, help="search runs per index; the fastest counts")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[32, 64, 128],
                    help="IVF (harness index build's default nlist) at these nprobe values")
    ap.add_argument("--ef-search", type=int, nargs="*", default=[16, 32, 64, 128],
                    help="HNSW at these efSearch values (none: skip HNSW, whose build takes minutes on 2 cores)")
    ap.add_argument("--hnsw-m", type=int, default=IndexParams.hnsw_m, help="HNSW graph links per node")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    if args.latent_dim:
        z, y = make_data(args.n, args.classes, args.latent_dim, args.noise, args.seed)
        rng = np.random.default_rng([args.seed, 2])
        basis, _ = np.linalg.qr(rng.standard_normal((args.dim, args.latent_dim)))
        x = z @ basis.T.astype(np.float32)
        x += (args.ambient_noise / np.sqrt(args.dim)) * rng.standard_normal(x.shape, dtype=np.float32)
        x = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    else:
        x, y = make_data(args.n, args.classes, args.dim, args.noise, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    n_q = args.n if args.queries <= 0 else min(args.queries, args.n)
    query_ids = np.sort(rng.choice(args.n, size=n_q, replace=False))
    yq = y[query_ids]
    space = f"latent dim {args.latent_dim}, noise {args.noise}, ambient noise {args.ambient_noise}" \
        if args.latent_dim else f"isotropic noise {args.noise}"
    print(f"{args.n} x {args.dim} embeddings in the index ({space}), {args.classes} classes, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads; {n_q} of them query (self excluded), k=1", flush=True)

    configs = [IndexParams("exact")]
    configs += [IndexParams("ivf", nprobe=p) for p in args.nprobe]
    configs += [IndexParams("hnsw", hnsw_m=args.hnsw_m, ef_search=e) for e in args.ef_search]
    rows, exact = [], None
    built: dict[tuple, tuple] = {}
    for params in configs:
        # one build per structure; nprobe / efSearch are search-time settings
        key = (params.kind,)
        if key not in built:
            t = time.perf_counter()
            built[key] = (create_index(x, params), time.perf_counter() - t)
            print(f"built {params.kind} in {built[key][1]:.1f} s", flush=True)
        index, build_s = built[key]
        resolved = params.resolved(len(x))
        if resolved.kind == "ivf":
            index.nprobe = resolved.nprobe
        elif resolved.kind == "hnsw":
            index.hnsw.efSearch = resolved.ef_search
        search_s, ids = timed_search(index, x, query_ids, 1, args.repeat)
        r1 = float(np.mean(np.where(ids[:, 0] >= 0, y[ids[:, 0]], -1) == yq))
        if exact is None:
            exact = (search_s, r1, ids[:, 0])
        desc = ", ".join(f"{k}={v}" for k, v in resolved.describe().items() if k != "kind")
        print(f"searched {resolved.kind} {desc} in {search_s:.2f} s", flush=True)
        rows.append((f"{resolved.kind}" + (f" ({desc})" if desc else ""), build_s, search_s, n_q / search_s,
                     exact[0] / search_s, 100 * r1, 100 * (r1 - exact[1]), float(np.mean(ids[:, 0] == exact[2]))))

    head = ("index", "build s", "search s", "queries/s", "speed-up vs exact", "Recall@1 %", "vs exact (points)",
            "same top-1 as exact")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, b, s, qps, speed, r1, d, agree in rows:
        print(f"| {name} | {b:.1f} | {s:.2f} | {qps:,.0f} | {speed:.1f}x | {r1:.2f} | {d:+.2f} | {agree:.4f} |")
    ok = [r for r in rows[1:] if r[6] >= -1.0]
    if ok:
        best = max(ok, key=lambda r: r[4])
        print(f"fastest index within 1 point of exact Recall@1: {best[0]}, {best[4]:.1f}x exact's query speed "
              f"(Recall@1 {best[5]:.2f} vs {exact[1] * 100:.2f})")
    else:
        print("no approximate index within 1 point of exact Recall@1")


if __name__ == "__main__":
    main()
