"""Every table and view holds one row per its declared grain: the `-- grain (...)` first line of its SQL file.

    pytest tests/integration/test_grains.py      # on the filled warehouse (one tiny run, every table and analysis)
"""
from __future__ import annotations

import re

import duckdb
import pytest

from rtn import sql

GRAIN_LINE = re.compile(r"^--\s*grain\s*\(([^)]*)\)")


def declared_grain(path) -> list[str]:
    """Returns the grain columns a SQL file declares on its first line."""
    first = path.read_text().splitlines()[0]
    match = GRAIN_LINE.match(first)
    assert match, f"{path.name} does not open with '-- grain (...)': {first!r}"
    return [column.strip() for column in match.group(1).split(",")]


SQL_FILES = {**sql.table_files(), **sql.view_files()}
# Views empty on the filled run because it lacks the fact they list; each one's grain is checked where it holds rows.
EMPTY_ON_FILLED = {"duplicate_checkpoints": "tests/integration/test_verified_checkpoints.py"}


def test_grain_lines_are_read_from_every_table_and_view_file():
    assert set(sql.table_files()) >= {"runs", "ablation_deltas", "weight_spectra"}
    assert declared_grain(SQL_FILES["ablation_deltas"]) == ["run_id", "step", "layer", "neuron", "token_class"]
    assert declared_grain(SQL_FILES["regime_summary"]) == ["run_id", "step", "layer", "token_class", "sign"]


@pytest.mark.parametrize("name", sorted(SQL_FILES))
def test_declared_grain_is_unique(filled_warehouse, name):
    grain = declared_grain(SQL_FILES[name])
    con = duckdb.connect(str(filled_warehouse), read_only=True)
    try:
        rows, distinct = con.execute(f"select count(*), count(distinct ({', '.join(grain)})) from {name}").fetchone()
    finally:
        con.close()
    if name in EMPTY_ON_FILLED:
        assert rows == 0, f"{name} should be empty on the filled run (its checkpoints all differ)"
        return
    assert rows > 0, f"{name} is empty on the filled warehouse: the grain check would prove nothing"
    assert rows == distinct, f"{name}: {rows - distinct} rows share a grain ({', '.join(grain)})"
