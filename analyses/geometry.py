"""Activation geometry of neuron groups at rare-target samples -> `analysis_geometry`.

    from rtn.analyses import geometry
    tables = geometry.compute(con, "demo")        # {"analysis_geometry": polars.DataFrame}

Pairwise cosine and Pearson statistics come from the `group_pair_stats` view; effective
dimensionality needs eigenvalues, so it is computed here from `rare_activations`.
"""
from __future__ import annotations

import numpy as np
import polars as pl

VARIANCE_TARGET = 0.95   # eff_dim_95: fewest components reaching this fraction of the variance

GEOMETRY_SCHEMA = {
    "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "group_name": pl.Utf8,
    "n_neurons": pl.Int32, "n_samples": pl.Int32, "n_pairs": pl.Int32,
    "mean_cosine": pl.Float64, "median_cosine": pl.Float64, "mean_pearson": pl.Float64,
    "median_pearson": pl.Float64, "eff_dim_95": pl.Int32, "participation_ratio": pl.Float64,
    "mean_cosine_vs_random": pl.Float64, "mean_pearson_vs_random": pl.Float64,
}
RANDOM_AVERAGED = ["mean_cosine", "median_cosine", "mean_pearson", "median_pearson", "eff_dim_95",
                   "participation_ratio", "mean_cosine_vs_random", "mean_pearson_vs_random"]


def rare_activation_matrix(con, run_id: str, step: int, layer: int,
                           neurons: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (neuron ids ascending, activations [rare samples, neurons] float64) of one layer.

    All neurons of the layer, or only `neurons`; read from the `rare_activations` view.
    """
    only = neurons is not None
    frame = con.sql(
        "select neuron, acts from rare_activations where run_id = ? and step = ? and layer = ?"
        + (" and list_contains(?, neuron)" if only else "") + " order by neuron",
        params=[run_id, step, layer] + ([[int(n) for n in neurons]] if only else []),
    ).pl()
    ids = frame["neuron"].to_numpy().astype(np.int64)
    n_samples = int(frame["acts"].list.len().max() or 0) if frame.height else 0
    acts = frame["acts"].explode().to_numpy().astype(np.float64) if n_samples else np.zeros(0)
    return ids, acts.reshape(len(ids), n_samples).T


def zscore_columns(acts: np.ndarray) -> np.ndarray:
    """Returns each column minus its mean over its std (ddof 0); a constant column becomes zeros."""
    centred = acts - acts.mean(axis=0, keepdims=True)
    std = centred.std(axis=0, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def effective_dimensionality(acts: np.ndarray, target: float = VARIANCE_TARGET) -> tuple[int | None, float | None]:
    """Returns (eff_dim, participation ratio) of activations [samples, neurons] after z-scoring.

    λ = eigenvalues of the covariance of the z-scored activations (the correlation matrix);
    eff_dim = fewest leading components whose λ sum to `target` of Σλ; PR = (Σλ)² / Σλ².
    (None, None) when undefined: fewer than 2 samples, or every neuron constant.
    """
    if acts.shape[0] < 2 or acts.shape[1] == 0:
        return None, None
    z = zscore_columns(acts)
    if not z.any():
        return None, None
    lam = np.clip(np.linalg.eigvalsh(z.T @ z / z.shape[0]), 0.0, None)[::-1]   # [neurons], descending
    total = lam.sum()
    explained = np.cumsum(lam) / total
    eff_dim = int(np.argmax(explained >= target - 1e-12)) + 1
    return eff_dim, float(total**2 / np.sum(lam**2))


def _pair_weighted_mean(column: str) -> pl.Expr:
    """Returns the mean over all pairs of per-(group_a, group_b) means: each weighted by its pair count."""
    return (pl.col(column) * pl.col("n_pairs")).sum() / pl.col("n_pairs").filter(pl.col(column).is_not_null()).sum()


def _pair_statistics(stats: pl.DataFrame) -> pl.DataFrame:
    """Returns per (step, layer, group_name) the within-group pair statistics and the mean vs random groups."""
    keys = ["step", "layer"]
    within = (stats.filter(pl.col("group_a") == pl.col("group_b"))
              .rename({"group_a": "group_name"}).drop("group_b", "run_id"))
    both_ways = pl.concat([
        stats.select(*keys, pl.col("group_a").alias("group_name"), pl.col("group_b").alias("other"),
                     "n_pairs", "mean_cosine", "mean_pearson"),
        stats.select(*keys, pl.col("group_b").alias("group_name"), pl.col("group_a").alias("other"),
                     "n_pairs", "mean_cosine", "mean_pearson"),
    ])
    versus_random = (
        both_ways.filter((pl.col("group_name") != pl.col("other")) & pl.col("other").str.starts_with("random_"))
        .group_by(*keys, "group_name")
        .agg(_pair_weighted_mean("mean_cosine").alias("mean_cosine_vs_random"),
             _pair_weighted_mean("mean_pearson").alias("mean_pearson_vs_random"))
    )
    return within.join(versus_random, on=[*keys, "group_name"], how="full", coalesce=True)


def group_members(con, run_id: str) -> pl.DataFrame:
    """Returns (step, layer, group_name, neurons: sorted list) of every neuron group of a run (the neuron_groups view)."""
    return con.sql(
        "select step, layer, group_name, list(neuron order by neuron) as neurons from neuron_groups "
        "where run_id = ? group by all order by all", params=[run_id]).pl()


def compute(con, run_id: str) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_geometry": one row per (run_id, step, layer, group_name)} of a run."""
    groups = group_members(con, run_id)
    stats = con.sql("select * from group_pair_stats where run_id = ?", params=[run_id]).pl()
    rows = []
    for (step, layer), members in groups.group_by(["step", "layer"], maintain_order=True):
        wanted = sorted({n for names in members["neurons"] for n in names})
        ids, acts = rare_activation_matrix(con, run_id, step, layer, wanted)
        column = {int(n): i for i, n in enumerate(ids)}
        for group_name, neurons in zip(members["group_name"], members["neurons"]):
            cols = [column[n] for n in neurons if n in column]
            eff_dim, ratio = effective_dimensionality(acts[:, cols])
            rows.append({"run_id": run_id, "step": step, "layer": layer, "group_name": group_name,
                         "n_neurons": len(cols), "n_samples": acts.shape[0],
                         "eff_dim_95": eff_dim, "participation_ratio": ratio})
    if not rows:
        return {"analysis_geometry": pl.DataFrame(schema=_output_schema())}
    table = pl.DataFrame(rows).join(_pair_statistics(stats), on=["step", "layer", "group_name"], how="left")
    table = table.with_columns(pl.col("n_pairs").fill_null(0))
    random_means = (table.filter(pl.col("group_name").str.starts_with("random_"))
                    .group_by("step", "layer")
                    .agg(pl.col(c).cast(pl.Float64).mean().alias(f"random_{c}") for c in RANDOM_AVERAGED))
    table = table.join(random_means, on=["step", "layer"], how="left")
    return {"analysis_geometry": table.select(pl.col(c).cast(t) for c, t in _output_schema().items())
            .sort("step", "layer", "group_name")}


def _output_schema() -> dict:
    return GEOMETRY_SCHEMA | {f"random_{c}": pl.Float64 for c in RANDOM_AVERAGED}
