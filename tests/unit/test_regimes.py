"""Influence regimes, neuron groups and their dynamics: the views token_classes, neuron_influence,
regime_curves, regime_cuts, regime_fits, regime_readings, regime_summary, influence_regimes,
regime_dynamics, neuron_groups, and the robust Python cross-check.

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
import regime_oracle as oracle
from planted_curves import noisy, null_curves, planted_log_curve

from rtn import sql
from rtn.analyses import regimes

REPO = Path(__file__).resolve().parents[2]
VIEWS = ["token_classes", "neuron_influence", "regime_curves", "regime_cuts", "regime_fits", "regime_readings",
         "regime_summary", "influence_regimes", "regime_dynamics", "neuron_groups"]


def ablation_rows(influence: np.ndarray, run_id: str = "run", step: int = 0, layer: int = 0,
                  token_class: str = "rare", sign: float = 1.0, neurons=None, seed: int = 0,
                  std_err=0.0) -> pl.DataFrame:
    """Returns ablation_deltas rows for one curve; neuron ids shuffled unless given."""
    neurons = np.random.default_rng(seed).permutation(len(influence)) if neurons is None else np.asarray(neurons)
    return pl.DataFrame({
        "run_id": run_id, "step": step, "layer": layer, "neuron": neurons.astype(np.int32),
        "token_class": token_class, "delta_loss": sign * np.asarray(influence, dtype=float),
        "std_err": std_err, "n": 100,
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


# ---- hand-written curves -----------------------------------------------------------------------

# 80 neurons (a head of at most 80 / 20 = 4): ranks 1-4 at 2 / r (a shelf lifted ln 2 above the
# power law, with a cliff after rank 4), 5-60 at 1 / r (power law, slope -1), 61-80 at
# (60 / r)^8 / 60 (decay, slope -8, continuous with the power law at rank 60)
HEAD_CURVE = [2 / r for r in range(1, 5)] + [1 / r for r in range(5, 61)] + [(60 / r) ** 8 / 60 for r in range(61, 81)]
POWER_LAW_CURVE = [1.0 / r for r in range(1, 81)]


def sorted_log(influence) -> np.ndarray:
    return np.sort(np.log(np.asarray(influence, dtype=float)))[::-1]


# ---- regime_cuts -------------------------------------------------------------------------------

def test_regime_cuts_are_log_spaced_ranks_with_their_running_sums():
    influence = noisy(planted_log_curve(300, "lifted", head=12, decay_start=220), 0.2, seed=3)
    con = warehouse(ablation_rows(influence), views=["regime_cuts"])
    got = con.sql("select * from regime_cuts order by cut").pl()
    y = sorted_log(influence)
    x = np.log(np.arange(1, 301))
    assert got["cut"].to_list() == oracle.cut_grid(300)
    assert got["cut"].to_list()[:3] == [3, 4, 5] and got["cut"].to_list()[-1] >= 280   # reaches the last ranks
    for row in got.iter_rows(named=True):
        c = row["cut"]
        h = np.maximum(0.0, x[c:] - math.log(c))
        assert [row[k] for k in ["sum_x", "sum_y", "sum_xx", "sum_xy", "sum_yy", "total_y"]] == pytest.approx(
            [x[:c].sum(), y[:c].sum(), (x[:c] ** 2).sum(), (x[:c] * y[:c]).sum(), (y[:c] ** 2).sum(), y.sum()])
        assert [row["hinge_h"], row["hinge_xh"], row["hinge_hh"], row["hinge_yh"]] == pytest.approx(
            [h.sum(), (x[c:] * h).sum(), (h * h).sum(), (y[c:] * h).sum()], abs=1e-9)


# ---- regime_fits, regime_readings, regime_summary against the slow path ------------------------

@pytest.mark.parametrize("shape, seed", [("lifted", 1), ("steep", 2), ("none", 3), ("flat", 4)])
def test_regime_views_match_the_numpy_slow_path(shape, seed):
    n = 600
    influence = noisy(planted_log_curve(n, shape, head=20, decay_start=450), 0.15, seed=seed)
    con = warehouse(ablation_rows(influence), views=["regime_summary"])
    y = sorted_log(influence)
    fits = con.sql("select null_fit, head_fit from regime_fits").fetchall()[0]
    null, head = oracle.null_fit(y), oracle.head_fit(y)
    assert fits[0]["decay_end"] == null["decay_end"]
    assert fits[0]["sse"] == pytest.approx(null["sse"], rel=1e-7)
    assert (fits[1]["head_size"], fits[1]["decay_end"]) == (head["head_size"], head["decay_end"])
    assert fits[1]["sse"] == pytest.approx(head["sse"], rel=1e-7)
    fit = summary(con, token_class="rare")
    assert [fit["head_intercept"], fit["head_slope"], fit["head_power_law_intercept"], fit["head_power_law_slope"],
            fit["head_decay_slope"], fit["plateau_lift"], fit["lift_threshold"]] == pytest.approx(
        [head["head_intercept"], head["head_slope"], head["power_law_intercept"], head["power_law_slope"],
         head["decay_slope"], head["plateau_lift"], head["lift_threshold"]], rel=1e-6, abs=1e-9)
    delta_bic = oracle.bic(null["sse"], n, 4) - oracle.bic(head["sse"], n, 7)
    assert fit["delta_bic"] == pytest.approx(delta_bic, rel=1e-6)
    plateau = delta_bic > 10 and head["plateau_lift"] > head["lift_threshold"]
    assert fit["has_plateau"] == plateau and fit["plateau_verdict"] == ("plateau" if plateau else "no_plateau")
    assert fit["plateau_size"] == (head["head_size"] if plateau else 0)
    assert fit["power_law_slope"] == pytest.approx(head["power_law_slope"] if plateau else null["slope"], rel=1e-6)
    paper = oracle.paper_reading(y)
    assert fit["paper_plateau_size"] == paper["paper_plateau_size"]
    assert fit["paper_power_law_slope"] == pytest.approx(paper["paper_power_law_slope"], rel=1e-9)
    if paper["paper_plateau_lift"] is None:
        assert fit["paper_plateau_lift"] is None
    else:
        assert fit["paper_plateau_lift"] == pytest.approx(paper["paper_plateau_lift"], rel=1e-9)
    # the shapes this test plants: a lifted or steeper head is a plateau, the others are not
    assert plateau == (shape in ("lifted", "steep"))


def test_regime_summary_on_hand_written_curves():
    con = warehouse(ablation_rows(HEAD_CURVE, neurons=range(80)),
                    ablation_rows(POWER_LAW_CURVE, token_class="common", neurons=range(80)),
                    views=["regime_summary"])
    rare = summary(con, token_class="rare")
    assert {k: rare[k] for k in ["n_neurons", "plateau_verdict", "has_plateau", "flattened_head", "plateau_end_rank",
                                 "decay_start_rank", "plateau_size", "head_size", "head_decay_start_rank",
                                 "null_decay_start_rank"]} == {
        "n_neurons": 80, "plateau_verdict": "plateau", "has_plateau": True, "flattened_head": False,
        "plateau_end_rank": 4, "decay_start_rank": 61, "plateau_size": 4, "head_size": 4,
        "head_decay_start_rank": 61, "null_decay_start_rank": oracle.null_fit(sorted_log(HEAD_CURVE))["decay_end"] + 1,
    }
    assert rare["plateau_fraction"] == 4 / 80
    assert rare["plateau_lift"] == pytest.approx(math.log(2))          # the shelf: 2 / r over 1 / r
    assert rare["lift_threshold"] == pytest.approx(math.log(1.25))     # an exact power law: the floor
    assert rare["power_law_r2"] == pytest.approx(1.0)
    fitted = [rare[f"fitted_{name}"] for name in ["plateau_intercept", "plateau_slope", "power_law_intercept",
                                                  "decay_intercept", "decay_slope"]]
    assert fitted == pytest.approx([math.log(2), -1.0, 0.0, 7 * math.log(60), -8.0], abs=1e-7)
    assert rare["power_law_slope"] == pytest.approx(-1.0)
    assert rare["delta_bic"] > 10
    paper = oracle.paper_reading(sorted_log(HEAD_CURVE))
    assert (rare["paper_plateau_size"], rare["paper_power_law_slope"]) == (
        paper["paper_plateau_size"], pytest.approx(paper["paper_power_law_slope"]))
    # an exact power law: every split fits exactly, ties go to the smallest breakpoints, the head
    # lies on the line (lift 0) and the head model loses by BIC
    common = summary(con, token_class="common")
    assert {k: common[k] for k in ["plateau_verdict", "has_plateau", "flattened_head", "plateau_end_rank",
                                   "decay_start_rank", "plateau_size", "plateau_fraction", "head_size",
                                   "head_decay_start_rank"]} == {
        "plateau_verdict": "no_plateau", "has_plateau": False, "flattened_head": False, "plateau_end_rank": None,
        "decay_start_rank": 4, "plateau_size": 0, "plateau_fraction": 0.0, "head_size": 3,
        "head_decay_start_rank": 10,
    }
    assert common["plateau_lift"] == pytest.approx(0.0, abs=1e-9)
    assert common["delta_bic"] == pytest.approx(-3 * math.log(80))
    assert common["power_law_slope"] == pytest.approx(-1.0)
    assert (common["fitted_plateau_intercept"], common["fitted_plateau_slope"]) == (None, None)


def test_regime_summary_leaves_out_curves_too_short_to_fit_and_gives_small_ones_no_head():
    con = warehouse(ablation_rows([1.0, 0.5, 0.25, 0.1, 0.05]),
                    ablation_rows(HEAD_CURVE[:59], token_class="common", neurons=range(59)),
                    views=["regime_summary"])
    got = con.sql("select token_class, n_neurons, head_size, plateau_verdict from regime_summary").fetchall()
    assert got == [("common", 59, None, "no_plateau")]   # 59 / 20 < 3: no head


def test_mostly_noise_is_insufficient_evidence():
    influence = noisy(planted_log_curve(4096, "lifted", head=70), 0.1, seed=5)
    std_err = np.where(np.arange(4096) % 3 == 0, 0.0, influence)    # 2/3 of neurons within 2 SE of zero
    con = warehouse(ablation_rows(influence, std_err=std_err), views=["regime_summary"])
    fit = summary(con, token_class="rare")
    assert fit["share_within_noise"] == pytest.approx(np.mean(influence <= 2 * std_err))
    assert (fit["plateau_verdict"], fit["has_plateau"], fit["plateau_size"]) == ("insufficient_evidence", False, 0)
    assert fit["plateau_lift"] > 0.5                                 # the shape is there; the evidence is not


def test_regime_summary_filter_on_run_only_fits_that_run():
    con = warehouse(ablation_rows(HEAD_CURVE, run_id="a", neurons=range(80)),
                    ablation_rows(POWER_LAW_CURVE, run_id="b", neurons=range(80)), views=["regime_summary"])
    assert con.sql("select run_id, plateau_size from regime_summary where run_id = 'a'").fetchall() == [("a", 4)]


# ---- acceptance 1: planted heads, nulls, scale -------------------------------------------------

PLANTED = [(shape, head) for shape in ("steep", "lifted") for head in (40, 70, 100)]


def planted_warehouse(scale: float = 1.0) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """Returns a warehouse of the planted heads, the flatter heads and the null curves (one step
    each), and the curve names by step."""
    curves = {f"{shape}/{head}": noisy(planted_log_curve(4096, shape, head=head), 0.2, seed=head)
              for shape, head in PLANTED}
    curves |= {f"flat/{head}": noisy(planted_log_curve(4096, "flat", head=head), 0.2, seed=head) for head in (70, 200)}
    curves |= null_curves(4096, seeds=8)
    names = list(curves)
    return warehouse(*[ablation_rows(scale * curves[name], step=i) for i, name in enumerate(names)],
                     views=["regime_summary"]), names


@pytest.fixture(scope="module")
def planted():
    con, names = planted_warehouse()
    rows = con.sql("select * from regime_summary order by step").pl()
    return {names[row["step"]]: row for row in rows.iter_rows(named=True)}


@pytest.mark.parametrize("shape, head", PLANTED)
def test_planted_heads_are_found(planted, shape, head):
    fit = planted[f"{shape}/{head}"]
    assert fit["plateau_verdict"] == "plateau" and fit["has_plateau"]
    assert abs(fit["plateau_size"] - head) <= 0.15 * head
    assert fit["plateau_lift"] > 0
    assert fit["power_law_slope"] == pytest.approx(-1.0, abs=0.1)


@pytest.mark.parametrize("head", [70, 200])
def test_a_flatter_continuous_head_is_no_plateau_but_a_flattened_head(planted, head):
    fit = planted[f"flat/{head}"]
    assert (fit["has_plateau"], fit["plateau_size"], fit["flattened_head"]) == (False, 0, True)
    assert fit["plateau_lift"] < 0


def test_null_curves_are_rarely_plateaus(planted):
    nulls = {name: fit for name, fit in planted.items() if "/" in name and name.split("/")[0] in (
        "power_law", "power_law_decay", "abs_normal", "log_normal")}
    assert len(nulls) >= 30
    called = [name for name, fit in nulls.items() if fit["has_plateau"]]
    assert len(called) <= 0.05 * len(nulls), called


def test_scaling_every_delta_changes_no_verdict(planted):
    con, names = planted_warehouse(scale=1e-3)
    scaled = con.sql("select step, plateau_verdict, plateau_size, flattened_head from regime_summary order by step")
    assert scaled.fetchall() == [(i, planted[name]["plateau_verdict"], planted[name]["plateau_size"],
                                  planted[name]["flattened_head"]) for i, name in enumerate(names)]


# ---- influence_regimes -----------------------------------------------------------------------

def test_influence_regimes_labels_every_neuron_with_its_regime():
    con = warehouse(ablation_rows(HEAD_CURVE, neurons=range(100, 180)),
                    ablation_rows(POWER_LAW_CURVE, token_class="common", neurons=range(80)),
                    views=["influence_regimes"])
    got = con.sql("select token_class, neuron, rank, regime from influence_regimes "
                  "where token_class = 'rare' order by rank").fetchall()
    assert got == [("rare", 100 + i, i + 1, "plateau" if i < 4 else "power_law" if i < 60 else "decay")
                   for i in range(80)]
    common = con.sql("select list(regime order by rank) from influence_regimes where token_class = 'common'")
    assert common.fetchall()[0][0] == ["power_law"] * 3 + ["decay"] * 77


def test_app_influence_curves_draws_the_head_line_and_the_extrapolated_power_law():
    con = warehouse(ablation_rows(HEAD_CURVE, neurons=range(80)), views=["app_influence_curves"])
    got = con.sql("select rank, regime, fitted_influence, head_line, power_law_line, plateau_verdict "
                  "from app_influence_curves order by rank").fetchall()
    assert [row[1] for row in got] == ["plateau"] * 4 + ["power_law"] * 56 + ["decay"] * 20
    assert [row[2] for row in got] == pytest.approx(HEAD_CURVE, rel=1e-7)
    assert [row[3] for row in got[:4]] == pytest.approx([2 / r for r in range(1, 5)], rel=1e-7)
    assert {row[3] for row in got[4:]} == {None}
    assert [row[4] for row in got[:60]] == pytest.approx([1 / r for r in range(1, 61)], rel=1e-7)
    assert {row[4] for row in got[60:]} == {None} and {row[5] for row in got} == {"plateau"}


# ---- regime_dynamics -------------------------------------------------------------------------

def test_regime_dynamics_sets_rare_beside_common_and_each_step_beside_step0():
    con = warehouse(
        ablation_rows(POWER_LAW_CURVE, step=0, neurons=range(80)),
        ablation_rows(POWER_LAW_CURVE, step=0, token_class="common", neurons=range(80)),
        ablation_rows(HEAD_CURVE, step=10, neurons=range(80)),
        ablation_rows(POWER_LAW_CURVE, step=10, token_class="common", neurons=range(80)),
        views=["regime_dynamics"],
    )
    con.execute("insert into runs (run_id, model, family) values ('run', 'tiny-neox', 'gpt_neox')")
    con.execute("insert into checkpoints (run_id, step, tokens_seen) values ('run', 0, 0), ('run', 10, 5120)")
    got = con.sql("""select run_id, model, family, layer, sign, step, tokens_seen, training_progress, baseline_step,
                            plateau_verdict_rare, plateau_verdict_common, plateau_verdict_rare_step0,
                            plateau_verdict_common_step0, has_plateau_rare, has_plateau_common, plateau_size_rare,
                            plateau_size_common, plateau_fraction_rare, plateau_fraction_common, plateau_fraction_gap,
                            plateau_fraction_rare_step0, plateau_fraction_rare_vs_step0
                     from regime_dynamics order by step""").fetchall()
    assert got == [
        ("run", "tiny-neox", "gpt_neox", 0, "boost", 0, 0, 0.0, 0, "no_plateau", "no_plateau", "no_plateau",
         "no_plateau", False, False, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("run", "tiny-neox", "gpt_neox", 0, "boost", 10, 5120, 1.0, 0, "plateau", "no_plateau", "no_plateau",
         "no_plateau", True, False, 4, 0, 0.05, 0.0, 0.05, 0.0, 0.05),
    ]
    lifts = con.sql("select plateau_lift_rare, plateau_lift_rare_step0, plateau_lift_rare_vs_step0, "
                    "plateau_lift_gap, plateau_lift_gap_step0, plateau_lift_gap_vs_step0 "
                    "from regime_dynamics where step = 10").fetchall()[0]
    # step 0's exact power law lies on its own extrapolation: lift 0, for rare and common alike
    lift = math.log(2)
    assert lifts == pytest.approx((lift, 0.0, lift, lift, 0.0, lift), abs=1e-9)


# ---- neuron_groups ---------------------------------------------------------------------------

def hand_written_layer() -> list[pl.DataFrame]:
    """Layer of 80 neurons: the rare boost curve has its 4-neuron plateau on neurons 79..76;
    on all targets neurons 0..9 boost (0 most) and 10..15 suppress (15 most)."""
    return [
        ablation_rows(HEAD_CURVE, neurons=range(79, -1, -1)),
        ablation_rows([1.0 / (i + 1) for i in range(10)], token_class="all", neurons=range(10)),
        ablation_rows([1.0 / (16 - i) for i in range(10, 16)], token_class="all", sign=-1.0,
                      neurons=range(10, 16)),
    ]


def test_neuron_groups_on_a_hand_written_layer():
    con = warehouse(*hand_written_layer())
    groups = {name: neurons for name, neurons in con.sql(
        "select group_name, list(neuron order by neuron) from neuron_groups group by all").fetchall()}
    assert groups.keys() == {"plateau", "top_boost_k", "top_suppress_k"} | {f"random_{j}" for j in range(1, 6)}
    assert groups["plateau"] == [76, 77, 78, 79]
    assert groups["top_boost_k"] == [0, 1, 2, 3]
    assert groups["top_suppress_k"] == [12, 13, 14, 15]
    for j in range(1, 6):
        control = groups[f"random_{j}"]
        assert len(control) == 4 and len(set(control)) == 4
        assert set(control) <= set(range(76))          # drawn from outside the plateau
    assert len({tuple(groups[f"random_{j}"]) for j in range(1, 6)}) > 1
    assert con.sql("select distinct run_id, step, layer from neuron_groups").fetchall() == [("run", 0, 0)]


def test_neuron_groups_without_plateau_have_no_plateau_group_and_use_k_10():
    con = warehouse(ablation_rows(np.exp(planted_log_curve(200, decay_start=150)), seed=1),
                    ablation_rows(np.exp(planted_log_curve(200, decay_start=150)), token_class="all", seed=2))
    sizes = dict(con.sql("select group_name, count(*) from neuron_groups group by all").fetchall())
    assert sizes == {"top_boost_k": 10, **{f"random_{j}": 10 for j in range(1, 6)}}


GROUPS_QUERY = "select * from neuron_groups order by all"


def test_neuron_groups_are_the_same_in_another_process(tmp_path):
    frames = [ablation_rows(noisy(planted_log_curve(300, "lifted", head=12, decay_start=250), 0.1, seed=s), step=s)
              for s in range(3)]
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

def test_huber_lstsq_is_the_huber_minimum_and_resists_outliers():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 200)
    y = 1.0 - 2.0 * x + rng.normal(0, 0.1, x.size)
    y[::20] += 5.0                                      # 10 gross outliers
    design = np.column_stack([np.ones_like(x), x])
    coef, loss = regimes.huber_lstsq(design, y, k=0.15)
    assert coef == pytest.approx([1.0, -2.0], abs=0.05)
    assert np.linalg.lstsq(design, y, rcond=None)[0][0] > 1.3  # least squares is pulled up

    def huber(c):
        r = np.abs(y - design @ c)
        return np.where(r <= 0.15, r ** 2 / 2, 0.15 * r - 0.15 ** 2 / 2).sum()
    assert loss == pytest.approx(huber(coef))
    for step in ([1e-3, 0], [-1e-3, 0], [0, 1e-3], [0, -1e-3]):
        assert huber(coef + np.array(step)) >= loss - 1e-9


def test_robust_cross_check_agrees_with_sql_on_planted_and_null_curves():
    con = warehouse(
        ablation_rows(noisy(planted_log_curve(4096, "lifted", head=70), 0.2, seed=70)),
        ablation_rows(noisy(planted_log_curve(4096, "steep", head=40), 0.2, seed=40), step=1),
        ablation_rows(noisy(planted_log_curve(4096, "none"), 0.3, seed=9), step=2),
        ablation_rows(noisy(planted_log_curve(4096, "flat", head=70), 0.2, seed=7), step=3),
        views=["regime_summary"],
    )
    fits = regimes.compute(con, "run")["analysis_regime_fits"].sort("step")
    assert fits["step"].to_list() == [0, 1, 2, 3]
    assert fits["sql_has_plateau"].to_list() == [True, True, False, False]
    assert fits["has_plateau"].to_list() == [True, True, False, False]
    assert fits["agrees_with_sql"].all()
    assert [abs(size - head) <= 0.15 * head for size, head in zip(fits["head_size"][:2], [70, 40])] == [True, True]
    assert fits["plateau_lift"][0] == pytest.approx(1.0, abs=0.15)   # the planted shelf: 1 nat
    assert fits["power_law_slope"].to_list()[:3] == pytest.approx([-1.0, -1.0, -1.0], abs=0.1)


def test_analysis_regime_fits_fill_their_table_and_flag_a_wrong_sql_verdict():
    con = warehouse(ablation_rows(noisy(planted_log_curve(2048, "lifted", head=40, decay_start=1500), 0.2, seed=1),
                                  run_id="a"),
                    ablation_rows(np.exp(planted_log_curve(2048, decay_start=1500)), run_id="a", token_class="common"),
                    views=["regime_summary"])
    fits = regimes.compute(con, "a")["analysis_regime_fits"]
    con.register("_fits", fits.to_arrow())
    con.execute("insert into analysis_regime_fits by name select * from _fits")
    got = con.sql("select token_class, n_neurons, sql_has_plateau, has_plateau, agrees_with_sql "
                  "from analysis_regime_fits order by token_class").fetchall()
    assert got == [("common", 2048, False, False, True), ("rare", 2048, True, True, True)]
    # stand-in for a wrong SQL verdict: the same curves, rare's plateau denied
    con.execute("create table regime_summary_wrong as select * replace (false as has_plateau, "
                "'no_plateau' as plateau_verdict) from regime_summary")
    con.execute("create or replace view regime_summary as select * from regime_summary_wrong")
    fits = regimes.compute(con, "a")["analysis_regime_fits"].sort("token_class")
    assert fits["agrees_with_sql"].to_list() == [True, False]


def test_curves_too_small_for_a_head_get_a_row_without_a_fit():
    con = warehouse(ablation_rows(HEAD_CURVE[:50], neurons=range(50)), views=["regime_summary"])
    (fit,) = regimes.compute(con, "run")["analysis_regime_fits"].iter_rows(named=True)
    assert (fit["n_neurons"], fit["head_size"], fit["plateau_lift"], fit["has_plateau"], fit["agrees_with_sql"]) == (
        50, None, None, False, True)


def _band_warehouse(counts, **run):
    con = duckdb.connect()
    sql.create_tables(con)
    con.executemany("insert into token_frequencies values ('c', ?, ?, ?)",
                    [(i, f"t{i}", int(n)) for i, n in enumerate(counts)])
    cols = ", ".join(["run_id", "corpus_id", "rare_threshold", *run])
    con.execute(f"insert into runs ({cols}) values ('r', 'c', 0.5{', ?' * len(run)})", list(run.values()))
    sql.apply_views(con, names=["token_classes"])
    return dict(con.sql("select token_id, token_class from token_classes").fetchall())


# Zipf-like head, then a tail that falls off: ids are in rank order (count descending)
BAND_COUNTS = [1000, 500, 330, 250, 200, 160, 140, 120, 30, 4, 1, 1]


def test_rare_rank_band_makes_earlier_ranks_common_and_excludes_later_ones():
    got = _band_warehouse(BAND_COUNTS, rare_rank_min=3, rare_rank_max=6)
    assert got == {0: "common", 1: "common", 2: "rare", 3: "rare", 4: "rare", 5: "rare",
                   **{i: None for i in range(6, 12)}}


def test_exclude_below_elbow_drops_the_long_tail_under_either_rule():
    x, y = np.log(np.arange(1, 13)), np.log(BAND_COUNTS)
    # independent kneedle: the point farthest (vertically) from the chord of the ln-ln curve; ties go to the first
    chord = y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0])
    elbow_count = BAND_COUNTS[int(np.argmax(np.abs(y - chord)))]
    assert 1 < elbow_count < 1000                        # the curve does have an interior elbow
    excluded = {i for i, n in enumerate(BAND_COUNTS) if n < elbow_count}
    percentile = _band_warehouse(BAND_COUNTS)
    got = _band_warehouse(BAND_COUNTS, exclude_below_elbow=True)
    assert {i for i, c in got.items() if c is None} == excluded
    assert all(got[i] == percentile[i] for i in got if i not in excluded)
    banded = _band_warehouse(BAND_COUNTS, rare_rank_min=2, rare_rank_max=11, exclude_below_elbow=True)
    assert {i for i, c in banded.items() if c is None} == excluded | {11}
