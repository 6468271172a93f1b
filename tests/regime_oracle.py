"""Slow paths for the regime views: numpy least squares on explicit designs and explicit loops, the
oracle the SQL (regime_cuts, regime_fits, regime_readings, regime_summary) is checked against."""
from __future__ import annotations

import math

import numpy as np

MIN_POINTS = 3      # neurons a cut keeps on either side
BAND = 0.25         # the head search's decay band, in ln rank, around the null's decay point


def cut_grid(n: int) -> list[int]:
    """Returns the cuts: the last rank of each bucket 5 % of rank wide, keeping 3 neurons on either side."""
    rank = np.arange(1, n + 1)
    bucket = np.floor(np.log(rank) / 0.05).astype(int)   # bucket[r] is rank r + 1's
    return [int(r) for r in rank[:-1] if bucket[r] != bucket[r - 1] and MIN_POINTS <= r <= n - MIN_POINTS]


def lstsq(design: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Returns (squared error, coefficients) of least squares on an explicit design."""
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return float(((design @ coef - y) ** 2).sum()), coef


def hinge_design(x: np.ndarray, u: float) -> np.ndarray:
    """Returns the design [len(x), 3]: 1, x, (x - u)+."""
    return np.column_stack([np.ones_like(x), x, np.maximum(0.0, x - u)])


def resolution(y: np.ndarray) -> float:
    return 1e-10 * (1 + ((y - y.mean()) ** 2).sum())


def null_fit(y: np.ndarray) -> dict:
    """Returns power law + decay (continuous hinge at d) fitted over every cut: the least squared
    error, ties (below the resolution) to the smallest d."""
    x = np.log(np.arange(1, y.size + 1))
    res = resolution(y)
    best = min((max(lstsq(hinge_design(x, math.log(d)), y)[0], res), d) for d in cut_grid(y.size))
    sse, coef = lstsq(hinge_design(x, math.log(best[1])), y)
    return {"decay_end": best[1], "sse": sse, "intercept": coef[0], "slope": coef[1], "decay_slope": coef[1] + coef[2]}


def head_sse(y: np.ndarray, head: int, decay_end: int) -> float:
    """Returns the head model's squared error: a line on ranks 1..head, power law + decay (hinge at
    decay_end) on the ranks after it."""
    x = np.log(np.arange(1, y.size + 1))
    front = lstsq(np.column_stack([np.ones(head), x[:head]]), y[:head])[0]
    return front + lstsq(hinge_design(x[head:], math.log(decay_end)), y[head:])[0]


def head_fit(y: np.ndarray) -> dict | None:
    """Returns the head model as regime_fits searches it: every P ≤ n/20 with the decay points
    within BAND of ln rank of max(null's d, e·P), then every d given that P; None if no pair fits."""
    n = y.size
    cuts = cut_grid(n)
    null_u = math.log(null_fit(y)["decay_end"])
    res = resolution(y)

    def allowed(p, d):
        return math.log(d / p) >= 1 and d - p >= MIN_POINTS

    firsts = [(max(head_sse(y, p, d), res), p, d) for p in cuts if p <= n / 20 for d in cuts
              if allowed(p, d) and abs(math.log(d) - max(null_u, math.log(p) + 1)) <= BAND]
    if not firsts:
        return None
    head = min(firsts)[1]
    decay_end = min((max(head_sse(y, head, d), res), d) for d in cuts if allowed(head, d))[1]
    x = np.log(np.arange(1, n + 1))
    _, front = lstsq(np.column_stack([np.ones(head), x[:head]]), y[:head])
    _, tail = lstsq(hinge_design(x[head:], math.log(decay_end)), y[head:])
    power_law = tail[0] + tail[1] * x
    middle = slice(head, decay_end)
    rms = math.sqrt(((y[middle] - power_law[middle]) ** 2).mean())
    return {
        "head_size": head, "decay_end": decay_end, "sse": head_sse(y, head, decay_end),
        "head_intercept": front[0], "head_slope": front[1],
        "power_law_intercept": tail[0], "power_law_slope": tail[1], "decay_slope": tail[1] + tail[2],
        "plateau_lift": float((y[:head] - power_law[:head]).mean()),
        "lift_threshold": max(3 * rms, math.log(1.25)),
    }


def bic(sse: float, n: int, k: int) -> float:
    return n * math.log(sse / n) + k * math.log(n)


def paper_reading(y: np.ndarray) -> dict:
    """Returns the papers' reading: least squares on ranks 34..244, the run of top ranks above it by
    the threshold (up to rank 244), and the mean excess over that run."""
    x = np.log(np.arange(1, y.size + 1))
    window = slice(33, 244)
    if y[window].size < 10:
        return {"paper_plateau_size": None, "paper_plateau_lift": None}
    sse, coef = lstsq(np.column_stack([np.ones(y[window].size), x[window]]), y[window])
    threshold = max(3 * math.sqrt(sse / y[window].size), math.log(1.25))
    excess = y[:244] - (coef[0] + coef[1] * x[:244])
    run = next((i for i, e in enumerate(excess) if not e > threshold), excess.size)
    return {"paper_power_law_slope": coef[1], "paper_plateau_size": run,
            "paper_plateau_lift": float(excess[:run].mean()) if run else None}
