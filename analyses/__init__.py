"""Analyses that SQL cannot do (eigenvalues, Louvain, robust fits), written as analysis_* tables.

They read the warehouse's tables and views, compute with numpy/scipy/networkx, and never
import torch. `rtn analyze [--run NAME]` runs them all:

    from analyses import run_analyses
    run_analyses("warehouse.duckdb", run_id="demo")
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rtn import warehouse

# Each module exposes compute(con, run_id) -> {analysis table: polars rows of that run}.
MODULES = ("analyses.regimes", "analyses.geometry", "analyses.modularity", "analyses.group_spectra",
           "analyses.group_ablation")


def available_modules() -> list[str]:
    """Returns the analysis modules present in this checkout."""
    here = Path(__file__).resolve().parent
    return [name for name in MODULES if (here / f"{name.split('.')[-1]}.py").exists()]


def run_analyses(path, run_id: str | None = None, log=print) -> dict[str, int]:
    """Recomputes every analysis table for one run (or all runs); returns rows written per table."""
    with warehouse.writing(path):   # applies the current views and tables before reading
        pass
    with warehouse.reading(path) as con:
        runs = [r[0] for r in con.execute("select run_id from runs order by run_id").fetchall()]
    if run_id is not None and run_id not in runs:
        from rtn.errors import RtnError
        raise RtnError(f"no run {run_id!r} in {path}; runs: {', '.join(runs) or 'none (run `rtn demo`)'}")
    written: dict[str, int] = {}
    started = time.perf_counter()
    for run in [run_id] if run_id else runs:
        results = {}
        with warehouse.reading(path) as con:
            for name in tqdm(available_modules(), desc=f"analyze {run}", file=sys.stderr, disable=None):
                results.update(importlib.import_module(name).compute(con, run))
        with warehouse.writing(path) as con:
            for table, rows in results.items():
                warehouse.replace_rows(con, table, rows, run_id=run)
                written[table] = written.get(table, 0) + rows.height
    log(f"analyses: {', '.join(f'{t} {n} rows' for t, n in written.items()) or 'none'} "
        f"in {time.perf_counter() - started:.1f} s")
    return written
