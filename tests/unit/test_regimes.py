"""Influence regimes, neuron groups and their dynamics: the views token_classes, neuron_influence,
regime_summary, influence_regimes, regime_dynamics, neuron_groups, and the robust Python fit.

    .venv/bin/pytest tests/unit/test_regimes.py -q
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from regime_oracle import best_pair, continuous_fit, cut_grid, hinge_design, huber_weights
from rtn import sql
from rtn.analyses import regimes

REPO = Path(__file__).resolve().parents[2]
VIEWS = ["token_classes", "neuron_influence", "regime_summary", "influence_regimes", "regime_dynamics",
         "neuron_groups"]


def planted_influence(n: int, plateau_end: int, slope: float, decay_start: int, decay_slope: float = -6.0,
                      noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Returns |ΔLoss| of n neurons whose sorted curve is flat up to rank plateau_end, a power law
    of `slope` on ln-ln axes up to rank decay_start - 1 and `decay_slope` from there (continuous),
    times exp(N(0, noise)) per neuron. plateau_end = 1 means no plateau, decay_start > n no decay."""
    x = np.log(np.arange(1, n + 1))
    x_plateau, x_decay = np.log(plateau_end), np.log(decay_start - 1)
    y = -2.0 + slope * np.clip(x - x_plateau, 0, None)
    y = y + (decay_slope - slope) * np.clip(x - x_decay, 0, None)
    return np.exp(y + np.random.default_rng(seed).normal(0.0, noise, n))


def ablation_rows(influence: np.ndarray, run_id: str = "run", step: int = 0, layer: int = 0,
                  token_class: str = "rare", sign: float = 1.0, neurons=None, seed: int = 0) -> pl.DataFrame:
    """Returns ablation_deltas rows for one curve; neuron ids shuffled unless given."""
    neurons = np.random.default_rng(seed).permutation(len(influence)) if neurons is None else np.asarray(neurons)
    return pl.DataFrame({
        "run_id": run_id, "step": step, "layer": layer, "neuron": neurons.astype(np.int32),
        "token_class": token_class, "delta_loss": sign * np.asarray(influence, dtype=float),
        "std_err": 0.0, "n": 100,
    })


def warehouse(*frames: pl.DataFrame, views=VIEWS) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory warehouse holding `frames` as ablation_deltas, with `views` applied."""
    con = duckdb.connect()
    sql.create_tables(con)
    if frames:
        con.register("_rows", pl.concat(frames).to_arrow())
        con.execute("insert into ablation_deltas by name select * from _rows")
        con.unregister("_rows")
    sql.apply_views(con, names=views)
    return con


def summary(con, **where) -> dict:
    """Returns the one regime_summary row matching `where` as a dict."""
    condition = " and ".join(f"{col} = ?" for col in where)
    rows = con.sql(f"select * from regime_summary where {condition}", params=list(where.values())).pl()
    assert rows.height == 1
    return rows.row(0, named=True)


# A hand-written rare curve, continuous on ln-ln axes with kinks at ranks 4 and 12: ranks 1-4 at
# 1.0 (plateau), 5-12 at 4 / r (power law, slope -1, over 12 / 4 > e ranks), 13-16 at
# (1 / 3)(12 / r)^8 (decay, slope -8).
PLATEAU_CURVE = [1.0] * 4 + [4 / r for r in range(5, 13)] + [(12 / r) ** 8 / 3 for r in range(13, 17)]
POWER_LAW_CURVE = [1.0 / r for r in range(1, 17)]


# ---- token_classes ---------------------------------------------------------------------------

def test_token_classes_rank_types_by_count_and_split_at_each_runs_threshold():
    con = duckdb.connect()
    sql.create_tables(con)
    con.execute("""insert into token_frequencies values
        ('c', 0, 'the', 100), ('c', 1, 'cat', 10), ('c', 2, 'sat', 10), ('c', 3, 'zyx', 1), ('c', 4, 'qq', 3),
        ('d', 0, 'a', 7)""")
    con.execute("""insert into runs (run_id, corpus_id, rare_threshold) values
        ('median', 'c', 0.5), ('strict', 'c', 0.2), ('loose', 'c', 0.75), ('other', 'd', 0.5)""")
    sql.apply_views(con, names=["token_classes"])
    got = con.sql("select * from token_classes order by run_id, token_id").fetchall()
    assert got == [
        ("loose", "c", 0, "the", 100, 1, 1.0, "common"),
        ("loose", "c", 1, "cat", 10, 2, 0.5, "rare"),       # 0.5 < 0.75
        ("loose", "c", 2, "sat", 10, 3, 0.5, "rare"),
        ("loose", "c", 3, "zyx", 1, 5, 0.0, "rare"),
        ("loose", "c", 4, "qq", 3, 4, 0.25, "rare"),
        ("median", "c", 0, "the", 100, 1, 1.0, "common"),
        ("median", "c", 1, "cat", 10, 2, 0.5, "common"),
        ("median", "c", 2, "sat", 10, 3, 0.5, "common"),
        ("median", "c", 3, "zyx", 1, 5, 0.0, "rare"),
        ("median", "c", 4, "qq", 3, 4, 0.25, "rare"),
        ("other", "d", 0, "a", 7, 1, 0.0, "rare"),
        ("strict", "c", 0, "the", 100, 1, 1.0, "common"),
        ("strict", "c", 1, "cat", 10, 2, 0.5, "common"),
        ("strict", "c", 2, "sat", 10, 3, 0.5, "common"),
        ("strict", "c", 3, "zyx", 1, 5, 0.0, "rare"),
        ("strict", "c", 4, "qq", 3, 4, 0.25, "common"),     # 0.25 is not below 0.2
    ]


# ---- neuron_influence ------------------------------------------------------------------------

def test_neuron_influence_signs_ranks_and_drops_zero_effects():
    con = duckdb.connect()
    sql.create_tables(con)
    con.execute("""insert into ablation_deltas values
        ('r', 0, 3, 0, 'rare', 0.5, 0, 1), ('r', 0, 3, 1, 'rare', -0.25, 0, 1), ('r', 0, 3, 2, 'rare', 0.0, 0, 1),
        ('r', 0, 3, 3, 'rare', 2.0, 0, 1), ('r', 0, 3, 4, 'rare', 0.5, 0, 1), ('r', 0, 3, 5, 'rare', -1.0, 0, 1)""")
    sql.apply_views(con, names=["neuron_influence"])
    got = con.sql("select sign, neuron, delta_loss, influence, rank, log_rank, log_influence "
                  "from neuron_influence order by sign, rank").fetchall()
    assert got == [
        ("boost", 3, 2.0, 2.0, 1, 0.0, math.log(2.0)),
        ("boost", 0, 0.5, 0.5, 2, math.log(2), math.log(0.5)),  # tie with neuron 4: lower id first
        ("boost", 4, 0.5, 0.5, 3, math.log(3), math.log(0.5)),
        ("suppress", 5, -1.0, 1.0, 1, 0.0, 0.0),
        ("suppress", 1, -0.25, 0.25, 2, math.log(2), math.log(0.25)),
    ]


# ---- regime_summary --------------------------------------------------------------------------

def test_regime_summary_on_hand_written_curves():
    con = warehouse(ablation_rows(PLATEAU_CURVE, neurons=range(16)),
                    ablation_rows(POWER_LAW_CURVE, token_class="common", neurons=range(16)),
                    views=["neuron_influence", "regime_summary"])
    rare = summary(con, token_class="rare")
    assert {k: rare[k] for k in ["n_neurons", "plateau_end_rank", "decay_start_rank", "plateau_size",
                                 "has_plateau", "three_seg_plateau_end_rank", "three_seg_decay_start_rank",
                                 "two_seg_decay_start_rank"]} == {
        "n_neurons": 16, "plateau_end_rank": 4, "decay_start_rank": 13, "plateau_size": 4,
        "has_plateau": True, "three_seg_plateau_end_rank": 4, "three_seg_decay_start_rank": 13,
        "two_seg_decay_start_rank": 13,
    }
    assert rare["plateau_fraction"] == 0.25
    assert rare["power_law_slope"] == pytest.approx(-1.0)
    assert rare["power_law_r2"] == pytest.approx(1.0)
    assert rare["three_seg_plateau_slope"] == pytest.approx(0.0, abs=1e-12)
    assert rare["three_seg_decay_slope"] == pytest.approx(-8.0)
    # the plateau at ln 1 = 0 against the power law ln 4 - ln r, over r = 1..4: below it
    assert rare["plateau_lift"] == pytest.approx(math.log(24) / 4 - math.log(4))
    assert rare["delta_bic"] > 0
    # the fitted line, segment by segment: ln 1 = 0, ln 4 - ln r, ln(1/3) + 8 ln 12 - 8 ln r
    fitted = [rare[f"fitted_{name}"] for name in ["plateau_intercept", "plateau_slope", "power_law_intercept",
                                                  "decay_intercept", "decay_slope"]]
    assert fitted == pytest.approx([0.0, 0.0, math.log(4), math.log(1 / 3) + 8 * math.log(12), -8.0], abs=1e-9)
    # an exact power law: every split fits exactly, ties go to the smallest breakpoints, and
    # three segments lose by BIC
    common = summary(con, token_class="common")
    assert {k: common[k] for k in ["n_neurons", "plateau_end_rank", "decay_start_rank", "plateau_size",
                                   "plateau_fraction", "has_plateau", "three_seg_plateau_end_rank",
                                   "three_seg_decay_start_rank"]} == {
        "n_neurons": 16, "plateau_end_rank": None, "decay_start_rank": 4, "plateau_size": 0,
        "plateau_fraction": 0.0, "has_plateau": False, "three_seg_plateau_end_rank": 3,
        "three_seg_decay_start_rank": 10,
    }
    assert common["power_law_slope"] == pytest.approx(-1.0)
    assert common["plateau_lift"] == pytest.approx(0.0, abs=1e-12)
    assert common["delta_bic"] < 0
    assert (common["fitted_plateau_intercept"], common["fitted_plateau_slope"]) == (None, None)
    assert common["fitted_power_law_intercept"] == pytest.approx(0.0, abs=1e-9)


def test_regime_summary_is_least_squares_over_every_pair_then_one_huber_step():
    # a smoothly bending curve with noise: several local minima, so a stepwise search would miss
    n = 300
    rank = np.arange(1, n + 1)
    influence = np.exp(-np.log(rank) ** 2 / 8 - 0.02 * rank + np.random.default_rng(11).normal(0, 0.05, n))
    con = warehouse(ablation_rows(influence), views=["neuron_influence", "regime_summary"])
    fit = summary(con, token_class="rare")
    y = np.sort(np.log(influence))[::-1]
    cuts, coarse = cut_grid(n)
    # iteration 1: least squares over every pair of coarse cuts (and every cut for two segments)
    ls_sse, ls_b1, ls_b2 = best_pair(y, coarse, coarse)
    assert (fit["ls_three_seg_plateau_end_rank"], fit["ls_three_seg_decay_start_rank"] - 1) == (ls_b1, ls_b2)
    two = min((continuous_fit(y, [b])[0], b) for b in cuts)
    assert fit["two_seg_decay_start_rank"] - 1 == two[1]
    # the BIC compares both models fitted on the coarse cuts
    bic = lambda sse, k: n * math.log(sse / n) + k * math.log(n)  # noqa: E731
    two_coarse = min(continuous_fit(y, [b])[0] for b in coarse)
    assert fit["delta_bic"] == pytest.approx(bic(two_coarse, 4) - bic(ls_sse, 6), rel=1e-9)
    # iteration 2: Huber weights of iteration 1's residuals, every pair of cuts within 0.5 of ln rank
    residuals = y - hinge_design(n, [ls_b1, ls_b2]) @ continuous_fit(y, [ls_b1, ls_b2])[1]
    k, weights = huber_weights(residuals)
    near = lambda b: [c for c in cuts if abs(math.log(c / b)) <= 0.5]  # noqa: E731
    _, b1, b2 = best_pair(y, near(ls_b1), near(ls_b2), weights)
    assert (fit["three_seg_plateau_end_rank"], fit["three_seg_decay_start_rank"] - 1) == (b1, b2)
    assert (b1, b2) != (ls_b1, ls_b2)          # the step moved them: this curve tests it
    assert fit["huber_scale"] == pytest.approx(k, rel=1e-9)
    # the reported line is the weighted one: its slopes, the power law's R² over its ranks, the lift
    x = np.log(rank)
    alpha, beta, gamma1, gamma2 = continuous_fit(y, [b1, b2], weights)[1]
    assert [fit["three_seg_plateau_slope"], fit["three_seg_power_law_slope"], fit["three_seg_decay_slope"]] == (
        pytest.approx([beta, beta + gamma1, beta + gamma1 + gamma2], rel=1e-9))
    power_law = alpha - gamma1 * math.log(b1) + (beta + gamma1) * x        # the middle line, every rank
    middle = slice(b1, b2)
    r2 = 1 - ((y[middle] - power_law[middle]) ** 2).sum() / ((y[middle] - y[middle].mean()) ** 2).sum()
    assert fit["plateau_lift"] == pytest.approx((y[:b1] - power_law[:b1]).mean(), rel=1e-9)
    assert fit["has_plateau"] and fit["power_law_r2"] == pytest.approx(r2, rel=1e-9)


def test_a_few_plunging_smallest_effects_move_least_squares_but_not_the_huber_step():
    # planted breaks at 20 and 220, a gentle decay, and the 3 smallest |ΔLoss| 3 nats lower
    influence = planted_influence(300, 20, -1.0, 220, decay_slope=-2.0, noise=0.02, seed=1)
    influence[np.argsort(influence)[:3]] *= math.exp(-3.0)
    con = warehouse(ablation_rows(influence), views=["neuron_influence", "regime_summary"])
    fit = summary(con, token_class="rare")
    assert fit["ls_three_seg_decay_start_rank"] > 1.10 * 220           # least squares chases them
    assert fit["has_plateau"]
    assert abs(fit["decay_start_rank"] - 220) <= 0.05 * 220
    assert abs(fit["plateau_end_rank"] - 20) <= 0.05 * 20


def test_regime_summary_leaves_out_curves_too_short_to_fit():
    con = warehouse(ablation_rows([1.0, 0.5, 0.25, 0.1, 0.05]), views=["neuron_influence", "regime_summary"])
    assert con.sql("select count(*) from regime_summary").fetchall()[0] == (0,)


@pytest.mark.parametrize("n, plateau_end, slope, decay_start, noise", [
    (4096, 70, -1.0, 3000, 0.0),
    (4096, 70, -1.0, 3000, 0.02),
    (2048, 40, -0.7, 1500, 0.0),
    (2048, 40, -0.7, 1500, 0.02),
    (1024, 20, -1.5, 900, 0.02),
])
def test_planted_plateau_recovers_both_breakpoints_and_the_slope(n, plateau_end, slope, decay_start, noise):
    con = warehouse(ablation_rows(planted_influence(n, plateau_end, slope, decay_start, noise=noise, seed=n)),
                    views=["neuron_influence", "regime_summary"])
    fit = summary(con, token_class="rare")
    assert fit["has_plateau"]
    assert abs(fit["plateau_end_rank"] - plateau_end) <= 0.05 * plateau_end
    assert abs(fit["decay_start_rank"] - decay_start) <= 0.05 * decay_start
    assert fit["power_law_slope"] == pytest.approx(slope, abs=0.05)
    assert fit["plateau_size"] == fit["plateau_end_rank"]
    assert fit["plateau_fraction"] == pytest.approx(fit["plateau_end_rank"] / n)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_pure_power_law_has_no_plateau(noise):
    con = warehouse(ablation_rows(planted_influence(4096, 1, -0.8, 10**9, noise=noise, seed=3)),
                    views=["neuron_influence", "regime_summary"])
    fit = summary(con, token_class="rare")
    assert fit["has_plateau"] is False
    assert (fit["plateau_size"], fit["plateau_fraction"], fit["plateau_end_rank"]) == (0, 0.0, None)
    assert fit["power_law_slope"] == pytest.approx(-0.8, abs=0.05)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_power_law_with_decay_has_no_plateau(noise):
    con = warehouse(ablation_rows(planted_influence(4096, 1, -1.0, 3000, noise=noise, seed=4)),
                    views=["neuron_influence", "regime_summary"])
    fit = summary(con, token_class="rare")
    assert fit["has_plateau"] is False
    assert fit["plateau_size"] == 0
    assert abs(fit["decay_start_rank"] - 3000) <= 0.05 * 3000
    assert fit["power_law_slope"] == pytest.approx(-1.0, abs=0.05)


def test_regime_summary_filter_on_run_only_fits_that_run():
    con = warehouse(ablation_rows(PLATEAU_CURVE, run_id="a", neurons=range(16)),
                    ablation_rows(POWER_LAW_CURVE, run_id="b", neurons=range(16)),
                    views=["neuron_influence", "regime_summary"])
    assert con.sql("select run_id, plateau_size from regime_summary where run_id = 'a'").fetchall() == [("a", 4)]


# ---- influence_regimes -----------------------------------------------------------------------

def test_influence_regimes_labels_every_neuron_with_its_regime():
    con = warehouse(ablation_rows(PLATEAU_CURVE, neurons=range(100, 116)),
                    ablation_rows(POWER_LAW_CURVE, token_class="common", neurons=range(16)),
                    views=["neuron_influence", "regime_summary", "influence_regimes"])
    got = con.sql("select token_class, neuron, rank, regime from influence_regimes "
                  "where token_class = 'rare' order by rank").fetchall()
    assert got == [("rare", 100 + i, i + 1, "plateau" if i < 4 else "power_law" if i < 12 else "decay")
                   for i in range(16)]
    common = con.sql("select list(regime order by rank) from influence_regimes where token_class = 'common'")
    assert common.fetchall()[0][0] == ["power_law"] * 3 + ["decay"] * 13


# ---- regime_dynamics -------------------------------------------------------------------------

def test_regime_dynamics_sets_rare_beside_common_and_each_step_beside_step0():
    con = warehouse(
        ablation_rows(POWER_LAW_CURVE, step=0, neurons=range(16)),
        ablation_rows(POWER_LAW_CURVE, step=0, token_class="common", neurons=range(16)),
        ablation_rows(PLATEAU_CURVE, step=10, neurons=range(16)),
        ablation_rows(POWER_LAW_CURVE, step=10, token_class="common", neurons=range(16)),
        views=["neuron_influence", "regime_summary", "regime_dynamics"],
    )
    con.execute("insert into runs (run_id, model, family) values ('run', 'tiny-neox', 'gpt_neox')")
    con.execute("insert into checkpoints (run_id, step, tokens_seen) values ('run', 0, 0), ('run', 10, 5120)")
    got = con.sql("""select run_id, model, family, layer, sign, step, tokens_seen, training_progress, baseline_step,
                            has_plateau_rare, has_plateau_common, plateau_size_rare, plateau_size_common,
                            plateau_fraction_rare, plateau_fraction_common, plateau_fraction_gap,
                            plateau_fraction_rare_step0, plateau_fraction_rare_vs_step0
                     from regime_dynamics order by step""").fetchall()
    assert got == [
        ("run", "tiny-neox", "gpt_neox", 0, "boost", 0, 0, 0.0, 0, False, False, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("run", "tiny-neox", "gpt_neox", 0, "boost", 10, 5120, 1.0, 0, True, False, 4, 0, 0.25, 0.0, 0.25, 0.0,
         0.25),
    ]
    lifts = con.sql("select plateau_lift_rare, plateau_lift_rare_step0, plateau_lift_rare_vs_step0, "
                    "plateau_lift_gap, plateau_lift_gap_step0, plateau_lift_gap_vs_step0 "
                    "from regime_dynamics where step = 10").fetchall()[0]
    # step 0's exact power law lies on its own extrapolation: lift 0, for rare and common alike
    lift = math.log(24) / 4 - math.log(4)
    assert lifts == pytest.approx((lift, 0.0, lift, lift, 0.0, lift), abs=1e-12)


# ---- neuron_groups ---------------------------------------------------------------------------

def hand_written_layer() -> list[pl.DataFrame]:
    """Layer of 16 neurons: the rare boost curve has its 4-neuron plateau on neurons 15..12;
    on all targets neurons 0..9 boost (0 most) and 10..15 suppress (15 most)."""
    return [
        ablation_rows(PLATEAU_CURVE, neurons=range(15, -1, -1)),
        ablation_rows([1.0 / (i + 1) for i in range(10)], token_class="all", neurons=range(10)),
        ablation_rows([1.0 / (16 - i) for i in range(10, 16)], token_class="all", sign=-1.0,
                      neurons=range(10, 16)),
    ]


def test_neuron_groups_on_a_hand_written_layer():
    con = warehouse(*hand_written_layer())
    groups = {name: neurons for name, neurons in con.sql(
        "select group_name, list(neuron order by neuron) from neuron_groups group by all").fetchall()}
    assert groups.keys() == {"plateau", "top_boost_k", "top_suppress_k"} | {f"random_{j}" for j in range(1, 6)}
    assert groups["plateau"] == [12, 13, 14, 15]
    assert groups["top_boost_k"] == [0, 1, 2, 3]
    assert groups["top_suppress_k"] == [12, 13, 14, 15]
    for j in range(1, 6):
        control = groups[f"random_{j}"]
        assert len(control) == 4 and len(set(control)) == 4
        assert set(control) <= set(range(12))          # drawn from outside the plateau
    assert len({tuple(groups[f"random_{j}"]) for j in range(1, 6)}) > 1
    assert con.sql("select distinct run_id, step, layer from neuron_groups").fetchall() == [("run", 0, 0)]


def test_neuron_groups_without_plateau_use_k_10_and_no_plateau_group():
    con = warehouse(ablation_rows(planted_influence(200, 1, -1.0, 150, seed=1)),
                    ablation_rows(planted_influence(200, 1, -1.0, 150, seed=2), token_class="all"))
    sizes = dict(con.sql("select group_name, count(*) from neuron_groups group by all").fetchall())
    assert sizes == {"top_boost_k": 10, **{f"random_{j}": 10 for j in range(1, 6)}}


GROUPS_QUERY = "select * from neuron_groups order by all"


def test_neuron_groups_are_the_same_in_another_process(tmp_path):
    frames = [ablation_rows(planted_influence(300, 8, -1.0, 250, seed=s), step=s) for s in range(3)]
    con = warehouse(*frames)
    here = con.sql(GROUPS_QUERY).fetchall()
    assert here == warehouse(*frames).sql(GROUPS_QUERY).fetchall()
    parquet = tmp_path / "ablation_deltas.parquet"
    pl.concat(frames).write_parquet(parquet)
    script = (
        "import duckdb, polars as pl\nfrom rtn import sql\n"
        "con = duckdb.connect(); sql.create_tables(con)\n"
        f"con.execute(\"insert into ablation_deltas by name select * from read_parquet('{parquet}')\")\n"
        "sql.apply_views(con)\n"
        f"print(repr(con.sql({GROUPS_QUERY!r}).fetchall()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr(here)


# ---- analyses/regimes.py ---------------------------------------------------------------------

def test_python_robust_fit_agrees_with_sql_on_planted_curves():
    con = warehouse(
        ablation_rows(planted_influence(4096, 70, -1.0, 3000, noise=0.02, seed=5)),
        ablation_rows(planted_influence(2048, 40, -0.7, 1500, noise=0.0), step=1),
        views=["neuron_influence", "regime_summary"],
    )
    fits = regimes.compute(con, "run")["analysis_regime_fits"].sort("step")
    assert fits.height == 2
    for fit in fits.iter_rows(named=True):
        assert fit["agrees_with_sql"] and fit["sql_has_plateau"]
        assert abs(fit["plateau_end_rank"] - fit["sql_plateau_end_rank"]) <= 0.10 * fit["sql_plateau_end_rank"]
        assert abs(fit["decay_start_rank"] - fit["sql_decay_start_rank"]) <= 0.10 * fit["sql_decay_start_rank"]
    assert fits["power_law_slope"].to_list() == pytest.approx([-1.0, -0.7], abs=0.05)


def test_analysis_regime_fits_fill_their_table():
    con = warehouse(ablation_rows(planted_influence(400, 10, -1.0, 300), run_id="a"),
                    ablation_rows(planted_influence(400, 1, -1.0, 300), run_id="a", token_class="common"),
                    ablation_rows(planted_influence(400, 10, -1.0, 300), run_id="b"),
                    views=["neuron_influence", "regime_summary"])
    fits = regimes.compute(con, "a")["analysis_regime_fits"]
    con.register("_fits", fits.to_arrow())
    con.execute("insert into analysis_regime_fits by name select * from _fits")
    got = con.sql("select run_id, token_class, sign, n_neurons, sql_has_plateau, agrees_with_sql, "
                  "plateau_end_rank, sql_plateau_end_rank from analysis_regime_fits order by token_class").fetchall()
    assert [row[:5] for row in got] == [("a", "common", "boost", 400, False), ("a", "rare", "boost", 400, True)]
    rare = got[1]
    assert rare[5] is True and abs(rare[6] - 10) <= 1 and abs(rare[7] - 10) <= 1


def test_python_fit_refines_the_sql_breakpoints_and_keeps_the_grid_fit():
    influence = planted_influence(2048, 40, -0.7, 1500, noise=0.02, seed=6)
    log_influence = np.log(np.sort(influence)[::-1])
    fit = regimes.fit_curve(log_influence, 40, 1500)
    assert fit["refined_from_sql"]
    assert abs(fit["plateau_end_rank"] - 40) <= 0.05 * 40
    assert abs(fit["decay_start_rank"] - 1500) <= 0.05 * 1500
    assert fit["power_law_slope"] == pytest.approx(-0.7, abs=0.05)
    # the grid fit never saw the SQL, and finds the same planted breaks on its own
    assert abs(fit["grid_plateau_end_rank"] - 40) <= 0.05 * 40
    assert abs(fit["grid_decay_start_rank"] - 1500) <= 0.05 * 1500
    without = regimes.fit_curve(log_influence)
    assert not without["refined_from_sql"]
    assert (without["plateau_end_rank"], without["decay_start_rank"]) == (
        fit["grid_plateau_end_rank"], fit["grid_decay_start_rank"])


def test_python_refinement_pulls_wrong_sql_breakpoints_away_so_they_disagree():
    influence = planted_influence(2048, 40, -0.7, 1500, noise=0.02, seed=6)
    log_influence = np.log(np.sort(influence)[::-1])
    # SQL breakpoints 1.4x and 0.7x off (ln 0.34 and -0.36, inside the refinement's window)
    fit = regimes.fit_curve(log_influence, 56, 1050)
    assert abs(fit["plateau_end_rank"] - 56) > 0.10 * 56
    assert abs(fit["decay_start_rank"] - 1050) > 0.10 * 1050
    assert abs(fit["plateau_end_rank"] - 40) <= 0.05 * 40       # back at the planted breaks
    assert abs(fit["decay_start_rank"] - 1500) <= 0.05 * 1500


def test_analysis_regime_fits_flag_wrong_sql_breakpoints():
    con = warehouse(ablation_rows(planted_influence(2048, 40, -0.7, 1500, noise=0.02, seed=6)),
                    views=["neuron_influence", "regime_summary"])
    # stand-in for a wrong SQL fit: the same curve, the SQL's breakpoints moved by 1.4x and 0.7x
    con.execute("create table regime_summary_wrong as select * replace ("
                "(three_seg_plateau_end_rank * 1.4)::bigint as three_seg_plateau_end_rank, "
                "(three_seg_decay_start_rank * 0.7)::bigint as three_seg_decay_start_rank) from regime_summary")
    con.execute("create or replace view regime_summary as select * from regime_summary_wrong")
    (fit,) = regimes.compute(con, "run")["analysis_regime_fits"].iter_rows(named=True)
    assert fit["sql_has_plateau"] and fit["refined_from_sql"]
    assert not fit["agrees_with_sql"]
    assert abs(fit["plateau_end_rank"] - 40) <= 0.05 * 40 and abs(fit["decay_start_rank"] - 1500) <= 0.05 * 1500
