"""The one module that opens the warehouse: writes, transactions, read-only reads.

    from rtn.warehouse import read
    df = read("select * from regime_summary where token_class = 'rare'")   # polars

Writers hold the connection only while writing, so an interrupted ingest resumes and
readers (the app, `rtn query`) get in between writes.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from rtn import sql
from rtn.errors import RtnError

DEFAULT_WAREHOUSE = Path(os.environ.get("RTN_WAREHOUSE", "warehouse.duckdb"))
# Every read connection: no extension is fetched or loaded behind the user's back, and the
# configuration is locked once set, so no query can switch any of this back on (DuckDB's
# guidance for untrusted SQL). read_only=True protects the warehouse file only; statements
# that write elsewhere (COPY, EXPORT, ATTACH, ...) are refused by `read_only_statements`.
READ_SETTINGS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                 "allow_community_extensions": False, "lock_configuration": True}
# The app serves strangers too: no file, URL or database but the warehouse (read_text, glob, read_csv, ATTACH).
NO_FILES = {"enable_external_access": False}


def check_writable(path: Path) -> None:
    """Raises RtnError unless the warehouse file can be created or written at `path`."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists():
        if path.is_dir() or not os.access(path, os.W_OK):
            raise RtnError(f"warehouse {path} is not a writable file; pass --warehouse PATH")
    elif not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RtnError(f"cannot create warehouse {path}: folder {parent} is missing or not writable")


NOTICE_EVERY_S = 30.0   # how often a writer waiting for the lock says so


def notice_on_stderr(line: str) -> None:
    """Prints a wait notice as one `rtn: ...` line on stderr (stdout stays the command's output)."""
    print(f"rtn: {line}", file=sys.stderr, flush=True)


def _connect(path: Path, read_only: bool, wait_s: float | None, notice=None,
             settings: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Opens the warehouse with `settings`, waiting up to `wait_s` seconds (None: as long as it takes) while another
    process holds the lock; `notice(line)` hears about a wait every NOTICE_EVERY_S seconds."""
    started = time.monotonic()
    noticed = started
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=settings or {})
        except duckdb.ConnectionException as err:   # this process holds the file open with other settings
            raise RtnError(f"warehouse {path} is already open in this process with other settings "
                           f"({str(err).splitlines()[0]}): close that connection first") from err
        except duckdb.IOException as err:  # another process holds the write lock
            waited = time.monotonic() - started
            if "lock" not in str(err).lower() or (wait_s is not None and waited > wait_s):
                raise RtnError(f"warehouse {path} is busy or unreadable: {str(err).splitlines()[0]}") from err
            if notice is not None and time.monotonic() - noticed >= NOTICE_EVERY_S:
                notice(f"warehouse {path} is locked by another process; waiting ({waited:.0f} s so far)")
                noticed = time.monotonic()
            time.sleep(0.05)


def _apply_schema(con) -> None:
    """Creates the tables and views unless the warehouse already holds this code's (one cheap query then).

    The applied version is stored in the warehouse, not remembered by the process, so a new
    file, changed SQL and another process's (other code's) schema are all noticed.
    """
    version = sql.schema_version()
    try:
        stored = con.execute("select version from warehouse_schema").fetchall()
    except duckdb.CatalogException:    # a new warehouse, or one made before the version was stored
        stored = None
    if stored == [(version,)]:
        return
    sql.create_tables(con)
    sql.apply_views(con)
    con.execute("begin transaction")
    con.execute("delete from warehouse_schema")
    con.execute("insert into warehouse_schema values (?)", [version])
    con.execute("commit")


def update_schema(path: Path = DEFAULT_WAREHOUSE, wait_s: float = 60.0) -> None:
    """Creates the warehouse's missing tables and columns and (re)creates every view, as this code defines them
    (a no-op when the warehouse already holds this code's schema)."""
    check_writable(Path(path))
    con = _connect(Path(path), read_only=False, wait_s=wait_s)
    try:
        with _write_failures_in_one_line(path):
            _apply_schema(con)
            con.close()
    finally:
        con.close()


@contextmanager
def _write_failures_in_one_line(path: Path):
    """Turns a write the file system refused (a full disk) into a one-line RtnError; DuckDB has rolled it back."""
    try:
        yield
    except (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException) as err:
        raise RtnError(f"writing warehouse {path} failed (disk full?); what it held before is kept: "
                       f"{str(err).splitlines()[0]}") from err


@contextmanager
def writing(path: Path = DEFAULT_WAREHOUSE, wait_s: float | None = 60.0, notice=None):
    """Yields a write connection inside one transaction; commits on success, rolls back on error.

    Waits for the lock as _connect does; a write the disk refuses raises a one-line RtnError.
    """
    check_writable(Path(path))
    con = _connect(Path(path), read_only=False, wait_s=wait_s, notice=notice)
    try:
        with _write_failures_in_one_line(path):
            _apply_schema(con)
            con.execute("begin transaction")
            try:
                yield con
                con.execute("commit")
            except BaseException:
                try:
                    con.execute("rollback")
                except duckdb.Error:     # a failed commit has ended the transaction already
                    pass
                raise
            con.close()   # checkpoints the log into the file; where the disk refuses, the log stays and is replayed
    finally:
        con.close()


def check_memory_limit(limit: str) -> str:
    """Returns `limit` ('4GB', '500MB', ...) if DuckDB takes it as a memory_limit; raises RtnError otherwise."""
    try:
        duckdb.connect(config={"memory_limit": limit}).close()
    except duckdb.Error as err:
        raise RtnError(f"--memory-limit {limit!r} is not a size DuckDB understands (e.g. 4GB, 500MB): "
                       f"{str(err).splitlines()[0]}") from None
    return limit


@contextmanager
def reading(path: Path = DEFAULT_WAREHOUSE, wait_s: float | None = 10.0, notice=None, files: bool = True,
            memory_limit: str | None = None):
    """Yields a read-only connection with READ_SETTINGS, retrying while a writer holds the file (as _connect does).

    files=False also shuts every file and URL but the warehouse out (the app's SQL box); memory_limit
    ('4GB') caps what its queries hold in memory (DuckDB's default: 80 % of the machine's).
    """
    path = Path(path)
    if not path.exists():
        raise RtnError(f"no warehouse at {path}: run `rtn demo` or `rtn ingest` first")
    settings = READ_SETTINGS if files else {**READ_SETTINGS, **NO_FILES}
    if memory_limit:
        settings = {**settings, "memory_limit": memory_limit}
    con = _connect(path, read_only=True, wait_s=wait_s, notice=notice, settings=settings)
    try:
        yield con
    finally:
        con.close()


def run_copy(path: Path, run_id: str) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory DuckDB holding one run's rows of every table (its corpus's for corpus tables) and every
    view: computations that take minutes read it instead of holding the warehouse's lock, so ingests get in."""
    copy = duckdb.connect()
    sql.create_tables(copy)
    with reading(path) as con:
        corpus = con.execute("select corpus_id from runs where run_id = ?", [run_id]).fetchone()
        for table in sql.table_files():
            columns = {row[0] for row in con.execute(f"describe {table}").fetchall()}
            if "run_id" in columns:
                rows = con.sql(f"select * from {table} where run_id = ?", params=[run_id]).to_arrow_table()
            elif "corpus_id" in columns and corpus is not None:
                rows = con.sql(f"select * from {table} where corpus_id = ?", params=[corpus[0]]).to_arrow_table()
            else:
                continue
            copy.register("_rows", rows)
            names = ", ".join(f'"{name}"' for name in rows.column_names)
            copy.execute(f"insert into {table} ({names}) select {names} from _rows")
            copy.unregister("_rows")
    sql.apply_views(copy)
    return copy


def replace_rows(con, table: str, rows: pl.DataFrame, **key) -> None:
    """Deletes the rows of `table` matching `key` (column=value), then inserts `rows`.

    Columns are matched by name, so `rows` may list them in any order; idempotent by design.
    """
    if key:
        where = " and ".join(f"{col} = ?" for col in key)
        con.execute(f"delete from {table} where {where}", list(key.values()))
    if rows.height:
        cols = ", ".join(rows.columns)
        con.register("_rows", rows.to_arrow())
        con.execute(f"insert into {table} ({cols}) select {cols} from _rows")
        con.unregister("_rows")   # on error the connection is rolled back and closed instead


def frame(con, query: str, params: list | None = None) -> pl.DataFrame:
    """Returns the result of `query` on an open connection as a polars DataFrame."""
    return con.sql(query, params=params or None).pl()


def done_steps(con, run_id: str) -> list[int]:
    """Returns the steps of a run whose checkpoints are fully ingested, ascending."""
    return [row[0] for row in con.execute(
        "select step from checkpoints where run_id = ? and status = 'done' order by step", [run_id]).fetchall()]


def read(query: str, warehouse: Path | str = DEFAULT_WAREHOUSE, params: list | None = None) -> pl.DataFrame:
    """Returns a view, table or SQL query on the warehouse as a polars DataFrame (read-only)."""
    text = query.strip()
    if " " not in text:  # a bare view or table name
        text = f"select * from {text}"
    read_only_statements(text)   # read-only means nothing written anywhere, as for `rtn query`
    with reading(Path(warehouse)) as con:
        return frame(con, text, params)


READ_ONLY_KINDS = "SELECT, DESCRIBE, SHOW, SUMMARIZE, VALUES, or EXPLAIN of one of them"


def _kind(statement) -> str:
    """Returns the statement's type name, or UNKNOWN for one this Python binding cannot name (UPDATE EXTENSIONS)."""
    try:
        return statement.type.name
    except ValueError:
        return "UNKNOWN"


def _explained(statement) -> str:
    """Returns the statement type an EXPLAIN wraps ('UNKNOWN' if none parses): EXPLAIN ANALYZE runs it.

    The wrapped statement starts at the first token after EXPLAIN (and its options) from which
    DuckDB's parser reads exactly one statement.
    """
    tokens = [pos for pos, kind in duckdb.tokenize(statement.query) if kind != duckdb.token_type.comment]
    for pos in tokens[1:]:
        try:
            inner = duckdb.extract_statements(statement.query[pos:])
        except (duckdb.Error, ValueError):
            continue
        return _kind(inner[0]) if len(inner) == 1 else "UNKNOWN"
    return "UNKNOWN"


def read_only_statements(text: str) -> list[str]:
    """Returns the SQL of each statement in `text`; raises RtnError unless every one only reads.

    Decided by DuckDB's parser (statement types), not by matching strings: anything but a SELECT
    (which DESCRIBE, SHOW, SUMMARIZE, VALUES and PIVOT-with-values parse into) or an EXPLAIN of
    one is refused, since COPY, EXPORT, ATTACH, INSTALL, SET, PRAGMA, CALL, CHECKPOINT, VACUUM and
    every DDL/DML statement could write somewhere. A SELECT cannot write: the warehouse is opened
    read-only and the configuration locked (so enable_logging/enable_profiling cannot point at a file).
    """
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as err:
        raise RtnError(f"query failed: {str(err).splitlines()[0]}") from err
    if not statements:
        raise RtnError("the query is empty (nothing but whitespace or comments): type a SELECT")
    for statement in statements:
        kind = _kind(statement)
        if kind == "EXPLAIN" and _explained(statement) == "SELECT":
            continue
        if kind != "SELECT":
            what = kind if kind != "EXPLAIN" else f"EXPLAIN of {_explained(statement)}"
            what = what.replace("UNKNOWN", "a statement of a type it cannot name")
            raise RtnError(f"query refused: read-only, it runs only {READ_ONLY_KINDS}, not {what}")
    return [statement.query for statement in statements]


@dataclass
class QueryResult:
    table: pa.Table            # the last statement's rows (at most max_rows)
    statements: int            # statements run; only the last one's rows are kept
    truncated: bool = False    # more rows than max_rows: the rest were not fetched


def run_read_only(con, text: str, timeout_s: float | None = None, max_rows: int | None = None) -> QueryResult:
    """Returns the last statement's result of `text`, after refusing any statement that could write.

    timeout_s interrupts the query (DuckDB's own interrupt, from a timer thread): RtnError then.
    max_rows stops fetching after that many rows (QueryResult.truncated).
    """
    statements = read_only_statements(text)
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    if timer:
        timer.start()
    try:
        for query in statements:
            reader = con.sql(query).to_arrow_reader(10_000)
            batches, n_rows = [], 0
            for batch in reader:
                batches.append(batch)
                n_rows += batch.num_rows
                if max_rows is not None and n_rows > max_rows:
                    break
            reader.close()
    except duckdb.InterruptException as err:
        if not timeout_s:   # Ctrl+C, not our timer
            raise KeyboardInterrupt from err
        raise RtnError(f"query stopped after the time limit of {timeout_s:g} s") from err
    except duckdb.Error as err:
        raise RtnError(f"query failed: {str(err).splitlines()[0]}") from err
    finally:
        if timer:
            timer.cancel()
    table = pa.Table.from_batches(batches, schema=reader.schema)
    truncated = max_rows is not None and table.num_rows > max_rows
    return QueryResult(table.slice(0, max_rows) if truncated else table, len(statements), truncated)
