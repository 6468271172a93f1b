"""Query results as text: a table, CSV or JSON, for every DuckDB type (`rtn query`, the app's SQL box).

    from rtn.formats import to_csv, to_json, displayable
    print(to_csv(warehouse.run_read_only(con, "select * from neuron_weights").table))

Types that polars cannot write (or hold) are turned into text first, the same way everywhere:
lists, structs, maps and unions as JSON text in CSV; BLOB as hex; INTERVAL as ISO 8601
(P1Y2M3DT4H5M6.5S); NaN and ±inf as the strings "NaN", "Infinity", "-Infinity" in JSON,
which has no numbers for them.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def iso_interval(months: int, days: int, nanoseconds: int) -> str:
    """Returns an INTERVAL (months, days, nanoseconds) as ISO 8601, each part signed: P1Y2M3DT4H5M6.5S, PT0S."""
    years, months = int(months / 12), months - 12 * int(months / 12)   # truncated toward zero, as DuckDB's parts
    sign, nanoseconds = (-1 if nanoseconds < 0 else 1), abs(nanoseconds)
    hours, rest = divmod(nanoseconds, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = f"{rest // 10**9}.{rest % 10**9:09d}".rstrip("0").rstrip(".")
    date = "".join(f"{n}{unit}" for n, unit in ((years, "Y"), (months, "M"), (days, "D")) if n)
    time = "".join(f"{sign * int(n) if unit != 'S' else ('-' if sign < 0 else '') + n}{unit}"
                   for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n not in (0, "0"))
    return "P" + date + ("T" + time if time else "") if date or time else "PT0S"


def jsonable(value):
    """Returns `value` (an element of pyarrow's to_pylist) as plain JSON data, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[repr(value)]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, pa.MonthDayNano):
        return iso_interval(value.months, value.days, value.nanoseconds)
    if isinstance(value, dt.timedelta):
        return iso_interval(0, value.days, (value.seconds * 10**6 + value.microseconds) * 1000)
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.date, dt.time)):   # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value) \
            and not isinstance(value[0], pa.MonthDayNano):   # a MAP: [(key, value), ...]
        return {str(k): jsonable(v) for k, v in value}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _unholdable(kind: pa.DataType) -> bool:
    """Returns whether polars cannot hold or print `kind` (anywhere inside it)."""
    if pa.types.is_interval(kind) or pa.types.is_union(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind) or pa.types.is_binary_view(kind):
        return True
    return any(_unholdable(kind.field(i).type) for i in range(kind.num_fields))


def _as_text(column: pa.ChunkedArray) -> list[str | None]:
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind) \
            or pa.types.is_binary_view(kind) or pa.types.is_interval(kind):
        return [None if v is None else jsonable(v) for v in column.to_pylist()]
    return [None if v is None else json.dumps(jsonable(v), ensure_ascii=False) for v in column.to_pylist()]


def unique_names(names: list[str]) -> list[str]:
    """Returns the column names made unique as DuckDB's own .pl() does: a, a -> a, a_1 (select 1 as a, 2 as a)."""
    seen: set[str] = set()
    out = []
    for name in names:
        while name in seen:
            name += "_1"
        seen.add(name)
        out.append(name)
    return out


def displayable(table: pa.Table, nested_as_json: bool = False) -> pl.DataFrame:
    """Returns `table` as polars, with every column polars cannot hold (and, if asked, every nested one) as text."""
    columns = []
    for name, column in zip(unique_names(table.column_names), table.columns):
        kind = column.type
        if _unholdable(kind) or (nested_as_json and kind.num_fields > 0):
            columns.append(pl.Series(name, _as_text(column), dtype=pl.String))
        else:
            columns.append(pl.from_arrow(column).alias(name))
    return pl.DataFrame(columns)


def to_csv(table: pa.Table) -> str:
    """Returns `table` as CSV: nested values as JSON text, BLOB as hex, INTERVAL as ISO 8601."""
    return displayable(table, nested_as_json=True).write_csv()


def _json_values(column: pa.ChunkedArray) -> list:
    """Returns the column's values as plain JSON data; flat columns without NaN/inf skip the per-value walk."""
    kind = column.type
    plain = pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind) \
        or pa.types.is_boolean(kind) or pa.types.is_null(kind)
    if pa.types.is_floating(kind):
        plain = pc.all(pc.is_finite(column)).as_py() is not False   # True, or None when every value is null
    return column.to_pylist() if plain else [jsonable(v) for v in column.to_pylist()]


def to_json(table: pa.Table) -> str:
    """Returns `table` as a JSON array of row objects; NaN and ±inf as strings (JSON has no numbers for them)."""
    columns = [_json_values(column) for column in table.columns]
    names = unique_names(table.column_names)
    rows = [dict(zip(names, values)) for values in zip(*columns)]
    return json.dumps(rows, ensure_ascii=False, allow_nan=False, separators=(",", ":"))   # compact, as polars wrote it


def to_table(table: pa.Table, max_rows: int = 50) -> str:
    """Returns `table` drawn as a box table (polars), without the shape line and dtype rows."""
    with pl.Config(tbl_rows=max_rows, tbl_cols=20, fmt_str_lengths=60, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        return str(displayable(table))
