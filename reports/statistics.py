"""Statistics over seeds: mean, std and confidence interval, and Welch's t-test.

Plain numbers for the templates; nothing here knows about experiments or formats text
beyond a comparison's one-line sentence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclass
class Summary:
    """Mean, sample std (ddof=1) and a t-distribution confidence interval over seeds."""

    n: int
    mean: float
    std: float | None  # None for a single seed
    ci_low: float | None
    ci_high: float | None


def summarize(values: Any, confidence: float = CONFIDENCE) -> Summary:
    x = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = sps.t.interval(confidence, df=n - 1, loc=mean, scale=sps.sem(x))
    return Summary(n, mean, std, float(low), float(high))


@dataclass
class Comparison:
    """The best method against another one on one metric, over the seeds."""

    best: str
    other: str
    metric: str
    diff: float  # mean(best) - mean(other), in the table's units
    n_best: int
    n_other: int
    p: float | None  # None: not testable
    reason: str | None = None  # why it is not testable

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    @property
    def sentence(self) -> str:
        head = f"{self.best} vs {self.other}: {self.diff:+.2f} {self.metric}"
        if self.p is None:
            return f"{head}, not testable ({self.reason})"
        p = "p < 0.001" if self.p < 0.001 else f"p = {self.p:.3f}"
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{head}, {p}, {verdict} at {ALPHA:.0%} "
            f"(Welch's t-test, {self.n_best} vs {self.n_other} seeds)"
        )


def welch(best: str, a: Any, other: str, b: Any, metric: str) -> Comparison:
    """Welch's t-test (unequal variances) of ``a`` (the best) against ``b``."""
    a = np.asarray(pd.Series(a, dtype=float).dropna(), dtype=float)
    b = np.asarray(pd.Series(b, dtype=float).dropna(), dtype=float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    cmp = Comparison(best, other, metric, diff, len(a), len(b), None)
    short = [name for name, x in ((best, a), (other, b)) if len(x) < 2]
    if short:
        counts = " and ".join(f"{len(x)} seed{'s' if len(x) != 1 else ''} for {name}"
                              for name, x in ((best, a), (other, b)) if name in short)
        cmp.reason = f"{counts}; Welch's t-test needs at least 2 seeds per method"
        return cmp
    if a.std(ddof=1) == 0.0 and b.std(ddof=1) == 0.0:
        cmp.reason = "every seed gave the same value for both methods (zero variance)"
        return cmp
    with warnings.catch_warnings():  # scipy warns about nearly constant samples; p is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        cmp.p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
    return cmp
