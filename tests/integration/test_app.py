"""The Streamlit explorer (app.py) through streamlit.testing.v1.AppTest, on a small warehouse: every
page renders, every chart receives exactly the rows its view holds, the SQL box refuses writes, an
empty or missing warehouse explains how to fill it, and pages load while `rtn ingest` writes.

    pytest tests/integration/test_app.py            # ~1 min: builds a 2-checkpoint warehouse once per session
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from conftest import FILLED_RUN, filled_corpus, save_checkpoint_family, table_contents

APP = Path(__file__).resolve().parents[2] / "app.py"
RUN = FILLED_RUN


def open_page(page: str, warehouse: Path, monkeypatch):
    """Returns an AppTest that ran `page` (chosen by URL, ?page=...) on `warehouse` without an exception."""
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("RTN_WAREHOUSE", str(warehouse))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["page"] = page
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [page]
    return at


def charts(at) -> dict[str, list[pa.Table]]:
    """Returns {chart title: the Arrow tables the chart was sent} of every Altair chart on the page (the
    sidebar's progress chart aside)."""
    out = {}
    for element in at.main.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        title = spec.get("title")
        out[title["text"] if isinstance(title, dict) else title] = [
            pa.ipc.open_stream(d.data.data).read_all() for d in element.proto.datasets]
    return out


def count(warehouse: Path, query: str, params=()) -> int:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(query, list(params)).fetchone()[0]
    finally:
        con.close()


def run_facts(warehouse: Path) -> dict:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        layer = con.execute("select layer from runs where run_id = ?", [RUN]).fetchone()[0]
        steps = [r[0] for r in con.execute("select step from checkpoints where run_id = ? order by step", [RUN]).fetchall()]
        return {"layer": layer, "steps": steps}
    finally:
        con.close()


def test_runs_page_charts_every_checkpoint(filled_warehouse, monkeypatch):
    at = open_page("Runs", filled_warehouse, monkeypatch)
    (checkpoints,) = charts(at)["checkpoints ingested"]
    assert checkpoints.num_rows == count(filled_warehouse, "select count(*) from checkpoints") == 2
    assert at.dataframe[0].value["run_id"].to_list() == [RUN]


def test_influence_page_draws_each_curve_with_its_regimes_and_fits(filled_warehouse, monkeypatch):
    facts = run_facts(filled_warehouse)
    at = open_page("Influence", filled_warehouse, monkeypatch)
    assert sorted(charts(at)) == ["common targets · boost", "rare targets · boost"]   # boost curves by default
    at.multiselect(key="influence_signs").set_value(["boost", "suppress"]).run()
    assert not at.exception
    for step in (facts["steps"][-1], facts["steps"][0]):   # the slider starts at the last step
        if step != facts["steps"][-1]:
            at.select_slider(key="influence_step").set_value(step).run()
            assert not at.exception
        drawn = charts(at)
        assert len(drawn) == 4
        for token_class in ("rare", "common"):
            for sign in ("boost", "suppress"):
                (curve,) = drawn[f"{token_class} targets · {sign}"]   # points and fitted lines share one frame
                expected = count(filled_warehouse, "select count(*) from influence_regimes where run_id = ? and step = ? "
                                 "and layer = ? and token_class = ? and sign = ?",
                                 [RUN, step, facts["layer"], token_class, sign])
                assert curve.num_rows == expected > 0
                assert {"neuron", "rank", "delta_loss", "regime", "fitted_influence", "head_line",
                        "power_law_line"} <= set(curve.column_names)
                fitted = [v for v in curve.column("fitted_influence").to_pylist() if v is not None]
                assert fitted and all(v > 0 for v in fitted)
        verdicts = [c.value for c in at.caption if c.value.startswith(("plateau:", "no plateau", "insufficient"))]
        assert len(verdicts) == 4   # each curve's verdict, its lift and threshold under it


def test_dynamics_page_plots_every_metric_over_steps(filled_warehouse, monkeypatch):
    at = open_page("Dynamics", filled_warehouse, monkeypatch)
    (points,) = charts(at)["training dynamics"]   # one chart, a facet per metric
    metrics = points.column("metric").to_pylist()
    # the plateau group's metrics only where some step has a plateau (the tiny random model has
    # none): no other group stands in for it
    group_metrics = {"alpha_hill_w_out", "modularity_q", "eff_dim_95"}
    plateau_steps = count(filled_warehouse, "select count(distinct step) from neuron_groups where group_name = 'plateau'")
    assert {"plateau_fraction", "power_law_slope"} <= set(metrics)
    assert (group_metrics <= set(metrics)) if plateau_steps else not (group_metrics & set(metrics))
    for metric in set(metrics):
        assert metrics.count(metric) == count(filled_warehouse, "select count(*) from app_dynamics where metric = ?",
                                              [metric])
    assert metrics.count("plateau_fraction") == 2 * 2   # rare and common at both steps


def test_geometry_page_heatmap_is_the_full_matrix_and_q_has_its_null(filled_warehouse, monkeypatch):
    facts = run_facts(filled_warehouse)
    at = open_page("Geometry & modularity", filled_warehouse, monkeypatch)
    group = at.selectbox(key="graph").value
    step = at.select_slider(key="geometry_step").value
    key = [RUN, step, facts["layer"], group]
    drawn = charts(at)
    (heatmap,) = drawn[f"Pearson r at rare targets, {group}, ordered by Louvain community"]
    nodes = count(filled_warehouse, "select count(*) from analysis_communities where run_id = ? and step = ? "
                  "and layer = ? and group_name = ?", key)
    assert heatmap.num_rows == nodes * (nodes + 1) // 2 > 0   # the lower triangle with the diagonal
    null, observed = drawn[f"Q of {group} (red) vs random groups"]
    assert null.num_rows == count(filled_warehouse, "select n_null from analysis_modularity where run_id = ? and step = ? "
                                  "and layer = ? and group_name = ?", key) >= 100
    assert observed.num_rows == 1


def test_correlation_matrix_agrees_with_modularity_edges(filled_warehouse):
    # app_correlation_matrix recomputes r for one graph instead of reading modularity_edges (speed)
    worst, pairs = duckdb.connect(str(filled_warehouse), read_only=True).execute(
        "select max(abs(m.pearson - e.signed_weight)), count(*) from app_correlation_matrix as m "
        "inner join modularity_edges as e using (run_id, step, layer, group_name, neuron_a, neuron_b)").fetchone()
    assert pairs > 0 and worst < 1e-9


def test_spectra_page_draws_eigenvalues_fit_and_xmin(filled_warehouse, monkeypatch):
    at = open_page("Spectra", filled_warehouse, monkeypatch)
    matrix = at.selectbox(key="matrix").value
    steps = at.multiselect(key="spectra_steps").value
    assert "mlp" in matrix and len(steps) == 2
    drawn = charts(at)
    layers = drawn[f"{matrix}: eigenvalue tail, power-law fit (dashed) above xmin"]
    eigen = sorted((t for t in layers if "ccdf" in t.column_names), key=lambda t: t.num_rows)  # tail fit, all points
    where = f"run_id = ? and matrix = ? and step in ({', '.join('?' * len(steps))})"
    assert eigen[-1].num_rows == count(filled_warehouse, f"select count(*) from app_spectrum_ccdf where {where}",
                                       [RUN, matrix, *steps]) > 0
    assert eigen[0].num_rows == count(filled_warehouse, f"select count(*) from app_spectrum_ccdf where {where} "
                                      "and in_tail", [RUN, matrix, *steps]) > 0
    assert sum(t.num_rows for t in layers if "ccdf" not in t.column_names) == len(steps)   # one xmin rule per step
    (alphas,) = drawn[f"{matrix}: power-law α over training"]
    assert alphas.num_rows == 2


def test_heads_page_shows_every_head_and_the_whole_layer(filled_warehouse, monkeypatch):
    facts = run_facts(filled_warehouse)
    at = open_page("Heads", filled_warehouse, monkeypatch)
    step = facts["steps"][-1]
    for method in ("mean", "bos"):
        if method != "mean":
            at.segmented_control(key="head_method").set_value(method).run()
            assert not at.exception
        drawn = charts(at)
        layers = [r[0] for r in duckdb.connect(str(filled_warehouse), read_only=True).execute(
            "select distinct layer from head_ablations order by layer").fetchall()]
        for layer in layers:
            (bars,) = drawn[f"layer {layer}: single heads vs the whole layer, step {step}"]
            assert bars.num_rows == count(filled_warehouse, "select count(*) from head_ablations where run_id = ? "
                                          "and step = ? and method = ? and layer = ?", [RUN, step, method, layer]) > 0
            assert "whole layer" in bars.column("target").to_pylist()
            (lines,) = drawn[f"layer {layer}: whole layer vs single heads over training"]
            assert lines.num_rows == 3 * count(filled_warehouse, "select count(*) from head_effects where run_id = ? "
                                               "and method = ? and layer = ? and token_class in ('rare', 'common')",
                                               [RUN, method, layer])


def test_neuron_page_follows_one_neuron_across_steps(filled_warehouse, monkeypatch):
    facts = run_facts(filled_warehouse)
    at = open_page("Neuron", filled_warehouse, monkeypatch)
    at.number_input(key="neuron").set_value(5).run()
    assert not at.exception
    drawn = charts(at)
    (deltas,) = drawn["neuron 5: ΔLoss when mean-ablated"]
    assert deltas.num_rows == 3 * len(facts["steps"])   # rare, common, all at every step
    (tokens,) = drawn["neuron 5: predicted tokens it fires most for (last step, sampled positions)"]
    expected = count(filled_warehouse, "select count(*) from app_neuron_target_tokens where run_id = ? and step = ? "
                     "and neuron = 5", [RUN, facts["steps"][-1]])
    assert tokens.num_rows == min(20, expected) > 0
    (effects,) = drawn["neuron 5: tokens it boosts and suppresses most (last step)"]
    assert effects.num_rows == 2 * 10 == count(filled_warehouse, "select count(*) from neuron_token_effects "
                                               "where run_id = ? and step = ? and neuron = 5", [RUN, facts["steps"][-1]])


def test_sql_box_returns_rows_with_a_csv_download(filled_warehouse, monkeypatch):
    at = open_page("SQL", filled_warehouse, monkeypatch)
    at.text_area(key="sql").set_value("select neuron, delta_loss from ablation_deltas where token_class = 'rare'").run()
    assert not at.exception and not at.error
    assert len(at.dataframe[0].value) == count(filled_warehouse, "select count(*) from ablation_deltas "
                                               "where token_class = 'rare'")
    assert at.get("download_button")


@pytest.mark.parametrize("statement", ["drop table runs", "select 1; drop table runs", "delete from checkpoints",
                                       "copy runs to 'runs_copy.csv'", "attach ':memory:' as scratch",
                                       "explain analyze drop table runs"])
def test_sql_box_refuses_writes_and_leaves_the_warehouse_unchanged(filled_warehouse, monkeypatch, tmp_path, statement):
    monkeypatch.chdir(tmp_path)
    before, digest = repr(table_contents(filled_warehouse)), hashlib.sha256(filled_warehouse.read_bytes()).hexdigest()
    at = open_page("SQL", filled_warehouse, monkeypatch)
    at.text_area(key="sql").set_value(statement).run()
    assert not at.exception
    assert "Refused" in at.error[0].value and "read-only" in at.error[0].value
    assert not at.dataframe
    assert repr(table_contents(filled_warehouse)) == before   # repr: NaN == NaN
    assert hashlib.sha256(filled_warehouse.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "runs_copy.csv").exists()


@pytest.mark.parametrize("statement", ["select content from read_text('/etc/hostname')", "select * from glob('/*')",
                                       "select * from read_csv('corpus.csv')", "select * from read_parquet('local.parquet')",
                                       "select * from read_csv('https://example.com/x.csv')"])
def test_sql_box_reads_no_file_or_url(filled_warehouse, monkeypatch, tmp_path, statement):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.csv").write_text("secret\n42\n")
    duckdb.sql("copy (select 42 as secret) to 'local.parquet' (format parquet)")
    at = open_page("SQL", filled_warehouse, monkeypatch)
    at.text_area(key="sql").set_value(statement).run()
    assert not at.exception and not at.dataframe
    assert "Query failed: Permission Error" in at.error[0].value and "disabled by configuration" in at.error[0].value


def test_sql_box_stops_a_long_query_and_caps_rows(filled_warehouse, monkeypatch):
    monkeypatch.setenv("RTN_QUERY_TIMEOUT", "1")
    monkeypatch.setenv("RTN_MAX_ROWS", "300")
    at = open_page("SQL", filled_warehouse, monkeypatch)
    started = time.perf_counter()
    at.text_area(key="sql").set_value("select count(*) from range(100000000000)").run()   # a minute or more without the limit
    assert time.perf_counter() - started < 10
    assert at.error[0].value == "Query stopped after the time limit of 1 s" and not at.dataframe
    at.text_area(key="sql").set_value("select * from range(1000)").run()
    assert len(at.dataframe[0].value) == 300
    assert "first 300 rows" in at.warning[0].value and at.get("download_button")


def test_sql_box_queries_hold_at_most_the_memory_limit(filled_warehouse, monkeypatch):
    monkeypatch.setenv("RTN_APP_MEMORY_LIMIT", "20MB")
    at = open_page("SQL", filled_warehouse, monkeypatch)
    assert "hold at most 20MB in memory" in at.caption[0].value
    at.text_area(key="sql").set_value("select current_setting('memory_limit') as m").run()
    assert list(at.dataframe[0].value["m"]) == ["19.0 MiB"]                    # DuckDB's MiB of the 20 MB asked for
    at.text_area(key="sql").set_value("select list(range) from range(20000000)").run()   # ~160 MB, which cannot spill
    assert at.error[0].value.startswith("Query failed: Out of Memory Error") and not at.dataframe


def test_sql_box_shows_and_downloads_nested_blob_and_interval_columns(filled_warehouse, monkeypatch):
    at = open_page("SQL", filled_warehouse, monkeypatch)
    at.text_area(key="sql").set_value("select 1 as first; select neuron, w_in, w_out, '\\xAA'::blob as raw, "
                                      "interval '2 days' as span from neuron_weights limit 3").run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value
    assert len(shown) == 3 and list(shown["raw"]) == ["aa"] * 3 and list(shown["span"]) == ["P2D"] * 3
    assert "2 statements ran; only the last one's result is shown" in at.info[0].value
    assert at.get("download_button")


@pytest.mark.parametrize(("flags", "address", "says"), [
    ((), "127.0.0.1", "(this machine only; --host 0.0.0.0 serves the network)"),
    (("--host", "0.0.0.0"), "0.0.0.0", "(reachable from the network: anyone who can connect may query the warehouse)")])
def test_rtn_app_listens_on_127_0_0_1_unless_host_says_otherwise(monkeypatch, capsys, tmp_path, flags, address, says):
    from rtn import cli
    started = {}
    monkeypatch.setattr(os, "execv", lambda path, argv: started.update(argv=argv))
    for name in ("RTN_WAREHOUSE", "RTN_QUERY_TIMEOUT", "RTN_MAX_ROWS", "RTN_APP_MEMORY_LIMIT"):
        monkeypatch.delenv(name, raising=False)   # restored after the test: cmd_app sets them for the app
    assert cli.main(["app", "--warehouse", str(tmp_path / "w.duckdb"), "--port", "8555", "--max-rows", "77", *flags]) == 0
    argv = started["argv"]
    assert argv[argv.index("--server.address") + 1] == address and argv[argv.index("--server.port") + 1] == "8555"
    assert capsys.readouterr().out == (f"rtn app: serving {tmp_path / 'w.duckdb'} on http://{address}:8555 {says}; "
                                       "SQL box limits: 5 s, 77 rows, 4GB of memory\n")
    assert (os.environ["RTN_QUERY_TIMEOUT"], os.environ["RTN_MAX_ROWS"], os.environ["RTN_APP_MEMORY_LIMIT"]) == \
        ("5.0", "77", "4GB")


def test_streamlit_run_app_py_from_the_checkout_listens_on_127_0_0_1_too(tmp_path):
    # `streamlit run app.py` bypasses rtn app's flags; the checkout's .streamlit/config.toml keeps it local.
    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print(config.get_option('server.address'), config.get_option('browser.gatherUsageStats'))")
    env = dict(os.environ, HOME=str(tmp_path))      # no ~/.streamlit/config.toml of the user's
    here, elsewhere = (subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                                      check=True) for cwd in (APP.parent, tmp_path))
    assert here.stdout.split() == ["127.0.0.1", "False"]
    assert elsewhere.stdout.split()[0] == "None"     # the setting comes from the checkout's file, not a default


def test_rtn_app_refuses_a_memory_limit_duckdb_cannot_read(monkeypatch, capsys, tmp_path):
    from rtn import cli
    monkeypatch.setattr(os, "execv", lambda path, argv: pytest.fail("the server must not start"))
    monkeypatch.delenv("RTN_APP_MEMORY_LIMIT", raising=False)
    assert cli.main(["app", "--warehouse", str(tmp_path / "w.duckdb"), "--memory-limit", "lots"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--memory-limit 'lots' is not a size DuckDB understands (e.g. 4GB, 500MB)" in err


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_warehouse_says_how_to_fill_it(tmp_path, monkeypatch, state):
    path = tmp_path / "w.duckdb"
    if state == "empty":
        duckdb.connect(str(path)).close()
    for page in ("Runs", "Influence", "SQL"):
        at = open_page(page, path, monkeypatch)
        assert "rtn demo" in at.info[0].value
        assert not at.get("vega_lite_chart")


def test_pages_load_while_rtn_ingest_writes_to_the_same_warehouse(filled_warehouse, tmp_path, monkeypatch):
    path = tmp_path / "busy.duckdb"
    shutil.copy(filled_warehouse, path)
    ckpts = save_checkpoint_family(tmp_path / "more", steps=(0, 1, 2))
    ingest = subprocess.Popen(
        [sys.executable, "-m", "rtn.cli", "ingest", "--model", str(ckpts), "--checkpoints", "all", "--run", "second",
         "--corpus", str(filled_corpus()), "--tokens", "512", "--seq-len", "32", "--samples", "64",
         "--head-layers", "0", "--no-spectra", "--warehouse", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    loads_during_ingest, seen_steps = [], set()
    try:
        while ingest.poll() is None:
            started = time.perf_counter()
            at = open_page("Runs", path, monkeypatch)
            if ingest.poll() is None:
                loads_during_ingest.append(time.perf_counter() - started)
            assert not at.warning, [w.value for w in at.warning]   # never gave up waiting for the writer
            (checkpoints,) = charts(at)["checkpoints ingested"]
            seen_steps.add(checkpoints.num_rows)
    finally:
        _, stderr = ingest.communicate(timeout=300)
    assert ingest.returncode == 0, stderr[-2000:]
    assert loads_during_ingest, "the ingest finished before a page could load"
    assert max(loads_during_ingest) < 15
    assert seen_steps - {2, 2 + 3}, "the app never saw the ingest half-done: it did not read between its writes"
    assert count(path, "select count(*) from checkpoints where run_id = 'second' and status = 'done'") == 3
    at = open_page("Runs", path, monkeypatch)
    assert charts(at)["checkpoints ingested"][0].num_rows == 2 + 3   # the finished write shows on the next run
    print(f"{len(loads_during_ingest)} page loads during the ingest, slowest {max(loads_during_ingest):.2f} s; "
          f"checkpoints seen: {sorted(seen_steps)}")
