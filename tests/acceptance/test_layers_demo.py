"""The demo's per-layer run (`demo-layers`: the first and last checkpoints, every MLP layer ablated exactly): its
layers side by side, and its last layer equal to the main demo run's, which computed it on its own.

    pytest tests/acceptance/test_layers_demo.py     # builds the demo warehouse (~3 min with the model cached)
"""
from __future__ import annotations

import duckdb
import numpy as np

from rtn.demo import DEMO_RUN, LAYERS_RUN


def read(path, query: str, params=()):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(query, params=list(params)).pl()
    finally:
        con.close()


def test_every_layer_is_ablated_exactly_at_the_first_and_last_step(demo_warehouse):
    runs = read(demo_warehouse, "select n_layers, d_mlp from runs where run_id = ?", [LAYERS_RUN])
    n_layers, d_mlp = runs.row(0)
    steps = read(demo_warehouse, "select min(step) as first, max(step) as last from checkpoints where run_id = ?",
                 [DEMO_RUN]).row(0)
    counts = read(demo_warehouse, "select step, layer, count(*) as n from ablation_deltas where run_id = ? "
                  "group by step, layer order by step, layer", [LAYERS_RUN])
    assert counts.rows() == [(step, layer, d_mlp * 3) for step in steps for layer in range(n_layers)]
    comparison = read(demo_warehouse, "select * from layer_comparison where run_id = ? order by step, layer",
                      [LAYERS_RUN])
    assert comparison.height == 2 * n_layers
    assert comparison["plateau_verdict_rare"].null_count() == 0
    assert comparison["attribution_spearman_rare"].null_count() == 0   # the screen against exact, every layer


def test_the_last_layer_of_the_layers_run_equals_the_demo_run(demo_warehouse):
    # same corpus, positions and checkpoints, so the same numbers up to one difference: with earlier layers studied
    # the clean forward runs on a float64 copy of the model, the demo run's in the weights' float32 (a rounding of
    # ~1e-9 nats here, against ΔLoss up to ~1e-3 and standard errors far larger; a wrong neuron or layer is ~1e-4 off)
    joined = read(demo_warehouse, """
        select l.delta_loss as per_layer_run, d.delta_loss as demo_run
        from ablation_deltas as l
        join ablation_deltas as d using (step, layer, neuron, token_class)
        where l.run_id = ? and d.run_id = ? and l.layer = (select n_layers - 1 from runs where run_id = ?)""",
                  [LAYERS_RUN, DEMO_RUN, LAYERS_RUN])
    assert joined.height > 0
    np.testing.assert_allclose(joined["per_layer_run"], joined["demo_run"], rtol=0, atol=1e-8)


def test_the_demo_prints_each_layers_verdict(demo_warehouse):
    out = (demo_warehouse.parent / "demo.out").read_text()
    assert out.count(f"run '{LAYERS_RUN}' step") == 2 * read(
        demo_warehouse, "select n_layers from runs where run_id = ?", [LAYERS_RUN]).item()
