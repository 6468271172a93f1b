"""Robust cross-check of the SQL regime verdict (regime_summary): the same head model fitted with a
Huber loss instead of least squares.

    from rtn.analyses import regimes
    tables = regimes.compute(con, "demo")   # {"analysis_regime_fits": polars.DataFrame}

The model is regime_summary's (method in sql/regime_summary.sql): on x = ln(rank), y = ln|ΔLoss|, a
head of the top P ranks on its own line, then power law + decay (a continuous hinge at the decay
point) on the ranks after it. Here each line is fitted by iteratively reweighted least squares
with Huber weights (threshold HUBER robust standard deviations of the residuals of the SQL's
power law + decay, so both fits share one noise scale), P is searched over GRID log-spaced sizes
up to n/20 (and the SQL's), the decay point within BAND of ln rank of the SQL's. The robust
verdict: the robust lift (mean over the head of y minus the extrapolated power law) above the
SQL's lift_threshold, where the SQL's BIC test passed. agrees_with_sql says both verdicts are the
same and, where both find a plateau, their sizes lie within AGREEMENT of each other. It is a
report, not a constraint on the SQL: a disagreement is a curve to look at.
"""
from __future__ import annotations

import numpy as np
import polars as pl

GRID = 24          # candidate head sizes, log-spaced from 3 to n/20
HEAD_FRACTION = 20 # a head holds at most n / HEAD_FRACTION ranks, as in the SQL
MIN_HEAD = 3       # and at least this many
BAND = 0.5         # the decay point moves at most this far (ln rank) from the SQL's
HUBER = 1.345      # Huber threshold in robust standard deviations (1.4826 MAD)
AGREEMENT = 0.15   # plateau sizes agree within this fraction of the SQL's
ITERATIONS = 20    # reweighting steps of each robust line

CURVE = ["run_id", "step", "layer", "token_class", "sign"]


def huber_lstsq(design: np.ndarray, y: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """Returns (coefficients, Huber loss) of the Huber regression of y on design [m, p], threshold k."""
    weights = np.ones_like(y)
    for _ in range(ITERATIONS):
        root = np.sqrt(weights)
        coef = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]
        residual = np.abs(y - design @ coef)
        weights = np.minimum(1.0, k / np.maximum(residual, 1e-300))
    loss = np.where(residual <= k, residual ** 2 / 2, k * residual - k * k / 2).sum()
    return coef, float(loss)


def _hinge(x: np.ndarray, u: float) -> np.ndarray:
    return np.column_stack([np.ones_like(x), x, np.maximum(0.0, x - u)])


def _head_model(x, y, head: int, u: float, k: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Returns (Huber loss, head line, tail [intercept, slope, hinge]) for a head of `head` ranks."""
    front, front_loss = huber_lstsq(np.column_stack([np.ones(head), x[:head]]), y[:head], k)
    tail, tail_loss = huber_lstsq(_hinge(x[head:], u), y[head:], k)
    return front_loss + tail_loss, front, tail


FIT_COLUMNS = ("head_size", "decay_start_rank", "head_slope", "power_law_slope", "decay_slope", "plateau_lift",
               "huber_scale")


def fit_curve(log_influence, sql_head_size: int, sql_decay_end: int, sql_null_decay_end: int) -> dict:
    """Returns the robust head model of one curve (ln|ΔLoss| by rank 1..n); its fit columns are
    None where the SQL has no head (fewer than 60 neurons: no room for one)."""
    y = np.asarray(log_influence, dtype=float)
    n = y.size
    if sql_head_size is None or n // HEAD_FRACTION < MIN_HEAD:
        return {"n_neurons": n, **dict.fromkeys(FIT_COLUMNS)}
    x = np.log(np.arange(1, n + 1))
    # one noise scale for every candidate: the residuals of the SQL's power law + decay (no head)
    null_residuals = y - _hinge(x, np.log(sql_null_decay_end)) @ np.linalg.lstsq(
        _hinge(x, np.log(sql_null_decay_end)), y, rcond=None)[0]
    k = max(HUBER * 1.4826 * np.median(np.abs(null_residuals - np.median(null_residuals))), 1e-3)
    heads = np.unique(np.r_[np.geomspace(MIN_HEAD, n // HEAD_FRACTION, GRID).astype(int), sql_head_size])
    u_sql = np.log(sql_decay_end)
    # P with the SQL's decay point (or an e-fold after P), then the decay point given P
    head = min(heads, key=lambda p: _head_model(x, y, p, max(u_sql, np.log(p) + 1), k)[0])
    decays = [u for u in np.linspace(u_sql - BAND, u_sql + BAND, 21) if np.log(head) + 1 <= u < np.log(n - 3)]
    u = min(decays or [max(u_sql, np.log(head) + 1)], key=lambda u: _head_model(x, y, head, u, k)[0])
    _, front, tail = _head_model(x, y, head, u, k)
    return {
        "n_neurons": n,
        "head_size": int(head),
        "decay_start_rank": int(np.floor(np.exp(u) + 1e-9)) + 1,
        "head_slope": float(front[1]),
        "power_law_slope": float(tail[1]),
        "decay_slope": float(tail[1] + tail[2]),
        "plateau_lift": float((y[:head] - (tail[0] + tail[1] * x[:head])).mean()),
        "huber_scale": float(k),
    }


def compute(con, run_id: str) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_regime_fits": one robust fit per curve of `run_id`, beside the SQL's}."""
    curves = con.sql(
        f"""
        select {", ".join(CURVE)}, ys as log_influence
        from regime_curves
        where run_id = ?
        order by all
        """,
        params=[run_id],
    ).pl()
    sql_fits = con.sql(
        f"""
        select {", ".join(CURVE)},
            has_plateau as sql_has_plateau,
            plateau_verdict as sql_plateau_verdict,
            head_size as sql_head_size,
            head_decay_start_rank - 1 as sql_decay_end,
            null_decay_start_rank - 1 as sql_null_decay_end,
            plateau_lift as sql_plateau_lift,
            lift_threshold as sql_lift_threshold,
            delta_bic as sql_delta_bic,
        from regime_summary
        where run_id = ?
        """,
        params=[run_id],
    ).pl()
    sql_by_curve = {tuple(row[c] for c in CURVE): row for row in sql_fits.iter_rows(named=True)}
    rows = []
    for curve in curves.iter_rows(named=True):
        sql_fit = sql_by_curve.get(tuple(curve[c] for c in CURVE))
        if sql_fit is None:
            continue
        fit = fit_curve(curve.pop("log_influence"), sql_fit["sql_head_size"], sql_fit["sql_decay_end"],
                        sql_fit["sql_null_decay_end"])
        rows.append({**curve, **fit})
    schema = {
        "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "token_class": pl.Utf8, "sign": pl.Utf8,
        "n_neurons": pl.Int32, "head_size": pl.Int32, "decay_start_rank": pl.Int32, "head_slope": pl.Float64,
        "power_law_slope": pl.Float64, "decay_slope": pl.Float64, "plateau_lift": pl.Float64,
        "huber_scale": pl.Float64,
    }
    fits = pl.DataFrame(rows, schema=schema).join(sql_fits.drop("sql_decay_end", "sql_null_decay_end"),
                                                  on=CURVE, how="left")
    robust_plateau = ((pl.col("sql_delta_bic") > 10) & (pl.col("plateau_lift") > pl.col("sql_lift_threshold"))
                      & (pl.col("sql_plateau_verdict") != "insufficient_evidence"))
    sizes_agree = (pl.col("head_size") - pl.col("sql_head_size")).abs() <= AGREEMENT * pl.col("sql_head_size")
    fits = fits.with_columns(has_plateau=robust_plateau.fill_null(False)).with_columns(
        agrees_with_sql=(pl.col("has_plateau") == pl.col("sql_has_plateau"))
        & (~pl.col("has_plateau") | sizes_agree),
    )
    return {"analysis_regime_fits": fits}
