"""WeightWatcher-compatible power-law fits of weight-matrix spectra (numpy only, no torch).

    from rtn.ingest.spectra import fit_spectrum, spectra_table
    fit = fit_spectrum(weight)            # dict: alpha, xmin, ks_distance, sigma, ..., eigenvalues
    table = spectra_table([("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", 0, weight), ...])

Heavy-Tailed Self-Regularization (Martin & Mahoney): the eigenvalues λ of WᵀW of a trained
layer have a power-law tail p(λ) ∝ λ^-α above some xmin. As WeightWatcher does (through the
`powerlaw` package), α is the continuous maximum-likelihood estimate for every candidate xmin
among the eigenvalues, and the xmin whose fit has the smallest Kolmogorov–Smirnov distance wins.
Whether the tail is heavy at all is `tail_class`: WeightWatcher's alpha ranges, plus a check
that the top eigenvalue lies beyond the Marchenko–Pastur bulk (`mp_softrank`), which a random
matrix's finite-size edge fails although its fitted alpha is often below 6.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

MIN_TAIL = 10                 # fewest eigenvalues a tail may have; smaller tails make alpha noise
HEAVY_TAIL_MAX_ALPHA = 6.0    # WeightWatcher: 2 <= alpha <= 6 heavy-tailed (trained), > 6 random-like
VERY_HEAVY_MAX_ALPHA = 2.0    # alpha < 2: very heavy-tailed (WeightWatcher flags possible over-training)
MP_SOFTRANK_MAX = 0.8         # heavy only if lambda_max > 1.25 x the Marchenko-Pastur bulk edge (see tail_class)
_KS_CELLS = 1 << 22           # candidates x eigenvalues evaluated at once, bounds memory (~32 MB)


def eigenvalues_of(matrix: np.ndarray) -> np.ndarray:
    """Returns the eigenvalues of the smaller Gram matrix WᵀW or WWᵀ (= squared singular values), ascending."""
    weight = np.asarray(matrix, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {weight.shape}")
    gram = weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T  # [n, n], n = min dim
    return np.clip(np.linalg.eigvalsh(gram), 0.0, None)  # rounding can leave tiny negatives


def mp_softrank(eigenvalues: np.ndarray, shape: tuple[int, int]) -> float:
    """Returns λ+ / λmax: the Marchenko–Pastur bulk edge of a random matrix of W's shape and norm over λmax.

    λ+ = (Σλ / m)(1 + √(m/n))² for W of shape n x m, n >= m (i.i.d. entries of variance ‖W‖²_F / nm).
    About 1 for a random matrix (its largest eigenvalue sits at the bulk edge); small when a
    heavy tail or spikes reach far beyond it (Martin & Mahoney's MP soft rank).
    """
    n, m = max(shape), min(shape)
    if eigenvalues.size == 0 or not eigenvalues[-1] > 0:
        return math.nan
    edge = eigenvalues.sum() / m * (1.0 + math.sqrt(m / n)) ** 2
    return float(edge / eigenvalues[-1])


def tail_class(alpha: float, softrank: float = 0.0) -> str:
    """Returns the reading of a fit: 'very_heavy', 'heavy', 'not_heavy' or 'no_fit'.

    WeightWatcher's alpha ranges (< 2 very heavy, 2-6 heavy, > 6 not heavy), and, because a
    finite random matrix's bulk edge often fits an alpha of 3-7 (checked: Gaussian 128x64 to
    2048x512), a tail only counts when λmax clears the MP bulk edge (mp_softrank < 0.8).
    """
    if alpha is None or not math.isfinite(alpha):
        return "no_fit"
    if alpha > HEAVY_TAIL_MAX_ALPHA or not softrank < MP_SOFTRANK_MAX:
        return "not_heavy"
    return "very_heavy" if alpha < VERY_HEAVY_MAX_ALPHA else "heavy"


def is_heavy_tailed(alpha: float, softrank: float = 0.0) -> bool:
    """Returns whether a fit means a heavy tail (tail_class 'heavy' or 'very_heavy')."""
    return tail_class(alpha, softrank) in ("very_heavy", "heavy")


def fit_power_law(values: np.ndarray, min_tail: int = MIN_TAIL) -> dict:
    """Returns the continuous power-law fit {alpha, xmin, ks_distance, sigma, n_tail} of positive values.

    For each candidate xmin = x_j (ascending x, tail x_j..x_{N-1} of n_j >= min_tail values):
    alpha_j = 1 + n_j / Σ log(x_i / x_j); KS_j = max |empirical CDF − (1 − (x/x_j)^(1−alpha_j))|
    over the tail. All candidates are evaluated at once, in chunks; NaNs when no tail qualifies.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[x > 0]
    none = {"alpha": math.nan, "xmin": math.nan, "ks_distance": math.nan, "sigma": math.nan, "n_tail": 0}
    n_values = x.size
    n_candidates = n_values - min_tail + 1
    if n_candidates < 1:
        return none
    log_x = np.log(x)
    suffix = np.cumsum(log_x[::-1])[::-1]                          # suffix[j] = Σ_{i>=j} log x_i
    j = np.arange(n_candidates)
    n_tail = n_values - j                                          # [candidates]
    log_sum = suffix[j] - n_tail * log_x[j]                        # Σ log(x_i / x_j) over the tail
    with np.errstate(divide="ignore"):
        alpha = np.where(log_sum > 0, 1.0 + n_tail / np.where(log_sum > 0, log_sum, 1.0), np.inf)
    ks = np.full(n_candidates, np.inf)
    chunk = max(1, _KS_CELLS // n_values)
    for start in range(0, n_candidates, chunk):
        cand = np.arange(start, min(start + chunk, n_candidates))   # [c]
        cols = np.arange(start, n_values)                           # eigenvalues any candidate's tail can hold
        n = n_tail[cand][:, None].astype(np.float64)
        # survival of the fitted law (x/x_j)^(1-alpha_j) and 1 - empirical CDF below x_i: u = 1 - rank/n
        survival = log_x[cols][None, :] - log_x[cand][:, None]      # [c, cols]
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(survival, 1.0 - alpha[cand][:, None], out=survival)
            np.exp(survival, out=survival)
        u = 1.0 - (cols[None, :] - cand[:, None]) / n
        np.subtract(u, survival, out=u)                             # v = u - S = F_model - rank/n
        gap = np.maximum(u, 1.0 / n - u)                            # max(F - rank/n, (rank+1)/n - F)
        block = gap[:, : cand.size]                                 # columns before a candidate's xmin
        block[np.tril_indices(cand.size, -1)] = -np.inf
        ks[cand] = gap.max(axis=1)
    ks[~np.isfinite(alpha)] = np.inf
    if not np.isfinite(ks).any():
        return none
    best = int(np.argmin(ks))
    return {
        "alpha": float(alpha[best]),
        "xmin": float(x[best]),
        "ks_distance": float(ks[best]),
        "sigma": float((alpha[best] - 1.0) / math.sqrt(n_tail[best])),
        "n_tail": int(n_tail[best]),
    }


def fit_spectrum(matrix: np.ndarray, min_tail: int = MIN_TAIL) -> dict:
    """Returns the WeightWatcher-style fit of one weight matrix's eigenvalue spectrum.

    Keys: alpha, xmin, ks_distance, sigma, n_tail, n_evals, alpha_weighted (alpha·log10 λmax),
    stable_rank (Σλ/λmax), log_norm (log10 Σλ = log10 ‖W‖²_F), log_spectral_norm (log10 λmax),
    mp_softrank, heavy_tail, tail_class (see tail_class), eigenvalues (ascending, float64).
    """
    evals = eigenvalues_of(matrix)
    lam_max = float(evals[-1]) if evals.size else 0.0
    # exact zeros (rank deficiency) are not part of any tail; drop what rounding left of them too
    fit = fit_power_law(evals[evals > lam_max * evals.size * np.finfo(np.float64).eps], min_tail)
    total = float(evals.sum())
    softrank = mp_softrank(evals, np.shape(matrix))
    log10_max = math.log10(lam_max) if lam_max > 0 else math.nan
    return {
        **fit,
        "n_evals": int(evals.size),
        "alpha_weighted": fit["alpha"] * log10_max,
        "stable_rank": total / lam_max if lam_max > 0 else math.nan,
        "log_norm": math.log10(total) if total > 0 else math.nan,
        "log_spectral_norm": log10_max,
        "mp_softrank": softrank,
        "heavy_tail": is_heavy_tailed(fit["alpha"], softrank),
        "tail_class": tail_class(fit["alpha"], softrank),
        "eigenvalues": evals,
    }


SPECTRA_SCHEMA = {
    "layer": pl.Int32, "matrix": pl.Utf8, "role": pl.Utf8, "alpha": pl.Float64, "xmin": pl.Float64,
    "ks_distance": pl.Float64, "sigma": pl.Float64, "n_evals": pl.Int32, "alpha_weighted": pl.Float64,
    "stable_rank": pl.Float64, "log_norm": pl.Float64, "log_spectral_norm": pl.Float64,
    "mp_softrank": pl.Float64, "heavy_tail": pl.Boolean, "tail_class": pl.Utf8, "eigenvalues": pl.List(pl.Float64),
}


def spectra_table(matrices: list[tuple[str, int, np.ndarray]], min_tail: int = MIN_TAIL,
                  roles: list[str] | None = None) -> pl.DataFrame:
    """Returns one weight_spectra row (without run_id, step) per (state-dict name, layer, 2-D weight), with its role."""
    rows = []
    roles = roles or ["other"] * len(matrices)
    for (name, layer, weight), role in zip(matrices, roles):
        fit = fit_spectrum(weight, min_tail)
        rows.append({col: fit[col] for col in SPECTRA_SCHEMA if col not in ("layer", "matrix", "role", "eigenvalues")}
                    | {"layer": layer, "matrix": name, "role": role, "eigenvalues": fit["eigenvalues"].tolist()})
    return pl.DataFrame(rows, schema=SPECTRA_SCHEMA) if rows else pl.DataFrame(schema=SPECTRA_SCHEMA)


def weight_spectra(model, adapter) -> pl.DataFrame:
    """Returns weight_spectra rows of every 2-D weight matrix of the model (tied matrices once)."""
    from rtn.ingest import adapters  # torch: only where a model is at hand; the fits above are numpy
    seen, matrices, roles = set(), [], []
    for name, param in model.named_parameters():   # named_parameters lists a tied weight once
        if param.ndim == 2 and id(param) not in seen:
            seen.add(id(param))
            matrices.append((name, adapters.matrix_layer(name, model, adapter), param.detach().double().cpu().numpy()))
            roles.append(adapters.matrix_role(name, param, model, adapter))
    return spectra_table(matrices, roles=roles)
