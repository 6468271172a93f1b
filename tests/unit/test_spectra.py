"""Weight spectra: WeightWatcher-style power-law fits and the papers' per-group Hill α.

    .venv/bin/pytest tests/unit/test_spectra.py
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_geometry import build_warehouse

from rtn.analyses import group_spectra
from rtn.ingest import spectra


def _pareto(rng, n: int, density_exponent: float, xmin: float = 1.0) -> np.ndarray:
    """Returns n draws of p(x) ∝ x^-density_exponent for x >= xmin (survival exponent = density_exponent - 1)."""
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (density_exponent - 1.0))


def _matrix_with_eigenvalues(rng, eigenvalues: np.ndarray, rows: int, reflections: int = 4) -> np.ndarray:
    """Returns W [rows, n] whose WᵀW has exactly `eigenvalues`, in a basis turned by random reflections.

    Householder reflections (I − 2vvᵀ) are orthogonal and cost rank-1 updates, not a QR.
    """
    n = eigenvalues.size
    weight = np.zeros((rows, n))
    weight[np.arange(n), np.arange(n)] = np.sqrt(eigenvalues)
    for _ in range(reflections):
        left, right = (v / np.linalg.norm(v) for v in (rng.standard_normal(rows), rng.standard_normal(n)))
        weight -= 2.0 * np.outer(left, left @ weight)     # reflect the rows' space
        weight -= 2.0 * np.outer(weight @ right, right)   # reflect the columns' space
    return weight


@pytest.mark.parametrize("shape", [(50, 20), (20, 50), (64, 64)])
def test_eigenvalues_are_squared_singular_values_of_the_smaller_gram(shape):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = spectra.eigenvalues_of(w)
    assert got.dtype == np.float64 and got.size == min(shape) and np.all(np.diff(got) >= 0)
    singular = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert got == pytest.approx(np.sort(singular**2), rel=1e-9, abs=1e-9)
    w64 = w.astype(np.float64)
    dense = np.sort(np.linalg.eig(w64.T @ w64 if shape[0] >= shape[1] else w64 @ w64.T)[0].real)
    assert got == pytest.approx(dense, rel=1e-8, abs=1e-8)


def test_power_law_fit_matches_a_slow_loop_over_xmin_with_scipy_ks():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.uniform(0.2, 1.0, 150), _pareto(rng, 120, 3.0)])
    best = None
    for xmin in np.sort(values)[: values.size - spectra.MIN_TAIL + 1]:
        tail = values[values >= xmin]
        alpha = 1 + tail.size / np.sum(np.log(tail / xmin))
        ks = stats.kstest(tail, lambda x, a=alpha, m=xmin: 1 - (x / m) ** (1 - a)).statistic
        if best is None or ks < best[2]:
            best = (alpha, xmin, ks, tail.size)
    fit = spectra.fit_power_law(values)
    assert (fit["alpha"], fit["xmin"], fit["ks_distance"], fit["n_tail"]) == pytest.approx(best, rel=1e-9)
    assert fit["sigma"] == pytest.approx((best[0] - 1) / math.sqrt(best[3]))


def test_power_law_fit_respects_the_minimum_tail_size():
    values = _pareto(np.random.default_rng(2), 40, 2.5)
    assert spectra.fit_power_law(values, min_tail=30)["n_tail"] >= 30
    assert math.isnan(spectra.fit_power_law(values[:5])["alpha"])


@pytest.mark.parametrize("exponent", [1.8, 2.5, 3.5])
def test_mle_recovers_a_pareto_exponent_within_0_1(exponent):
    # 8000 draws: the MLE's standard error (α−1)/√n is at most 0.03 here, so 0.1 is > 3 of them
    fit = spectra.fit_power_law(_pareto(np.random.default_rng(3), 8000, exponent, xmin=0.5))
    assert fit["alpha"] == pytest.approx(exponent, abs=0.1)


@pytest.mark.parametrize("tail_index", [1.0, 1.5, 2.5, 4.0])
def test_hill_recovers_a_pareto_tail_index_within_0_1(tail_index):
    # Hill estimates the survival exponent; k = 10 % of 400000 → standard error tail_index/200
    values = _pareto(np.random.default_rng(4), 400_000, tail_index + 1.0)
    assert group_spectra.hill_alpha(values) == pytest.approx(tail_index, abs=0.1)


def test_matrix_with_pareto_spectrum_is_fitted_and_reported_heavy_tailed():
    rng = np.random.default_rng(5)
    eigenvalues = _pareto(rng, 600, 3.0)
    fit = spectra.fit_spectrum(_matrix_with_eigenvalues(rng, eigenvalues, rows=800))
    assert fit["eigenvalues"] == pytest.approx(np.sort(eigenvalues), rel=1e-6)
    assert fit["alpha"] == pytest.approx(3.0, abs=0.25)         # standard error 2/√600 = 0.08
    assert fit["mp_softrank"] < 0.5 and fit["heavy_tail"] and fit["tail_class"] == "heavy"


@pytest.mark.parametrize("shape", [(128, 64), (300, 100), (1000, 500), (2048, 512)])
def test_gaussian_random_matrix_is_reported_not_heavy_tailed(shape):
    for seed in range(4):
        fit = spectra.fit_spectrum(np.random.default_rng(seed).standard_normal(shape))
        # the fitted alpha alone is often < 6 at these sizes; the bulk-edge check catches it
        assert fit["mp_softrank"] > 0.9
        assert not fit["heavy_tail"] and fit["tail_class"] == "not_heavy"


def test_matrix_with_heavy_tailed_entries_is_reported_heavy_tailed():
    for seed in range(4):
        fit = spectra.fit_spectrum(np.random.default_rng(seed).standard_t(2.0, (1000, 500)))
        assert 2.0 <= fit["alpha"] <= 3.5 and fit["mp_softrank"] < 0.3
        assert fit["heavy_tail"] and fit["tail_class"] == "heavy"


def test_derived_norms_match_their_definitions():
    w = np.random.default_rng(6).standard_normal((80, 30))
    fit = spectra.fit_spectrum(w)
    spectral = np.linalg.norm(w, 2) ** 2
    assert fit["n_evals"] == 30
    assert fit["log_norm"] == pytest.approx(math.log10(np.sum(w**2)))
    assert fit["log_spectral_norm"] == pytest.approx(math.log10(spectral))
    assert fit["stable_rank"] == pytest.approx(np.sum(w**2) / spectral)
    assert fit["alpha_weighted"] == pytest.approx(fit["alpha"] * math.log10(spectral))


def test_tail_class_follows_weightwatcher_ranges_and_the_bulk_edge():
    assert [spectra.tail_class(a, 0.1) for a in (1.5, 2.0, 4.0, 6.0, 6.5, float("nan"))] == \
        ["very_heavy", "heavy", "heavy", "heavy", "not_heavy", "no_fit"]
    assert [spectra.tail_class(3.0, r) for r in (0.5, 0.85, 1.0, float("nan"))] == \
        ["heavy", "not_heavy", "not_heavy", "not_heavy"]


def test_mp_softrank_is_the_bulk_edge_over_the_top_eigenvalue():
    w = np.random.default_rng(10).standard_normal((90, 40))
    evals = spectra.eigenvalues_of(w)
    edge = np.sum(w**2) / (90 * 40) * (np.sqrt(90) + np.sqrt(40)) ** 2      # σ²(√n + √m)²
    assert spectra.mp_softrank(evals, w.shape) == pytest.approx(edge / np.linalg.norm(w, 2) ** 2)
    assert spectra.fit_spectrum(w.T)["mp_softrank"] == pytest.approx(edge / np.linalg.norm(w, 2) ** 2)


def test_spectra_table_has_one_row_per_matrix_with_the_contract_columns():
    rng = np.random.default_rng(7)
    table = spectra.spectra_table([("embed.weight", -1, rng.standard_normal((40, 16))),
                                   ("layers.0.mlp.weight", 0, rng.standard_normal((16, 64)))])
    assert table.columns == ["layer", "matrix", "role", "alpha", "xmin", "ks_distance", "sigma", "n_evals", "alpha_weighted",
                             "stable_rank", "log_norm", "log_spectral_norm", "mp_softrank", "heavy_tail", "tail_class",
                             "eigenvalues"]
    assert table.select("layer", "matrix", "n_evals").rows() == [(-1, "embed.weight", 16), (0, "layers.0.mlp.weight", 16)]
    assert spectra.spectra_table([]).height == 0
    assert table["role"].to_list() == ["other", "other"]     # no adapter was asked: the rows say so


@pytest.mark.parametrize("family, expected", [
    ("gpt_neox", {"gpt_neox.embed_in.weight": "embedding", "lm_head.weight": "unembedding",
                  "gpt_neox.layers.1.attention.query_key_value.weight": "attention",
                  "gpt_neox.layers.1.attention.dense.weight": "attention",
                  "gpt_neox.layers.1.mlp.dense_h_to_4h.weight": "mlp_in",
                  "gpt_neox.layers.1.mlp.dense_4h_to_h.weight": "mlp_out"}),
    ("gpt2", {"transformer.wte.weight": "embedding", "transformer.wpe.weight": "embedding",   # wte is tied to lm_head
              "transformer.h.0.attn.c_attn.weight": "attention", "transformer.h.0.attn.c_proj.weight": "attention",
              "transformer.h.0.mlp.c_fc.weight": "mlp_in", "transformer.h.0.mlp.c_proj.weight": "mlp_out"}),
    ("llama", {"model.embed_tokens.weight": "embedding", "lm_head.weight": "unembedding",
               "model.layers.0.self_attn.q_proj.weight": "attention", "model.layers.0.self_attn.o_proj.weight": "attention",
               "model.layers.0.mlp.gate_proj.weight": "mlp_in", "model.layers.0.mlp.up_proj.weight": "mlp_in",
               "model.layers.0.mlp.down_proj.weight": "mlp_out"}),
])
def test_every_matrix_gets_its_role_from_the_family_adapter(family, expected):
    from conftest import tiny_model

    from rtn.ingest import adapters
    model = tiny_model(family)
    rows = spectra.weight_spectra(model, adapters.adapter_for(model))
    roles = dict(zip(rows["matrix"], rows["role"]))
    assert {name: roles[name] for name in expected} == expected
    assert set(roles.values()) <= set(adapters.ROLES) - {"other"}     # every 2-D matrix of these families has a role
    layers = dict(zip(rows["matrix"], rows["layer"]))
    assert {layers[name] for name, role in roles.items() if role in ("embedding", "unembedding")} == {-1}


def test_group_hill_matches_dense_correlation_eigendecomposition():
    rows = np.random.default_rng(8).standard_normal((25, 60)) * np.arange(1, 61)
    got = group_spectra.group_hill(rows)
    lam = np.sort(np.linalg.eig(np.corrcoef(rows))[0].real)[::-1]   # z-scored rows: C = corr
    k = 2                                                             # max(1, floor(0.1 * 25))
    expected = 1.0 / np.mean([math.log(lam[i] / lam[k]) for i in range(k)])
    assert (got["k"], got["n_neurons"], got["d"]) == (k, 25, 60)
    assert got["eigenvalues"] == pytest.approx(lam, abs=1e-10)
    assert got["alpha_hill"] == pytest.approx(expected, rel=1e-9)


def test_hill_k_is_a_tenth_of_the_group_and_at_least_one():
    assert [group_spectra.hill_k(m) for m in (1, 9, 10, 19, 70)] == [1, 1, 1, 1, 7]


def test_group_spectra_finds_heavier_tails_in_the_planted_group():
    rng = np.random.default_rng(9)
    n_neurons, d_model, size = 200, 256, 40
    w_in = rng.standard_normal((n_neurons, d_model))
    w_out = rng.standard_normal((n_neurons, d_model))
    plateau = list(range(size))
    # plateau rows share a few directions with Pareto-distributed strengths: a heavy-tailed C spectrum
    strengths = np.sqrt(_pareto(rng, 6, 2.0)) * 2
    shared = rng.standard_normal((6, d_model)) * strengths[:, None]
    w_out[plateau] += rng.standard_normal((size, 6)) @ shared
    groups = {"plateau": plateau, **{f"random_{j}": list(range(size * j, size * (j + 1))) for j in (1, 2, 3)}}
    acts = rng.standard_normal((4, n_neurons))
    con = build_warehouse({0: acts, 10: acts}, {0: groups, 10: groups}, np.ones(4, bool),
                          {0: (w_in, w_in.copy()), 10: (w_in, w_out)})
    table = group_spectra.compute(con, "t")["analysis_group_spectra"]
    assert table.height == 2 * 4 * 2
    late = table.filter((pl.col("step") == 10) & (pl.col("group_name") == "plateau"))
    by_matrix = {row["matrix"]: row for row in late.iter_rows(named=True)}
    assert by_matrix["w_out"]["alpha_hill"] < by_matrix["w_out"]["random_alpha_hill"] / 2
    assert by_matrix["w_in"]["alpha_hill"] == pytest.approx(by_matrix["w_in"]["random_alpha_hill"], rel=0.5)
    assert (by_matrix["w_out"]["k"], by_matrix["w_out"]["n_neurons"], by_matrix["w_out"]["d"]) == (4, size, d_model)
    # the "gap grows over training" query
    gap = (table.filter(pl.col("matrix") == "w_out").filter(pl.col("group_name") == "plateau")
           .select("step", (pl.col("random_alpha_hill") - pl.col("alpha_hill")).alias("gap")).sort("step"))
    assert gap["gap"][1] > gap["gap"][0] + 1


def test_spectra_table_fills_every_weight_spectra_column():
    import duckdb

    from rtn import sql
    from rtn.warehouse import replace_rows
    con = duckdb.connect()
    sql.create_tables(con)
    table_columns = [row[0] for row in con.execute("describe weight_spectra").fetchall()]
    rows = spectra.spectra_table([("layers.0.mlp.weight", 0, np.random.default_rng(11).standard_normal((48, 24)))])
    rows = rows.with_columns(run_id=pl.lit("t"), step=pl.lit(7, pl.Int64))
    assert set(table_columns) <= set(rows.columns)
    replace_rows(con, "weight_spectra", rows.select(table_columns), run_id="t")
    stored = con.execute("select alpha, n_evals, len(eigenvalues) from weight_spectra").fetchone()
    assert stored == (pytest.approx(rows["alpha"][0]), 24, 24)
