"""What is installed: the faiss build actually imported, and the library versions.

``faiss-cpu`` and the ``faiss-gpu-*`` wheels all install the same ``faiss`` package; with
two of them installed, whichever wrote its files last wins, or the import breaks. So the
version reported for a result is the imported module's own, together with every
distribution that claims the ``faiss`` package (more than one is a broken install).
"""

from __future__ import annotations

import platform
from importlib import metadata

# (reported name, distribution name)
LIBRARIES = [
    ("torch", "torch"),
    ("timm", "timm"),
    ("pytorch-metric-learning", "pytorch-metric-learning"),
    ("ray", "ray"),
    ("optuna", "optuna"),
]


def faiss_distributions() -> list[str]:
    """Installed distributions that provide the top-level ``faiss`` package."""
    return sorted(set(metadata.packages_distributions().get("faiss", [])))


def faiss_report() -> dict[str, object]:
    """{"version": imported faiss.__version__, "distributions": [...], "gpus": faiss GPU count}."""
    try:
        import faiss
    except ImportError as e:
        return {"version": "missing", "distributions": faiss_distributions(), "gpus": 0, "error": str(e)}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {"version": faiss.__version__, "distributions": faiss_distributions(), "gpus": int(gpus)}


def faiss_version() -> str:
    """``"1.15.1 (faiss-cpu)"``: the imported module's version and its distribution(s)."""
    report = faiss_report()
    dists = report["distributions"] or ["no distribution"]
    return f"{report['version']} ({' + '.join(dists)})"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (the ``versions`` column)."""
    out = {"python": platform.python_version()}
    for name, dist in LIBRARIES:
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    out["faiss"] = faiss_version()
    return out
