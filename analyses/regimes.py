"""Robust cross-check of the SQL regime fit (regime_summary): a continuous three-segment line
(plateau, power law, decay) on ln|ΔLoss| against ln(rank), refined with a Huber loss.

    from rtn.analyses import regimes
    tables = regimes.compute(con, "demo")   # {"analysis_regime_fits": polars.DataFrame}

On a machine with few cores, run with OPENBLAS_NUM_THREADS=1: scipy's least_squares takes an SVD
of the tall Jacobian every iteration, which OpenBLAS threads make ~100x slower when they contend.

The SQL fits the same continuous line with its hinges on ranks from a grid, by least squares over
every pair of candidate breakpoints and then one Huber-reweighted step; this one treats the
breakpoints as free parameters and minimises the Huber loss itself (scipy), computing its own
threshold the same way. It is a refinement of the SQL fit: it starts from
regime_summary's three_seg_* breakpoints and lets each move by WINDOW or more (in ln rank, much
wider than the AGREEMENT criterion, so a wrong SQL break is still pulled away and disagreement shows).
Agreement then says the SQL breakpoints sit where a continuous, robust fit of the curve puts them.

Beside it, the grid_* columns keep an independent fit that never sees the SQL: every pair of
breaks on its own grid (GRID points evenly spaced in ln rank), refined on a finer grid around the
best pair and then with the same Huber fit within REFINE. On curves that bend smoothly (the
demo's) the squared error has several local minima, so the two searches may settle on different bends.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy.optimize import least_squares

GRID = 60            # candidate breakpoints per grid search, evenly spaced in ln(rank)
MIN_POINTS = 3       # neurons each segment keeps, as in the SQL
POWER_LAW_SPAN = 1.0 # the power law spans at least this much ln(rank) (one e-fold), as in the SQL
REFINE = 0.3         # how far (in ln rank) refinement may move a break from the grid's choice
WINDOW = 0.5         # how far (in ln rank) refinement may move a break from the SQL's choice
HUBER = 1.345        # Huber threshold in robust standard deviations (1.4826 MAD) of the residuals
AGREEMENT = 0.10     # breakpoints agree when within this fraction of the SQL rank (or one rank)

CURVE = ["run_id", "step", "layer", "token_class", "sign"]


def _hinges(x: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """Returns the design [candidates, n, 2 + k]: 1, x and max(0, x - u) for each break u."""
    ones = np.ones((breaks.shape[0], x.size, 1))
    slopes = np.broadcast_to(x[None, :, None], ones.shape)
    return np.concatenate([ones, slopes, np.maximum(0.0, x[None, :, None] - breaks[:, None, :])], axis=2)


def _best_breaks(x: np.ndarray, y: np.ndarray, breaks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Returns the row of `breaks` [candidates, k] whose continuous hinge line fits best (least
    squares), the first on ties; candidates go `chunk` at a time to bound the [chunk, n, 2 + k] design."""
    sse = []
    for start in range(0, breaks.shape[0], chunk):
        design = _hinges(x, breaks[start:start + chunk])              # [chunk, n, 2 + k]
        gram = np.einsum("cni,cnj->cij", design, design)
        moments = np.einsum("cni,n->ci", design, y)
        coef = np.linalg.solve(gram + 1e-12 * np.eye(gram.shape[1]), moments[..., None])[..., 0]
        sse.append(((np.einsum("cni,ci->cn", design, coef) - y) ** 2).sum(axis=1))
    return breaks[np.argmin(np.concatenate(sse))]


def _line(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Continuous three-segment line; params = (intercept, slope1, slope2, slope3, u1, w), with the
    breaks at u1 and u2 = u1 + POWER_LAW_SPAN + w (w >= 0 keeps the power law an e-fold long)."""
    a, s1, s2, s3, u1, w = params
    u2 = u1 + POWER_LAW_SPAN + w
    return a + s1 * x + (s2 - s1) * np.maximum(0.0, x - u1) + (s3 - s2) * np.maximum(0.0, x - u2)


def _line_jacobian(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Returns d line / d params, [n, 6]."""
    _, s1, s2, s3, u1, w = params
    u2 = u1 + POWER_LAW_SPAN + w
    past1, past2 = np.maximum(0.0, x - u1), np.maximum(0.0, x - u2)
    d_u2 = -(s3 - s2) * (x > u2)
    return np.column_stack([np.ones_like(x), x - past1, past1 - past2, past2, -(s2 - s1) * (x > u1) + d_u2, d_u2])


def _grid_breaks(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[float, float] | None:
    """Returns the independent grid search's breaks (u1, u2) in ln rank, None if none fit."""
    grid = np.linspace(lo, hi, GRID)
    # 1. every pair of grid points an e-fold of rank or more apart (smooth curves have several
    # local minima, so no stepwise search); 2. both breaks on a finer grid around the best pair
    first, second = np.triu_indices(GRID, k=1)
    pairs = np.column_stack([grid[first], grid[second]])
    pairs = pairs[pairs[:, 1] - pairs[:, 0] >= POWER_LAW_SPAN]
    if pairs.shape[0] == 0:
        return None
    plateau, decay = _best_breaks(x, y, pairs)
    near = np.linspace(-REFINE, REFINE, 15)
    pairs = np.array([(plateau + a, decay + b) for a in near for b in near
                      if lo <= plateau + a and decay + b <= hi and b - a >= POWER_LAW_SPAN + plateau - decay])
    plateau, decay = _best_breaks(x, y, pairs)
    return float(plateau), float(decay)


def _huber_fit(x: np.ndarray, y: np.ndarray, plateau: float, decay: float, window: float, lo: float,
               span_window: tuple[float, float]) -> dict:
    """Returns the Huber fit of the continuous three-segment line started from breaks (plateau,
    decay) in ln rank: u1 free within `window` of plateau, the power law's span u2 - u1 (at least
    POWER_LAW_SPAN) within span_window = (below, above) of its start."""
    span = max(decay - plateau - POWER_LAW_SPAN, 0.0)
    start_design = _hinges(x, np.array([[plateau, plateau + POWER_LAW_SPAN + span]]))[0]
    coef = np.linalg.lstsq(start_design, y, rcond=None)[0]
    slopes = np.cumsum(coef[1:])
    start = np.array([coef[0], *slopes, plateau, span])
    residuals = y - _line(start, x)
    scale = max(HUBER * 1.4826 * np.median(np.abs(residuals - np.median(residuals))), 1e-3)
    lower = np.array([-np.inf] * 4 + [max(lo, plateau - window), max(span - span_window[0], 0.0)])
    upper = np.array([np.inf] * 4 + [max(plateau + window, lower[4] + 1e-6), span + span_window[1]])
    result = least_squares(
        lambda p: _line(p, x) - y, np.clip(start, lower, upper), jac=lambda p: _line_jacobian(p, x),
        bounds=(lower, upper), loss="huber", f_scale=scale,
    )
    _, s1, s2, s3, u1, w = result.x
    u2 = u1 + POWER_LAW_SPAN + w
    return {
        "plateau_end_rank": int(np.floor(np.exp(u1) + 1e-9)),   # ranks with ln(rank) <= u1
        "decay_start_rank": int(np.floor(np.exp(u2) + 1e-9)) + 1,
        "plateau_slope": float(s1),
        "power_law_slope": float(s2),
        "decay_slope": float(s3),
        "huber_scale": float(scale),
    }


def fit_curve(log_influence: np.ndarray, sql_plateau_end_rank: int | None = None,
              sql_decay_start_rank: int | None = None, window: float = WINDOW) -> dict | None:
    """Returns the Huber fit of one curve (log influence ordered by rank 1..n), None if too short.

    Given the SQL's breakpoints (last plateau rank, first decay rank), the main columns refine
    them (refined_from_sql); otherwise they repeat the independent grid fit (grid_* columns)."""
    y = np.asarray(log_influence, dtype=float)
    n = y.size
    if n < 3 * MIN_POINTS + 3:
        return None
    x = np.log(np.arange(1, n + 1))
    # a break u keeps >= MIN_POINTS ranks on each side: ln(MIN_POINTS) <= u < ln(n - MIN_POINTS)
    lo, hi = np.log(MIN_POINTS), np.log(n - MIN_POINTS)
    breaks = _grid_breaks(x, y, lo, hi)
    # the grid's breaks: u1 within REFINE, the span up to 2 REFINE longer (u2 within ~3 REFINE)
    grid = _huber_fit(x, y, *breaks, REFINE, lo, (np.inf, 2 * REFINE)) if breaks is not None else None
    if sql_plateau_end_rank is not None and sql_decay_start_rank is not None:
        # the SQL's hinges sit on the last rank of a segment: u1 = ln(b1) for plateau ranks <= b1,
        # u2 = ln(d - 1) for decay ranks >= d, which _huber_fit's floors map back to exactly b1
        # and d; u1 within `window`, the span within 2 windows either way, so any (u1, u2) within
        # `window` of the SQL's pair is reachable (and u2 stays within 3 windows)
        fit = _huber_fit(x, y, float(np.log(sql_plateau_end_rank)), float(np.log(sql_decay_start_rank - 1)),
                         window, lo, (2 * window, 2 * window))
        refined = True
    elif grid is not None:
        fit, refined = grid, False
    else:
        return None
    grid = grid or dict.fromkeys(fit)
    return {"n_neurons": n, **fit, "refined_from_sql": refined,
            **{f"grid_{key}": value for key, value in grid.items() if key != "huber_scale"}}


def _agrees(rank: str, sql_rank: str) -> pl.Expr:
    """Whether two breakpoint ranks agree: within AGREEMENT of the SQL rank, or one rank (the point
    on the kink of a continuous curve fits either segment); false where the SQL has none."""
    tolerance = pl.max_horizontal(pl.lit(1.0), AGREEMENT * pl.col(sql_rank))
    return ((pl.col(rank) - pl.col(sql_rank)).abs() <= tolerance).fill_null(False)


def compute(con, run_id: str) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_regime_fits": one robust fit per curve of `run_id`, beside the SQL's}."""
    curves = con.sql(
        f"""
        select {", ".join(CURVE)}, list(log_influence order by rank) as log_influence
        from neuron_influence
        where run_id = ?
        group by all
        order by all
        """,
        params=[run_id],
    ).pl()
    sql_fits = con.sql(
        f"""
        select {", ".join(CURVE)},
            has_plateau as sql_has_plateau,
            three_seg_plateau_end_rank as sql_plateau_end_rank,
            three_seg_decay_start_rank as sql_decay_start_rank,
        from regime_summary
        where run_id = ?
        """,
        params=[run_id],
    ).pl()
    sql_breaks = {tuple(row[:len(CURVE)]): row[len(CURVE) + 1:] for row in sql_fits.iter_rows()}
    rows = []
    for curve in curves.iter_rows(named=True):
        plateau_end, decay_start = sql_breaks.get(tuple(curve[c] for c in CURVE), (None, None))
        fit = fit_curve(np.asarray(curve.pop("log_influence")), plateau_end, decay_start)
        if fit is not None:
            rows.append({**curve, **fit})
    schema = {
        "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "token_class": pl.Utf8, "sign": pl.Utf8,
        "n_neurons": pl.Int32, "plateau_end_rank": pl.Int32, "decay_start_rank": pl.Int32,
        "plateau_slope": pl.Float64, "power_law_slope": pl.Float64, "decay_slope": pl.Float64,
        "huber_scale": pl.Float64, "refined_from_sql": pl.Boolean,
        "grid_plateau_end_rank": pl.Int32, "grid_decay_start_rank": pl.Int32, "grid_plateau_slope": pl.Float64,
        "grid_power_law_slope": pl.Float64, "grid_decay_slope": pl.Float64,
    }
    fits = pl.DataFrame(rows, schema=schema).join(sql_fits, on=CURVE, how="left").with_columns(
        agrees_with_sql=_agrees("plateau_end_rank", "sql_plateau_end_rank")
        & _agrees("decay_start_rank", "sql_decay_start_rank"),
        grid_agrees_with_sql=_agrees("grid_plateau_end_rank", "sql_plateau_end_rank")
        & _agrees("grid_decay_start_rank", "sql_decay_start_rank"),
    )
    return {"analysis_regime_fits": fits}
