"""Per-group heavy-tail estimate of neuron weight vectors (the papers' Hill α) -> `analysis_group_spectra`.

    from rtn.analyses import group_spectra
    tables = group_spectra.compute(con, "demo")   # {"analysis_group_spectra": polars.DataFrame}

For a group of m neurons and one weight matrix (w_in or w_out): stack the neurons' d-dimensional
weight vectors as rows, z-score each row, C = Z Zᵀ / d (the rows' correlation matrix), and take
the Hill estimator on the k = max(1, ⌊0.1·m⌋) largest eigenvalues of C:
α_Hill = 1 / mean_{i≤k} log(λ_i / λ_{k+1}). Lower α = heavier tail. Note the Hill α is the
tail index of the survival function; WeightWatcher's density exponent is α_Hill + 1.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from rtn.analyses.geometry import zscore_columns

TAIL_FRACTION = 0.1   # k = max(1, floor(TAIL_FRACTION * m)) top eigenvalues enter the Hill estimator
MATRICES = ("w_in", "w_out")

GROUP_SPECTRA_SCHEMA = {
    "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "group_name": pl.Utf8, "matrix": pl.Utf8,
    "alpha_hill": pl.Float64, "k": pl.Int32, "n_neurons": pl.Int32, "d": pl.Int32,
    "random_alpha_hill": pl.Float64, "random_alpha_hill_std": pl.Float64, "eigenvalues": pl.List(pl.Float64),
}


def hill_k(n_values: int, tail_fraction: float = TAIL_FRACTION) -> int:
    """Returns k = max(1, ⌊tail_fraction · n⌋), the number of top values the Hill estimator uses."""
    return max(1, math.floor(tail_fraction * n_values))


def hill_alpha(values: np.ndarray, k: int | None = None) -> float:
    """Returns the Hill tail index 1 / mean(log(x_i / x_{k+1})) over the k largest values (NaN if undefined)."""
    x = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    k = hill_k(x.size) if k is None else k
    if x.size < k + 1 or not x[k] > 0:
        return float("nan")
    mean_log = np.mean(np.log(x[:k] / x[k]))
    return float(1.0 / mean_log) if mean_log > 0 else float("nan")


def row_correlation_eigenvalues(rows: np.ndarray) -> np.ndarray:
    """Returns the eigenvalues (descending) of C = Z Zᵀ / d for rows [m, d], each row z-scored (ddof 0)."""
    rows = np.asarray(rows, dtype=np.float64)
    z = zscore_columns(rows.T).T                        # [m, d], each row mean 0, std 1 (a constant row: 0)
    gram = z @ z.T / rows.shape[1]                      # [m, m]
    return np.clip(np.linalg.eigvalsh(gram), 0.0, None)[::-1]


def group_hill(rows: np.ndarray) -> dict:
    """Returns {alpha_hill, k, n_neurons, d, eigenvalues} of one group's weight rows [m, d]."""
    m, d = rows.shape
    evals = row_correlation_eigenvalues(rows) if m else np.zeros(0)
    k = hill_k(m)
    return {"alpha_hill": hill_alpha(evals, k), "k": k, "n_neurons": m, "d": d, "eigenvalues": evals.tolist()}


def _rows(frame: pl.DataFrame, column: str) -> np.ndarray:
    width = int(frame[column].list.len().max() or 0)
    return frame[column].explode().to_numpy().astype(np.float64).reshape(frame.height, width)


def compute(con, run_id: str) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_group_spectra": one row per (run_id, step, layer, group_name, matrix)}."""
    weights = con.sql(
        "select step, layer, group_name, neuron, w_in, w_out from group_weights where run_id = ? "
        "order by step, layer, group_name, neuron", params=[run_id]).pl()
    rows = []
    for (step, layer, group_name), members in weights.group_by(["step", "layer", "group_name"], maintain_order=True):
        for matrix in MATRICES:
            rows.append({"run_id": run_id, "step": step, "layer": layer, "group_name": group_name,
                         "matrix": matrix, **group_hill(_rows(members, matrix))})
    table = pl.DataFrame(rows, schema={c: t for c, t in GROUP_SPECTRA_SCHEMA.items() if not c.startswith("random_")})
    randoms = (table.filter(pl.col("group_name").str.starts_with("random_"))
               .group_by("step", "layer", "matrix")
               .agg(pl.col("alpha_hill").fill_nan(None).mean().alias("random_alpha_hill"),
                    pl.col("alpha_hill").fill_nan(None).std().alias("random_alpha_hill_std")))
    table = table.join(randoms, on=["step", "layer", "matrix"], how="left")
    return {"analysis_group_spectra": table.select(pl.col(c).cast(t) for c, t in GROUP_SPECTRA_SCHEMA.items())
            .sort("step", "layer", "group_name", "matrix")}
