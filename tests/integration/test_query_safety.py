"""`rtn query` reads and never writes (issue 15, points 2, 4 and 9): every write attempt, through any
file, link or setting, is refused in one line with every file byte-identical; local files can still
be read; every DuckDB type prints in every format; the table is what the README shows.

    pytest tests/integration/test_query_safety.py      # ~30 s: tiny warehouses, no model
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import resource
import shutil
import time
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli

from rtn import cli, warehouse
from rtn.errors import RtnError

RUN = "tiny"


@pytest.fixture(scope="module")
def tiny_warehouse(tmp_path_factory) -> Path:
    """Returns a warehouse with the full schema and three rows (built once: the schema takes seconds)."""
    path = tmp_path_factory.mktemp("tiny") / "warehouse.duckdb"
    with warehouse.writing(path) as con:
        con.execute("insert into runs (run_id, model, n_layers) values (?, 'tiny-model', 2)", [RUN])
        con.execute("insert into eval_losses values (?, 0, 'rare', 3.5, 10), (?, 0, 'common', 1.25, 90)", [RUN, RUN])
        con.execute("insert into neuron_weights values (?, 0, 1, 7, [0.5, -1.0], [2.0, 'nan'::float])", [RUN])
    return path


@pytest.fixture
def folder(tiny_warehouse, tmp_path, monkeypatch) -> Path:
    """Returns a working folder holding a tiny warehouse, a hard link to it, another DuckDB file and a Parquet file."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(tiny_warehouse, path)
    os.link(path, tmp_path / "hard.duckdb")
    other = duckdb.connect(str(tmp_path / "other.duckdb"))
    other.execute("create table kept as select 42 as answer")
    other.close()
    duckdb.sql("copy (select 7 as neuron, 'local note' as note) to 'local.parquet' (format parquet)")
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    """Returns {relative path: sha256} of every file under `folder`."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def query(*args: str, capsys) -> tuple[int, str, str]:
    """Returns (exit code, stdout, stderr) of `rtn query ARGS` run in this process (fast; one test runs the CLI)."""
    code = cli.main(["query", *args, "--warehouse", "warehouse.duckdb"])
    out = capsys.readouterr()
    return code, out.out, out.err


# issue 15 point 2, each attempt as reported, and their cousins: files, links, settings, extensions, DDL/DML
WRITE_ATTEMPTS = [
    "copy runs to 'leak.csv'",
    "copy (select * from eval_losses) to 'x.parquet' (format parquet)",
    "export database 'dump'",
    "attach 'other.duckdb' as o (read_only false); create table o.t as select 1",
    "attach 'hard.duckdb' as w2 (read_only false); drop table w2.eval_losses",
    "select 1; attach 'hard.duckdb' as w2",            # a read first does not let the write through
    "explain analyze copy runs to 'leak.csv'",         # EXPLAIN ANALYZE runs what it explains
    "-- a comment\nEXPLAIN (analyze, format json) copy runs to 'leak.csv'",
    "pragma enable_profiling",
    "pragma version",
    "set memory_limit = '1GB'",
    "reset threads",
    "set enable_external_access = true",
    "checkpoint",
    "call checkpoint()",
    "vacuum",
    "install httpfs",
    "load parquet",
    "update extensions",
    "create table t as select 1",
    "create temp table t as select 1",
    "create view v as select 1",
    "create secret (type s3, key_id 'k', secret 's')",
    "insert into runs (run_id) values ('evil')",
    "update runs set model = 'evil'",
    "delete from eval_losses",
    "truncate eval_losses",
    "drop table runs",
    "alter table runs add column evil integer",
    "detach warehouse",
    "use memory",
    "begin transaction",
]


@pytest.mark.parametrize("statement", WRITE_ATTEMPTS)
def test_every_write_attempt_is_refused_in_one_line_and_every_file_stays_byte_identical(folder, statement, capsys):
    before = snapshot(folder)
    code, out, err = query(statement, capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("rtn: error: query refused: read-only") and len(err.strip().splitlines()) == 1, err
    assert snapshot(folder) == before   # same files, same bytes: nothing created, nothing changed


def test_select_tricks_cannot_write_either(folder, capsys):
    before = snapshot(folder)
    # table functions that change settings or write files from inside a SELECT: the configuration is locked
    for statement in ("select * from enable_logging(storage = 'file', storage_path = 'logs')",
                      "select * from enable_profiling()",
                      "select * from query('create table t as select 1')",
                      "select * from read_csv('https://example.com/x.csv')"):   # no httpfs auto-install
        code, out, err = query(statement, capsys=capsys)
        assert (code, out) == (2, "") and err.startswith("rtn: error: query failed") and len(err.splitlines()) == 1, err
    # harmless on a read-only warehouse: runs, writes nothing
    assert query("select * from checkpoint()", "--format", "csv", capsys=capsys)[0] == 0
    assert snapshot(folder) == before
    assert not (folder / "logs").exists()


def test_the_hard_link_attack_fails_from_the_real_command_line(folder):
    before = snapshot(folder)
    proc = run_cli("query", "attach 'hard.duckdb' as w2 (read_only false); drop table w2.eval_losses",
                   "--warehouse", "warehouse.duckdb", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "rtn: error: query refused: read-only, it runs only SELECT, DESCRIBE, SHOW, SUMMARIZE, " \
                          "VALUES, or EXPLAIN of one of them, not ATTACH\n"
    assert snapshot(folder) == before
    assert run_cli("query", "select count(*) as n from eval_losses", "--format", "csv",
                   "--warehouse", "warehouse.duckdb").stdout == "n\n2\n"


def test_local_files_can_still_be_read_and_joined_with_the_warehouse(folder, capsys):
    before = snapshot(folder)
    code, out, _ = query("select * from read_parquet('local.parquet')", "--format", "csv", capsys=capsys)
    assert (code, out) == (0, "neuron,note\n7,local note\n")
    code, out, _ = query("select w.neuron, l.note, w.layer from neuron_weights as w join 'local.parquet' as l "
                         "using (neuron)", "--format", "json", capsys=capsys)
    assert (code, json.loads(out)) == (0, [{"neuron": 7, "note": "local note", "layer": 1}])
    code, out, _ = query("select answer from read_duckdb('other.duckdb', table_name => 'kept')", "--format", "csv",
                         capsys=capsys)
    assert (code, out) == (0, "answer\n42\n")
    assert snapshot(folder) == before


@pytest.mark.parametrize("text", ["", "   ", "-- only a comment", "/* a block */ ;\n ; "])
def test_an_empty_or_comment_only_query_is_one_line(folder, text, capsys):
    code, out, err = query(text, capsys=capsys)
    assert code == 2 and out == ""
    assert err == "rtn: error: the query is empty (nothing but whitespace or comments): type a SELECT\n"


def test_several_statements_say_that_only_the_last_result_is_shown(folder, capsys):
    code, out, err = query("select 1 as first; select 2 as second", "--format", "csv", capsys=capsys)
    assert (code, out) == (0, "second\n2\n")
    assert err == "rtn: 2 statements ran; only the last one's result is shown\n"


def test_reads_that_only_look_at_the_warehouse_work(folder, capsys):
    for statement, expected in (("describe eval_losses", "run_id"), ("show tables", "eval_losses"),
                                ("summarize eval_losses", "mean_loss"), ("explain select * from runs", "physical_plan"),
                                ("explain analyze select count(*) from runs", "analyzed_plan"),
                                ("from eval_losses select mean_loss where token_class = 'rare'", "3.5"),
                                ("values (1, 'a')", "a")):
        code, out, err = query(statement, "--format", "csv", capsys=capsys)
        assert code == 0 and expected in out, (statement, err)


# a row of every type `rtn query` has to print: nested, BLOB, INTERVAL, NaN and ±inf, MAP, UNION, HUGEINT
EVERY_TYPE = ("select [1.5, 'nan'::double] as list, {'a': 1, 'b': [2, 3]} as struct, map {'k': 4} as map, "
              "'\\xAA\\x01'::blob as blob, interval '14 months 3 days 4 hours 0.25 seconds' as span, "
              "-interval '90 minutes' as back, 'nan'::double as nan, 'inf'::double as inf, '-inf'::float as neg_inf, "
              "union_value(k := 5) as tagged, 170141183460469231731687303715884105727::hugeint as huge, "
              "1.25::decimal(6, 2) as price, date '2026-12-03' as day, null::blob as missing")
JSON_ROW = {"list": [1.5, "NaN"], "struct": {"a": 1, "b": [2, 3]}, "map": {"k": 4}, "blob": "aa01",
            "span": "P1Y2M3DT4H0.25S", "back": "PT-1H-30M", "nan": "NaN", "inf": "Infinity", "neg_inf": "-Infinity",
            "tagged": 5, "huge": 2**127 - 1, "price": 1.25, "day": "2026-12-03", "missing": None}


def test_every_duckdb_type_prints_in_every_format(folder, capsys):
    code, out, err = query(EVERY_TYPE, "--format", "json", capsys=capsys)
    assert (code, err) == (0, "")
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} is not JSON")) == [JSON_ROW]
    code, out, err = query(EVERY_TYPE, "--format", "csv", capsys=capsys)
    assert (code, err) == (0, "")
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert {k: json.loads(v) for k, v in row.items() if k in ("list", "struct", "map")} == \
        {k: JSON_ROW[k] for k in ("list", "struct", "map")}   # nested values: JSON text
    assert (row["blob"], row["span"], row["back"], row["nan"], row["inf"], row["neg_inf"], row["missing"]) == \
        ("aa01", "P1Y2M3DT4H0.25S", "PT-1H-30M", "NaN", "inf", "-inf", "")
    code, out, err = query(EVERY_TYPE, capsys=capsys)
    assert (code, err) == (0, "")
    assert "aa01" in out and "P1Y2M3DT4H0.25S" in out


def test_a_list_column_of_the_warehouse_writes_as_csv(folder, capsys):
    code, out, _ = query("select neuron, w_in, w_out from neuron_weights", "--format", "csv", capsys=capsys)
    assert code == 0
    assert out == 'neuron,w_in,w_out\n7,"[0.5, -1.0]","[2.0, ""NaN""]"\n'


def test_the_table_has_no_shape_line_or_dtype_row_and_says_when_rows_are_left_out(folder, capsys):
    code, out, err = query("select token_class, mean_loss from eval_losses order by mean_loss", capsys=capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["┌─────────────┬───────────┐",
                                "│ token_class ┆ mean_loss │",
                                "╞═════════════╪═══════════╡",
                                "│ common      ┆ 1.25      │",
                                "│ rare        ┆ 3.5       │",
                                "└─────────────┴───────────┘"]
    code, out, err = query("select * from range(120)", capsys=capsys)
    assert code == 0 and err == f"rtn: 120 rows, {cli.TABLE_ROWS} shown; --format csv prints them all\n"
    assert "│ 0     │" in out and "│ 119   │" in out and "…" in out


def test_a_query_past_the_time_limit_is_stopped(folder):
    with warehouse.reading(folder / "warehouse.duckdb", files=False) as con:
        started = time.perf_counter()
        with pytest.raises(RtnError, match="stopped after the time limit of 1 s"):
            warehouse.run_read_only(con, "select count(*) from range(100000000000)", timeout_s=1)   # 1e11 rows: a minute or more
        stopped_after = time.perf_counter() - started
        assert 1 <= stopped_after < 4
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        time.sleep(0.5)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu < 0.1   # stopped, not left running behind
        # the connection is usable again, and a row cap stops fetching
        capped = warehouse.run_read_only(con, "select * from range(100000)", timeout_s=1, max_rows=250)
        assert (capped.table.num_rows, capped.truncated, capped.table.column("range")[-1].as_py()) == (250, True, 249)
        whole = warehouse.run_read_only(con, "select * from eval_losses", timeout_s=1, max_rows=250)
        assert (whole.table.num_rows, whole.truncated) == (2, False)


def test_the_apps_connection_reads_the_warehouse_and_no_file(folder):
    with warehouse.reading(folder / "warehouse.duckdb", files=False) as con:
        assert warehouse.run_read_only(con, "select count(*) as n from runs").table.to_pylist() == [{"n": 1}]
        for statement in ("select * from read_text('local.parquet')", "select * from read_parquet('local.parquet')",
                          "select * from glob('*')", "select * from read_csv('/etc/hostname')"):
            with pytest.raises(RtnError, match="Permission Error"):
                warehouse.run_read_only(con, statement)


def test_the_python_read_is_read_only_too(folder):
    before = snapshot(folder)
    assert warehouse.read("eval_losses", folder / "warehouse.duckdb").height == 2
    with pytest.raises(RtnError, match="query refused: read-only.*not COPY"):
        warehouse.read("copy runs to 'leak.csv'", folder / "warehouse.duckdb")
    assert snapshot(folder) == before


def test_a_warehouse_held_open_with_other_settings_in_this_process_is_one_clear_error(folder):
    held = duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True)   # the user's own, plain connection
    try:
        with pytest.raises(RtnError, match="already open in this process with other settings.*close that connection"):
            warehouse.read("runs", folder / "warehouse.duckdb")
    finally:
        held.close()
    assert warehouse.read("runs", folder / "warehouse.duckdb").height == 1
