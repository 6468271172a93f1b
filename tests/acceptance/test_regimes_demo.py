"""The demo warehouse's regime verdicts: the SQL against the numpy slow path and the robust Huber
cross-check on every demo curve.

    pytest tests/acceptance/test_regimes_demo.py     # builds the demo warehouse (~2 min with the model cached)
"""
from __future__ import annotations

import duckdb
import numpy as np
import regime_oracle as oracle


def read(path, query: str):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(query).pl()
    finally:
        con.close()


def test_every_demo_curve_has_the_slow_paths_head_model(demo_warehouse):
    fits = read(demo_warehouse, "select s.*, c.ys from regime_summary as s join regime_curves as c "
                                "using (run_id, step, layer, token_class, sign) where run_id = 'demo'")
    assert fits.height > 0
    for fit in fits.iter_rows(named=True):
        y = np.asarray(fit["ys"])
        assert fit["null_decay_start_rank"] - 1 == oracle.null_fit(y)["decay_end"]
        head = oracle.head_fit(y)
        if head is None:
            assert fit["head_size"] is None
            continue
        assert (fit["head_size"], fit["head_decay_start_rank"] - 1) == (head["head_size"], head["decay_end"])
        assert abs(fit["plateau_lift"] - head["plateau_lift"]) <= 1e-6 * (1 + abs(head["plateau_lift"]))


def test_the_robust_fit_agrees_with_the_sql_verdict_on_the_demo(demo_warehouse):
    robust = read(demo_warehouse, "select * from analysis_regime_fits where run_id = 'demo'")
    assert robust.height > 0
    assert robust["agrees_with_sql"].mean() >= 0.9, robust.filter(~robust["agrees_with_sql"])
