"""The warehouse's tables and views are applied once per warehouse and SQL version, not on every write.

    .venv/bin/pytest tests/unit/test_warehouse_schema.py
"""
from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from rtn import sql, warehouse


@pytest.fixture
def applications(monkeypatch):
    """Counts how often the tables and views are (re)applied."""
    counts = {"tables": 0, "views": 0}
    create_tables, apply_views = sql.create_tables, sql.apply_views

    def counting_tables(con):
        counts["tables"] += 1
        create_tables(con)

    def counting_views(con, names=None):
        counts["views"] += 1
        apply_views(con, names)

    monkeypatch.setattr(sql, "create_tables", counting_tables)
    monkeypatch.setattr(sql, "apply_views", counting_views)
    return counts


def _stored_version(path) -> list:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("select version from warehouse_schema").fetchall()
    finally:
        con.close()


def test_a_new_warehouse_gets_the_schema_once_and_later_writes_skip_it(tmp_path, applications):
    path = tmp_path / "w.duckdb"
    with warehouse.writing(path) as con:
        assert con.execute("select count(*) from regime_summary").fetchone() == (0,)   # views exist
    assert applications == {"tables": 1, "views": 1}
    assert _stored_version(path) == [(sql.schema_version(),)]
    for _ in range(3):
        with warehouse.writing(path):
            pass
    warehouse.update_schema(path)
    assert applications == {"tables": 1, "views": 1}


def test_changed_sql_reapplies_the_schema(tmp_path, applications, monkeypatch):
    path = tmp_path / "w.duckdb"
    warehouse.update_schema(path)
    monkeypatch.setattr(sql, "schema_version", lambda: "changed-sql")
    with warehouse.writing(path):
        pass
    assert applications == {"tables": 2, "views": 2}
    assert _stored_version(path) == [("changed-sql",)]


def test_a_warehouse_changed_by_another_process_gets_this_codes_schema_back(tmp_path, applications):
    path = tmp_path / "w.duckdb"
    warehouse.update_schema(path)
    other_code = ("import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
                  "con.execute(\"drop view regime_summary\"); "
                  "con.execute(\"update warehouse_schema set version = 'older-rtn'\"); con.close()")
    subprocess.run([sys.executable, "-c", other_code, str(path)], check=True)
    with warehouse.writing(path) as con:
        assert con.execute("select count(*) from regime_summary").fetchone() == (0,)
    assert applications == {"tables": 2, "views": 2}
    assert _stored_version(path) == [(sql.schema_version(),)]


def test_a_warehouse_from_before_the_version_table_is_upgraded(tmp_path, applications):
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table runs (run_id varchar primary key)")
    con.close()
    with warehouse.writing(path) as con:
        assert "model" in {row[0] for row in con.execute("describe runs").fetchall()}
    assert _stored_version(path) == [(sql.schema_version(),)]


def test_the_schema_version_changes_with_any_sql_file_and_only_then(tmp_path):
    import shutil
    folder = tmp_path / "sql"
    shutil.copytree(sql.SQL_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    assert sql.sql_digest(folder) == sql.schema_version()
    view = folder / "regime_summary.sql"
    view.write_text(view.read_text() + "\n-- a comment still changes the file\n")
    changed_view = sql.sql_digest(folder)
    table = folder / "tables" / "runs.sql"
    table.rename(folder / "tables" / "runs_renamed.sql")
    assert len({sql.schema_version(), changed_view, sql.sql_digest(folder)}) == 3
