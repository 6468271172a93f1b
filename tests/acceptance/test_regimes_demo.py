"""The demo warehouse's regime fits: the SQL fit against the robust Python fit on every demo curve.

    pytest tests/acceptance/test_regimes_demo.py     # builds the demo warehouse (~2 min with the model cached)
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from regime_oracle import continuous_fit, hinge_design, huber_loss, huber_weights
from rtn.analyses import regimes

# ---- the demo warehouse (slow) ---------------------------------------------------------------

def demo_regime_fits(path: Path) -> pl.DataFrame:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql("select * from analysis_regime_fits where run_id = 'demo' and sql_has_plateau").pl()
    finally:
        con.close()


def demo_curve(path: Path, fit: dict) -> np.ndarray:
    """Returns ln|ΔLoss| of the demo curve behind one analysis_regime_fits row, by rank."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.sql(
            "select log_influence from neuron_influence where run_id = ? and step = ? and layer = ? "
            "and token_class = ? and sign = ? order by rank",
            params=[fit[key] for key in ["run_id", "step", "layer", "token_class", "sign"]])
        return rows.fetchnumpy()["log_influence"]
    finally:
        con.close()


def test_python_robust_fit_agrees_with_sql_on_every_demo_plateau_curve(demo_warehouse):
    # issue 3, acceptance 2: within 10 % of rank on both breakpoints (measured: 69 of 69 curves;
    # the independent grid fit, which never sees the SQL, on 68)
    fits = demo_regime_fits(demo_warehouse)
    assert fits.height > 0 and fits["refined_from_sql"].all()
    disagree = fits.filter(~pl.col("agrees_with_sql")).select(
        "step", "token_class", "sign", "plateau_end_rank", "sql_plateau_end_rank", "decay_start_rank",
        "sql_decay_start_rank")
    assert disagree.height == 0, f"{disagree.height} of {fits.height} plateau curves disagree:\n{disagree}"
    assert fits["grid_agrees_with_sql"].mean() >= 0.95


def test_the_huber_step_lowers_the_huber_loss_of_every_demo_curve(demo_warehouse):
    # One reweighted step is a majorize-minimize step: the weighted line at the reported breaks has
    # at most the Huber loss of the least-squares start (numpy on the explicit design, every curve).
    con = duckdb.connect(str(demo_warehouse), read_only=True)
    try:
        fits = con.sql("select * from regime_summary where run_id = 'demo' and ls_three_seg_plateau_end_rank "
                       "is not null order by all").pl()
        robust = con.sql("select * from analysis_regime_fits where run_id = 'demo' and sql_has_plateau").pl()
    finally:
        con.close()
    moved = 0
    for fit in fits.iter_rows(named=True):
        y = demo_curve(demo_warehouse, fit)
        start = [fit["ls_three_seg_plateau_end_rank"], fit["ls_three_seg_decay_start_rank"] - 1]
        reported = [fit["three_seg_plateau_end_rank"], fit["three_seg_decay_start_rank"] - 1]
        before = y - hinge_design(y.size, start) @ continuous_fit(y, start)[1]
        k, weights = huber_weights(before)
        assert fit["huber_scale"] == pytest.approx(k, rel=1e-9)
        after = y - hinge_design(y.size, reported) @ continuous_fit(y, reported, weights)[1]
        assert huber_loss(after, k) <= huber_loss(before, k) * (1 + 1e-12)
        moved += reported != start
    assert moved >= 1                         # measured: most curves move a cut or two
    # and where least squares alone lands over 10 % from the robust fit, the step settles it
    # (measured: 6 plateau curves, rare suppress at steps 4 and 8 among them)
    joined = robust.join(fits.select(regimes.CURVE + ["ls_three_seg_plateau_end_rank", "ls_three_seg_decay_start_rank"]),
                         on=regimes.CURVE)
    least_squares_agrees = regimes._agrees("plateau_end_rank", "ls_three_seg_plateau_end_rank") & regimes._agrees(
        "decay_start_rank", "ls_three_seg_decay_start_rank")
    settled = joined.filter(~least_squares_agrees)
    assert settled.height >= 1 and settled["agrees_with_sql"].all()
