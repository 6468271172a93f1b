"""The warehouse's SQL: table definitions (`sql/tables/*.sql`), macros (`sql/macros/*.sql`) and
views (`sql/*.sql`).

One view per file, file name = view name. `apply_views` creates the macros, then the views in
dependency order, found from which other view names each file mentions.
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent
TABLE_DIR = SQL_DIR / "tables"
MACRO_DIR = SQL_DIR / "macros"


def table_files() -> dict[str, Path]:
    """Returns {table name: its create-table file}."""
    return {path.stem: path for path in sorted(TABLE_DIR.glob("*.sql"))}


def view_files() -> dict[str, Path]:
    """Returns {view name: its file}."""
    return {path.stem: path for path in sorted(SQL_DIR.glob("*.sql"))}


@functools.cache
def schema_version() -> str:
    """Returns a digest of every SQL file and of the code applying them: equal digests, equal warehouse schema."""
    return sql_digest(SQL_DIR)


def sql_digest(folder: Path) -> str:
    """Returns a 16-hex-digit digest of the .sql files under `folder` (names and contents) and of this module."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(Path(folder).rglob("*.sql")):
        digest.update(b"\0" + path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _without_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def view_dependencies() -> dict[str, set[str]]:
    """Returns {view name: the other views its file mentions}."""
    files = view_files()
    texts = {name: _without_comments(path.read_text()) for name, path in files.items()}
    return {
        name: {other for other in files if other != name and re.search(rf"\b{other}\b", text)}
        for name, text in texts.items()
    }


def view_order() -> list[str]:
    """Returns view names so that every view comes after the views it reads."""
    deps = view_dependencies()
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError(f"views depend on each other in a cycle through {name}")
        visiting.add(name)
        for dep in sorted(deps[name]):
            visit(dep)
        visiting.discard(name)
        ordered.append(name)

    for name in sorted(deps):
        visit(name)
    return ordered


def create_tables(con) -> None:
    """Creates every table that does not exist yet, and adds the columns its file declares to one that does.

    So a warehouse made by an older rtn gains new columns (NULL in its old rows) instead of
    failing on them; a changed key or type still needs a new warehouse.
    """
    existing = {row[0] for row in con.execute(
        "select table_name from information_schema.tables where table_schema = current_schema() "
        "and table_catalog = current_database()").fetchall()}
    for name, path in table_files().items():
        text = path.read_text()
        con.execute(text)
        if name in existing:
            _add_missing_columns(con, name, text)


def _add_missing_columns(con, name: str, text: str) -> None:
    declared = text.replace(f"create table if not exists {name}", f"create or replace temp table _declared_{name}", 1)
    con.execute(declared)
    try:
        have = {row[0] for row in con.execute(f"describe {name}").fetchall()}
        for column, column_type, *_ in con.execute(f"describe _declared_{name}").fetchall():
            if column not in have:
                con.execute(f'alter table {name} add column "{column}" {column_type}')
    finally:
        con.execute(f"drop table if exists temp._declared_{name}")


def apply_views(con, names: list[str] | None = None) -> None:
    """Creates or replaces every macro, then every view (or just `names` and the views they read,
    except those the connection holds as tables, a test's stand-ins), in dependency order."""
    for path in sorted(MACRO_DIR.glob("*.sql")):
        con.execute(path.read_text())
    files = view_files()
    wanted = None
    if names is not None:
        tables = {row[0] for row in con.execute(
            "select table_name from information_schema.tables where table_type = 'BASE TABLE'").fetchall()}
        wanted = set(names) | (_with_dependencies(names) - tables)
    for name in view_order():
        if wanted is not None and name not in wanted:
            continue
        body = files[name].read_text().strip().rstrip(";")
        con.execute(f"create or replace view {name} as\n{body}")


def _with_dependencies(names) -> set[str]:
    deps = view_dependencies()
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(deps.get(name, ()))
    return wanted
