"""rtn.formats: INTERVAL as ISO 8601, values as plain JSON, every DuckDB type through CSV, JSON and the table,
against hand-written expectations."""
from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from rtn import formats


@pytest.mark.parametrize(("months", "days", "nanoseconds", "iso"), [
    (0, 0, 0, "PT0S"),
    (14, 3, (4 * 3600 + 0.25) * 10**9, "P1Y2M3DT4H0.25S"),
    (12, 0, 0, "P1Y"),
    (0, 0, 90 * 60 * 10**9, "PT1H30M"),
    (0, 0, -90 * 60 * 10**9, "PT-1H-30M"),
    (-13, -2, 0, "P-1Y-1M-2D"),
    (0, 1, 1, "P1DT0.000000001S"),
    (0, 0, -1_500_000_000, "PT-1.5S"),
])
def test_iso_interval_writes_each_part_with_its_sign(months, days, nanoseconds, iso):
    assert formats.iso_interval(months, days, int(nanoseconds)) == iso


def test_duckdb_intervals_come_out_as_iso_8601():
    table = duckdb.sql("select interval '1 year 1 month' as a, interval '36 hours' as b, "
                       "interval '1 minute 1.5 seconds' as c").to_arrow_table()
    assert json.loads(formats.to_json(table)) == [{"a": "P1Y1M", "b": "PT36H", "c": "PT1M1.5S"}]


def test_jsonable_spells_out_non_finite_numbers_and_hexes_bytes_at_any_depth():
    value = {"x": [float("nan"), float("inf"), -float("inf"), 1.0], "raw": b"\x00\xff", "nested": [[b"\x10"]]}
    assert formats.jsonable(value) == {"x": ["NaN", "Infinity", "-Infinity", 1.0], "raw": "00ff", "nested": [["10"]]}


def test_csv_writes_nested_columns_as_json_text_and_keeps_flat_ones():
    table = pa.table({"id": [1, 2], "values": [[0.5, None], []], "pair": [{"a": 1, "b": "x"}, None],
                      "raw": pa.array([b"\x01", None], pa.binary())})
    assert formats.to_csv(table) == 'id,values,pair,raw\n1,"[0.5, null]","{""a"": 1, ""b"": ""x""}",01\n2,[],,\n'


def test_table_shows_lists_natively_and_blobs_as_hex_without_shape_or_dtypes():
    table = pa.table({"v": [[1, 2]], "raw": pa.array([b"\xab"], pa.binary())})
    assert formats.to_table(table).splitlines() == ["┌────────┬─────┐",
                                                    "│ v      ┆ raw │",
                                                    "╞════════╪═════╡",
                                                    "│ [1, 2] ┆ ab  │",
                                                    "└────────┴─────┘"]


def test_json_of_an_empty_result_is_an_empty_array():
    assert formats.to_json(duckdb.sql("select 1 as a where false").to_arrow_table()) == "[]"


def test_repeated_column_names_are_all_kept_as_duckdb_names_them():
    table = duckdb.sql("select 1 as a, 2 as a, 3 as a_1").to_arrow_table()
    assert formats.to_csv(table) == "a,a_1,a_1_1\n1,2,3\n"
    assert json.loads(formats.to_json(table)) == [{"a": 1, "a_1": 2, "a_1_1": 3}]
    assert formats.displayable(table).columns == duckdb.sql("select 1 as a, 2 as a, 3 as a_1").pl().columns
