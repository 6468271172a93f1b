"""Slow paths for the regime fit: numpy least squares on explicit hinge designs, the oracle the SQL is checked against."""
from __future__ import annotations

import math

import numpy as np


def hinge_design(n: int, breaks: list[int]) -> np.ndarray:
    """Returns the explicit design [n, 2 + len(breaks)] of a continuous line on x = ln(rank):
    1, x and (x - ln b)+ for each break b."""
    x = np.log(np.arange(1, n + 1))
    return np.column_stack([np.ones_like(x), x] + [np.maximum(0.0, x - math.log(b)) for b in breaks])


def continuous_fit(log_influence: np.ndarray, breaks: list[int], weights: np.ndarray | None = None
                   ) -> tuple[float, np.ndarray]:
    """Returns ((weighted) squared error, coefficients) of the (weighted) least-squares continuous
    line with hinges at ln(b) for each break b (numpy's lstsq on the explicit design: the slow path)."""
    design = hinge_design(log_influence.size, breaks)
    root = np.ones(log_influence.size) if weights is None else np.sqrt(weights)
    coef = np.linalg.lstsq(design * root[:, None], log_influence * root, rcond=None)[0]
    return float((((design @ coef - log_influence) * root) ** 2).sum()), coef


def cut_grid(n: int) -> tuple[list[int], list[int]]:
    """Returns (cuts, coarse cuts): the last rank of each bucket 5 % of rank wide, and of those the
    ones that also end a bucket 10 % wide, keeping 3 neurons on either side."""
    rank = np.arange(1, n + 1)
    bucket = np.floor(np.log(rank) / 0.05).astype(int)   # bucket[r] is rank r + 1's
    cuts = [int(r) for r in rank[:-1] if bucket[r] != bucket[r - 1] and 3 <= r <= n - 3]
    return cuts, [r for r in cuts if bucket[r - 1] // 2 != bucket[r] // 2]


def best_pair(y: np.ndarray, firsts, seconds, weights=None) -> tuple[float, int, int]:
    """Returns (squared error, b1, b2) of the best continuous three-segment line over the pairs
    b1 < b2 that keep 3 neurons and an e-fold of rank between them (ties: smallest breaks)."""
    return min((continuous_fit(y, [a, b], weights)[0], a, b) for a in firsts for b in seconds
               if b - a >= 3 and math.log(b / a) >= 1)


def huber_weights(residuals: np.ndarray) -> tuple[float, np.ndarray]:
    """Returns (k, weights min(1, k / |r|)), k = 1.345 robust standard deviations (1.4826 MAD)."""
    k = max(1.345 * 1.4826 * np.median(np.abs(residuals - np.median(residuals))), 1e-3)
    return k, np.minimum(1.0, k / np.maximum(np.abs(residuals), 1e-300))


def huber_loss(residuals: np.ndarray, k: float) -> float:
    """Returns the Huber loss: r² / 2 within k of 0, k |r| - k² / 2 beyond."""
    a = np.abs(residuals)
    return float(np.where(a <= k, a * a / 2, k * a - k * k / 2).sum())
