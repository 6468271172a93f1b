"""Activation-geometry views and analysis: checked against double loops and dense eigendecompositions.

    .venv/bin/pytest tests/unit/test_geometry.py
"""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from rtn import sql
from rtn.analyses import geometry

MY_VIEWS = ["rare_activations", "group_activation_pairs", "group_pair_stats", "modularity_edges", "group_weights"]


def build_warehouse(acts_by_step: dict[int, np.ndarray], groups_by_step: dict[int, dict[str, list[int]]],
                    rare: np.ndarray, weights_by_step: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                    run_id: str = "t", layer: int = 3) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory warehouse holding activations [samples, neurons] per step, groups and weights.

    Sample k is (seq k // 16, pos 1 + k % 16); its prediction is rare where rare[k], else common or
    excluded (NULL); eval_tokens also has positions that were not sampled. `neuron_groups` is a
    plain table here (the real one is a teammate's view).
    """
    con = duckdb.connect()
    sql.create_tables(con)
    con.execute("create table neuron_groups (run_id varchar, step bigint, layer integer, group_name varchar, neuron integer)")
    sql.apply_views(con, names=MY_VIEWS)
    n_samples = len(rare)
    seq, pos = np.arange(n_samples) // 16, 1 + np.arange(n_samples) % 16
    target = ["rare" if r else (None if k % 3 == 0 else "common") for k, r in enumerate(rare)]
    positions = pl.DataFrame({"run_id": run_id, "sample_idx": np.arange(n_samples), "seq": seq, "pos": pos})
    unsampled = pl.DataFrame({"run_id": run_id, "seq": np.unique(seq), "pos": 0, "token_id": 1, "target_class": "rare"})
    tokens = pl.concat([pl.DataFrame({"run_id": run_id, "seq": seq, "pos": pos, "token_id": 2, "target_class": target}),
                        unsampled], how="vertical_relaxed")
    _insert(con, "activation_sample_positions", positions)
    _insert(con, "eval_tokens", tokens)
    for step, acts in acts_by_step.items():
        n_neurons = acts.shape[1]
        _insert(con, "activation_samples", pl.DataFrame({
            "run_id": run_id, "step": step, "layer": layer, "neuron": np.arange(n_neurons),
            "acts": pl.Series(acts.T.astype(np.float32)).cast(pl.List(pl.Float32))}))
    for step, groups in groups_by_step.items():
        _insert(con, "neuron_groups", pl.DataFrame(
            [(run_id, step, layer, name, int(n)) for name, neurons in groups.items() for n in neurons],
            schema=["run_id", "step", "layer", "group_name", "neuron"], orient="row"))
    for step, (w_in, w_out) in (weights_by_step or {}).items():
        _insert(con, "neuron_weights", pl.DataFrame({
            "run_id": run_id, "step": step, "layer": layer, "neuron": np.arange(w_in.shape[0]),
            "w_in": pl.Series(w_in.astype(np.float32)).cast(pl.List(pl.Float32)),
            "w_out": pl.Series(w_out.astype(np.float32)).cast(pl.List(pl.Float32))}))
    return con


def _insert(con, table: str, frame: pl.DataFrame) -> None:
    con.register("_frame", frame.to_arrow())
    con.execute(f"insert into {table} ({', '.join(frame.columns)}) select {', '.join(frame.columns)} from _frame")
    con.unregister("_frame")


def stored_rare_acts(acts: np.ndarray, rare: np.ndarray) -> np.ndarray:
    """Returns the activations as the warehouse holds them (float32) at rare samples, in float64."""
    return acts[rare].astype(np.float32).astype(np.float64)


def _random_setup(seed: int = 0, n_samples: int = 48, n_neurons: int = 30):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n_samples, n_neurons)) + 0.3
    rare = rng.random(n_samples) < 0.6
    groups = {"plateau": [0, 4, 7, 9], "random_1": [1, 2, 3, 5], "random_2": [3, 6, 11, 12], "top_boost_k": [20, 21]}
    return acts, rare, groups


def test_rare_activations_keep_only_rare_target_samples_in_sample_order():
    acts = np.arange(12, dtype=np.float64).reshape(6, 2)          # [samples, neurons]
    rare = np.array([True, False, True, True, False, False])
    con = build_warehouse({5: acts}, {}, rare)
    got = con.execute("select neuron, n_samples, acts, mean_act, centred from rare_activations order by neuron").fetchall()
    assert got == [(0, 3, [0.0, 4.0, 6.0], pytest.approx(10 / 3), pytest.approx([-10 / 3, 2 / 3, 8 / 3])),
                   (1, 3, [1.0, 5.0, 7.0], pytest.approx(13 / 3), pytest.approx([-10 / 3, 2 / 3, 8 / 3]))]


def test_pair_cosine_and_pearson_match_a_double_loop():
    acts, rare, groups = _random_setup()
    con = build_warehouse({0: acts}, {0: groups}, rare)
    x = stored_rare_acts(acts, rare)
    expected = {}
    names = list(groups)
    for ga in names:
        for gb in names:
            within = ga == gb
            if not (within or (gb.startswith("random_") and (not ga.startswith("random_") or ga < gb))):
                continue
            for a in groups[ga]:
                for b in groups[gb]:
                    if a == b or (within and a > b):
                        continue
                    u, v = x[:, a], x[:, b]
                    cosine = sum(p * q for p, q in zip(u, v)) / np.sqrt(sum(p * p for p in u) * sum(q * q for q in v))
                    du, dv = u - u.mean(), v - v.mean()
                    pearson = sum(p * q for p, q in zip(du, dv)) / np.sqrt(sum(p * p for p in du) * sum(q * q for q in dv))
                    expected[(ga, gb, a, b)] = (cosine, pearson)
    rows = con.execute("select group_a, group_b, neuron_a, neuron_b, cosine, pearson, pair_kind "
                       "from group_activation_pairs").fetchall()
    got = {(ga, gb, a, b): (c, p) for ga, gb, a, b, c, p, _ in rows}
    assert len(rows) == len(got) == len(expected)
    assert got.keys() == expected.keys()
    for key, (cosine, pearson) in expected.items():
        assert got[key] == pytest.approx((cosine, pearson), abs=1e-12)
    assert {kind for *_, kind in rows} == {"within", "between"}


def test_pair_views_have_unique_grain():
    acts, rare, groups = _random_setup()
    con = build_warehouse({0: acts, 1: acts[:, ::-1].copy()}, {0: groups, 1: groups}, rare)
    for view, grain in [("group_activation_pairs", "run_id, step, layer, group_a, group_b, neuron_a, neuron_b"),
                        ("group_pair_stats", "run_id, step, layer, group_a, group_b"),
                        ("modularity_edges", "run_id, step, layer, group_name, neuron_a, neuron_b"),
                        ("rare_activations", "run_id, step, layer, neuron")]:
        total, distinct = con.execute(f"select count(*), count(distinct ({grain})) from {view}").fetchone()
        assert total == distinct > 0, view


def test_constant_neuron_has_null_correlation_not_nan():
    acts, rare, groups = _random_setup()
    acts[:, 4] = 0.0
    con = build_warehouse({0: acts}, {0: groups}, rare)
    nulls = con.execute("select count(*) from group_activation_pairs where 4 in (neuron_a, neuron_b) "
                        "and cosine is null and pearson is null").fetchone()[0]
    assert nulls == 3 + 8  # 3 plateau partners, 4 + 4 random partners
    assert con.execute("select count(*) from modularity_edges where 4 in (neuron_a, neuron_b)").fetchone()[0] == 0


def test_modularity_edges_hold_group_and_union_graphs():
    acts, rare, groups = _random_setup()
    con = build_warehouse({0: acts}, {0: groups}, rare)
    counts = dict(con.execute("select group_name, count(*) from modularity_edges group by all").fetchall())
    assert counts == {"plateau": 6, "random_1": 6, "random_2": 6, "top_boost_k": 1,
                      "plateau+random_1": 28, "plateau+random_2": 28}
    mismatched = con.execute("select count(*) from modularity_edges "
                             "where weight <> abs(signed_weight) or neuron_a >= neuron_b").fetchone()[0]
    assert mismatched == 0


def test_effective_dimensionality_matches_dense_eigendecomposition():
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((200, 3))
    acts = latent @ rng.standard_normal((3, 12)) + 0.3 * rng.standard_normal((200, 12)) + 5.0
    eff_dim, ratio = geometry.effective_dimensionality(acts)
    corr = np.corrcoef(acts, rowvar=False)
    lam = np.sort(np.linalg.eig(corr)[0].real)[::-1]       # general dense eig, not eigvalsh
    share = np.cumsum(lam) / lam.sum()
    assert eff_dim == next(i + 1 for i, s in enumerate(share) if s >= 0.95)
    assert ratio == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-10)
    assert 3 <= eff_dim <= 12 and 1.0 <= ratio <= 3.5


def test_effective_dimensionality_of_independent_and_rank_one_activations():
    rng = np.random.default_rng(2)
    assert geometry.effective_dimensionality(rng.standard_normal((5000, 10)))[0] == 10
    one = rng.standard_normal((100, 1)) * np.arange(1, 9)   # every neuron a multiple of one signal
    eff_dim, ratio = geometry.effective_dimensionality(one)
    assert eff_dim == 1 and ratio == pytest.approx(1.0)


def test_geometry_finds_planted_coactivation_and_anticorrelation_with_random():
    rng = np.random.default_rng(3)
    n_samples, n_neurons = 300, 60
    shared = rng.standard_normal((n_samples, 1))
    acts = 0.8 * shared + rng.standard_normal((n_samples, n_neurons))      # every neuron follows `shared`
    plateau = [5, 17, 23, 31, 42, 50]
    acts[:, plateau] = -2.0 * shared + 0.5 * rng.standard_normal((n_samples, len(plateau)))  # ... plateau opposite
    groups = {"plateau": plateau, "random_1": [0, 1, 2, 3, 4, 6], "random_2": [7, 8, 9, 10, 11, 12],
              "random_3": [13, 14, 15, 16, 18, 19]}
    rare = np.ones(n_samples, dtype=bool)
    con = build_warehouse({100: acts}, {100: groups}, rare)
    table = geometry.compute(con, "t")["analysis_geometry"]
    assert table.height == 4 and table["group_name"].to_list() == sorted(groups)
    row = table.filter(pl.col("group_name") == "plateau").row(0, named=True)
    assert row["mean_pearson"] > 0.8 > 0.5 > row["random_mean_pearson"]
    assert row["eff_dim_95"] < row["random_eff_dim_95"]
    assert row["participation_ratio"] < row["random_participation_ratio"]
    assert row["mean_pearson_vs_random"] < -0.2 < 0.1 < row["random_mean_pearson_vs_random"]
    # the view's statistics against the direct computation
    x = stored_rare_acts(acts, rare)[:, plateau]
    corr = np.corrcoef(x, rowvar=False)[np.triu_indices(len(plateau), 1)]
    unit = x / np.linalg.norm(x, axis=0)
    cosine = (unit.T @ unit)[np.triu_indices(len(plateau), 1)]
    assert row["mean_pearson"] == pytest.approx(corr.mean(), abs=1e-12)
    assert row["median_pearson"] == pytest.approx(np.median(corr), abs=1e-12)
    assert row["mean_cosine"] == pytest.approx(cosine.mean(), abs=1e-12)
    assert row["median_cosine"] == pytest.approx(np.median(cosine), abs=1e-12)
    randoms = table.filter(pl.col("group_name").str.starts_with("random_"))
    assert row["random_mean_cosine"] == pytest.approx(randoms["mean_cosine"].mean())
    assert (row["n_neurons"], row["n_samples"], row["n_pairs"]) == (6, n_samples, 15)


def test_geometry_rows_for_every_step_and_group():
    acts, rare, groups = _random_setup()
    con = build_warehouse({0: acts, 8: acts * 2.0}, {0: groups, 8: groups}, rare)
    table = geometry.compute(con, "t")["analysis_geometry"]
    assert table.select("step", "group_name").rows() == [(s, g) for s in (0, 8) for g in sorted(groups)]
    # scaling every activation changes neither correlation nor cosine nor dimensionality
    first, second = (table.filter(pl.col("step") == s).drop("step") for s in (0, 8))
    numeric = [c for c, t in first.schema.items() if t.is_numeric()]
    assert first.select(numeric).to_numpy() == pytest.approx(second.select(numeric).to_numpy(), nan_ok=True, abs=1e-9)


def test_analysis_tables_take_the_analyses_rows_through_the_writer():
    from rtn.analyses import group_spectra, modularity
    from rtn.warehouse import replace_rows
    acts, rare, groups = _random_setup()
    rng = np.random.default_rng(5)
    weights = (rng.standard_normal((30, 16)), rng.standard_normal((30, 16)))
    con = build_warehouse({0: acts}, {0: groups}, rare, {0: weights})
    tables = {**geometry.compute(con, "t"), **group_spectra.compute(con, "t"),
              **modularity.compute(con, "t", modularity.ModularityConfig(n_null=3, workers=1))}
    assert set(tables) == {"analysis_geometry", "analysis_group_spectra", "analysis_modularity", "analysis_communities"}
    for _ in range(2):  # idempotent: the second write replaces the first
        for name, rows in tables.items():
            replace_rows(con, name, rows, run_id="t")
    for name, rows in tables.items():
        assert con.execute(f"select count(*) from {name}").fetchone()[0] == rows.height > 0, name
