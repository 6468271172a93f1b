"""Influence curves planted like the papers' figures, for the regime tests: |ΔLoss| per neuron with
noise drawn per neuron BEFORE sorting (the views sort), so sorting artefacts are part of the test.

Shapes on x = ln(rank), y = ln|ΔLoss| (true rank = neuron order before noise):
    steep    a head of `head` ranks steeper than the power law and continuous with it
    lifted   a head lifted by `lift` nats above the power law, with a cliff after it
    flat     a head flatter than the power law, continuous with it (not a plateau: it lies below)
    none     the power law alone (with its decay)
"""
from __future__ import annotations

import numpy as np


def planted_log_curve(n: int, shape: str = "none", head: int = 70, slope: float = -1.0, head_slope: float = -3.0,
                      lift: float = 1.0, decay_start: int | None = 3000, decay_slope: float = -6.0) -> np.ndarray:
    """Returns the noise-free ln|ΔLoss| of n neurons in true rank order."""
    x = np.log(np.arange(1, n + 1))
    y = -2.0 + slope * x
    if decay_start is not None:
        y = y + (decay_slope - slope) * np.clip(x - np.log(decay_start - 1), 0, None)
    front = x <= np.log(head)
    if shape == "steep":
        y = y + np.where(front, (head_slope - slope) * (x - np.log(head)), 0.0)
    elif shape == "lifted":
        y = y + np.where(front, lift, 0.0)
    elif shape == "flat":
        y = y + np.where(front, slope * (np.log(head) - x), 0.0)   # level with rank `head`
    elif shape != "none":
        raise ValueError(shape)
    return y


def noisy(log_curve: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Returns |ΔLoss| = exp(y + N(0, sigma)) per neuron (unsorted: noise before sorting)."""
    return np.exp(log_curve + np.random.default_rng(seed).normal(0.0, sigma, log_curve.size))


def null_curves(n: int = 4096, seeds: int = 8) -> dict[str, np.ndarray]:
    """Returns curves without a plateau, `seeds` of each kind: noisy pure power law, noisy power law
    + decay, |N(0, 1)| (a randomly initialised layer's sorted effects), log-normal."""
    curves = {}
    for seed in range(seeds):
        curves[f"power_law/{seed}"] = noisy(planted_log_curve(n, slope=-0.8, decay_start=None), 0.3, seed)
        curves[f"power_law_decay/{seed}"] = noisy(planted_log_curve(n), 0.3, 100 + seed)
        curves[f"abs_normal/{seed}"] = np.abs(np.random.default_rng(200 + seed).normal(size=n))
        curves[f"log_normal/{seed}"] = np.random.default_rng(300 + seed).lognormal(0.0, 1.0, n)
    return curves
