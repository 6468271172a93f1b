"""When `rtn analyze --stale-only` (and so `rtn demo`) recomputes a run's analysis tables.

    .venv/bin/pytest tests/unit/test_analyses.py -q
"""
from __future__ import annotations

import duckdb
import polars as pl

from rtn import analyses, sql, warehouse


def analysed_warehouse(steps: list[int]) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory warehouse whose run 'r' has `steps` done and analyses recorded for them."""
    con = duckdb.connect()
    sql.create_tables(con)
    for step in steps:
        con.execute("insert into checkpoints (run_id, step, status) values ('r', ?, 'done')", [step])
    warehouse.replace_rows(con, "analysis_runs", pl.DataFrame([{
        "run_id": "r", "steps": steps, "code_version": analyses.code_version()}]), run_id="r")
    return con


def test_analyses_are_up_to_date_for_the_same_steps_and_code():
    assert analyses._up_to_date(analysed_warehouse([0, 1, 2]), "r")


def test_a_newly_ingested_step_makes_the_analyses_stale():
    con = analysed_warehouse([0, 1])
    con.execute("insert into checkpoints (run_id, step, status) values ('r', 4, 'done')")
    assert not analyses._up_to_date(con, "r")


def test_changed_view_or_analysis_code_makes_the_analyses_stale(tmp_path, monkeypatch):
    con = analysed_warehouse([0, 1])
    views = {name: tmp_path / path.name for name, path in sql.view_files().items()}
    for name, path in sql.view_files().items():
        views[name].write_bytes(path.read_bytes())
    monkeypatch.setattr(sql, "view_files", lambda: views)
    assert analyses._up_to_date(con, "r")             # same text, same version
    views["regime_summary"].write_text(views["regime_summary"].read_text() + "\n-- changed\n")
    assert not analyses._up_to_date(con, "r")
