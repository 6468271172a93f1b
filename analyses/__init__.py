"""Analyses that SQL cannot do (eigenvalues, Louvain, robust fits), written as analysis_* tables.

They read the warehouse's tables and views, compute with numpy/scipy/igraph, and never
import torch. `rtn analyze [--run NAME]` runs them all:

    from rtn.analyses import run_analyses
    run_analyses("warehouse.duckdb", run_id="demo")
"""
from __future__ import annotations

import hashlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import rtn
from rtn import sql, warehouse
from rtn.analyses import geometry, group_ablation, group_spectra, modularity, regimes
from rtn.errors import RtnError

# Each module exposes compute(con, run_id) -> {analysis table: polars rows of that run}.
MODULES = (regimes, geometry, modularity, group_spectra, group_ablation)


def code_version() -> str:
    """Returns rtn's version with a digest of the code the analysis tables come from (the views in
    sql/ and the modules of analyses/), so analyses made by other code count as stale."""
    digest = hashlib.sha256()
    views = [path for _, path in sorted(sql.view_files().items())]
    for path in views + sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{rtn.__version__}+{digest.hexdigest()[:12]}"


def _up_to_date(con, run: str) -> bool:
    """Returns True when the run's analyses were computed by this code over its current steps."""
    row = con.execute("select steps, code_version from analysis_runs where run_id = ?", [run]).fetchone()
    return row is not None and list(row[0]) == warehouse.done_steps(con, run) and row[1] == code_version()


def run_analyses(path, run_id: str | None = None, log=print, only_stale: bool = False) -> dict[str, int]:
    """Recomputes every analysis table for one run (or all runs); returns rows written per table.

    only_stale skips runs whose analyses already cover every ingested step (`rtn demo` re-runs).
    """
    if not Path(path).is_file():     # analyze never creates a warehouse
        raise RtnError(f"no warehouse at {path}: run `rtn demo` or `rtn ingest` first")
    warehouse.update_schema(path)   # the views must be this code's before anything is read through them
    with warehouse.reading(path) as con:
        runs = [r[0] for r in con.execute("select run_id from runs order by run_id").fetchall()]
    if run_id is not None and run_id not in runs:
        raise RtnError(f"no run {run_id!r} in {path}; runs: {', '.join(runs) or 'none (run `rtn demo`)'}")
    written: dict[str, int] = {}
    started = time.perf_counter()
    for run in [run_id] if run_id else runs:
        run_started = time.perf_counter()
        with warehouse.reading(path) as con:
            if only_stale and _up_to_date(con, run):
                log(f"analyses of run {run} are up to date; `rtn analyze --run {run}` recomputes them")
                continue
        results = {}
        copy = warehouse.run_copy(path, run)   # the warehouse is free while the analyses compute
        steps = warehouse.done_steps(copy, run)
        # Small dense problems: a multi-threaded BLAS only fights over the cores (~100x slower fits here).
        with threadpool_limits(limits=1, user_api="blas"):
            for module in tqdm(MODULES, desc=f"analyze {run}", file=sys.stderr, disable=None):
                results.update(module.compute(copy, run))
        copy.close()
        with warehouse.writing(path, wait_s=None, notice=warehouse.notice_on_stderr) as con:
            for table, rows in results.items():
                warehouse.replace_rows(con, table, rows, run_id=run)
                written[table] = written.get(table, 0) + rows.height
            warehouse.replace_rows(con, "analysis_runs", pl.DataFrame([{
                "run_id": run, "steps": steps, "code_version": code_version(),
                "seconds": time.perf_counter() - run_started,
                "analyzed_at": datetime.now(timezone.utc).replace(tzinfo=None)}]), run_id=run)
    if written:
        log(f"analyses: {', '.join(f'{t} {n} rows' for t, n in written.items())} in {time.perf_counter() - started:.1f} s")
    return written
