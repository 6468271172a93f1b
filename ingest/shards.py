"""Parquet shards for clusters without a long-lived driver (SLURM arrays, submitit): write, then `rtn merge`.

    rtn ingest --model M --checkpoints all --shard-dir DIR --checkpoint-index $SLURM_ARRAY_TASK_ID
    rtn merge DIR --warehouse warehouse.duckdb

Layout, in hive partitions (DuckDB reads it directly: read_parquet('DIR/neuron_stats/*/*/*.parquet',
hive_partitioning = true)); files hold no run_id/step columns, the folder names carry them:

    DIR/<table>/run_id=<r>/step=<s>/part-0.parquet   per-step tables; `checkpoints` written last, the done marker
    DIR/<table>/run_id=<r>/part-0.parquet            the run's own rows (runs, corpora, token_frequencies, ...)

Every file is written under a temporary name and renamed, so a reader never sees half a file, and a
step without its `checkpoints` file is an unfinished job: `rtn merge` skips it with one line.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import polars as pl

from rtn import warehouse
from rtn.errors import RtnError
from rtn.ingest import sources
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import (
    RUN_TABLES,
    STEP_TABLES,
    CheckpointResult,
    Plan,
    _check_same_run,
    _existing,
    checkpoint_row,
    checkpoint_tables,
    duplicate_line,
    plan_ingest,
    write_run,
    write_step,
)

PART = "part-0.parquet"
RUN_LEVEL = ("runs", "corpora", "token_frequencies", *RUN_TABLES)


def _write_atomic(rows: pl.DataFrame, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    rows.write_parquet(temporary)
    os.replace(temporary, file)


def _run_dir(root: Path, table: str, run_id: str) -> Path:
    return root / table / f"run_id={run_id}"


def _step_file(root: Path, table: str, run_id: str, step: int) -> Path:
    return _run_dir(root, table, run_id) / f"step={step}" / PART


def _shard_progress(root: Path):
    """Returns progress(run_id) -> (stored run config or None, steps with a done marker), read from the shards."""
    def progress(run_id: str):
        runs = _run_dir(root, "runs", run_id) / PART
        stored = json.loads(pl.read_parquet(runs)["config"][0]) if runs.exists() else None
        return stored, set(_marked_steps(root, run_id))
    return progress


def _marked_steps(root: Path, run_id: str) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step=")) for p in _run_dir(root, "checkpoints", run_id).glob(f"step=*/{PART}"))


def ingest_shards(config: IngestConfig, root: Path, checkpoint_index: int | None = None, log=print) -> dict:
    """Writes the shards of the run's missing checkpoints (or only checkpoint number `checkpoint_index`, 0-based in
    step order) under `root`; returns a summary."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RtnError(f"--shard-dir {root} is a file, not a folder")
    if checkpoint_index is not None:      # checked before the corpus is prepared: an array's extra index fails fast
        n_refs = len(sources.resolve_checkpoints(config.model, config.checkpoints))
        if not 0 <= checkpoint_index < n_refs:
            raise RtnError(f"--checkpoint-index {checkpoint_index} is out of range: the run has {n_refs} "
                           f"checkpoints (0..{n_refs - 1})")
    plan = plan_ingest(config, root, log, progress=_shard_progress(root))
    if checkpoint_index is not None:
        plan.todo = [ref for ref in plan.todo if ref == plan.refs[checkpoint_index]]
    if not plan.todo:
        log(f"run {plan.run_id}: the asked checkpoints are already in {root}; nothing to do")
        return {"run_id": plan.run_id, "ingested": 0}
    for ref in plan.todo:
        result = checkpoint_tables(ref, plan.data, plan.config, plan.adapter, plan.layer, plan.device)
        write_checkpoint_shards(root, plan, ref, result)
    log(f"run {plan.run_id}: wrote {len(plan.todo)} checkpoint(s) as shards to {root}; load them with `rtn merge {root}`")
    return {"run_id": plan.run_id, "ingested": len(plan.todo)}


def write_checkpoint_shards(root: Path, plan: Plan, ref, result: CheckpointResult) -> None:
    """Writes one checkpoint's files, the run's own rows first (when new) and the `checkpoints` marker last."""
    started = time.perf_counter()
    if plan.run_rows is not None:
        for table in RUN_LEVEL:
            _write_atomic(plan.run_rows[table].drop("run_id", strict=False), _run_dir(root, table, plan.run_id) / PART)
        plan.run_rows = None
    for table in STEP_TABLES:
        rows, file = result.tables.get(table, pl.DataFrame()), _step_file(root, table, plan.run_id, ref.step)
        if rows.height:
            _write_atomic(rows, file)
        else:
            file.unlink(missing_ok=True)   # a table this checkpoint has no rows for (like the warehouse's delete)
    result.timer.record("write", time.perf_counter() - started)
    _write_atomic(checkpoint_row(plan.run_id, ref, result).drop("run_id", "step"),
                  _step_file(root, "checkpoints", plan.run_id, ref.step))


def _read(file: Path, **columns) -> pl.DataFrame:
    rows = pl.read_parquet(file, hive_partitioning=False)
    return rows.with_columns(*(pl.lit(value).alias(name) for name, value in columns.items()))


def merge(root: Path, path: Path, log=print) -> dict:
    """Loads every finished step under `root` that the warehouse at `path` lacks, one transaction per step;
    returns {'merged': n, 'skipped': already there, 'unfinished': steps without a done marker}."""
    root, path = Path(root), Path(path)
    if not (root / "checkpoints").is_dir():
        raise RtnError(f"{root} holds no shards (no checkpoints/ folder); write them with `rtn ingest ... --shard-dir`")
    warehouse.check_writable(path)
    merged = skipped = 0
    started = time.perf_counter()
    run_ids = sorted(p.name.removeprefix("run_id=") for p in root.glob("*/run_id=*"))
    unfinished = _unfinished(root, run_ids)
    for run_id, step in unfinished:
        log(f"skipping run {run_id} step {step} in {root}: no checkpoints shard, its job did not finish")
    for run_id in dict.fromkeys(run_ids):
        marked = _marked_steps(root, run_id)
        if not marked:
            continue
        stored, done = _existing(path, run_id)     # a run of that name made otherwise is refused, as ingest does
        _check_same_run(stored, IngestConfig(**json.loads(_read(_run_dir(root, "runs", run_id) / PART)["config"][0])))
        has_run = stored is not None
        for step in marked:
            if step in done:
                skipped += 1
                continue
            with warehouse.writing(path) as con:
                if not has_run:
                    _merge_run(con, root, run_id)
                    has_run = True
                tables = {table: _read(file) for table in STEP_TABLES
                          if (file := _step_file(root, table, run_id, step)).exists()}
                write_step(con, run_id, step, tables)
                marker = _read(_step_file(root, "checkpoints", run_id, step), run_id=run_id, step=step)
                warehouse.replace_rows(con, "checkpoints", marker, run_id=run_id, step=step)
                warning = duplicate_line(con, run_id, step)
            merged += 1
            if warning:
                log(warning)
    elapsed = time.perf_counter() - started
    log(f"merged {merged} checkpoint(s) from {root} into {path} in {elapsed:.1f} s"
        f" ({skipped} already there, {len(unfinished)} unfinished skipped)")
    return {"merged": merged, "skipped": skipped, "unfinished": len(unfinished), "seconds": elapsed}


def _unfinished(root: Path, run_ids) -> list[tuple[str, int]]:
    """Returns (run_id, step) of step folders some table has but `checkpoints` lacks."""
    found = set()
    for run_id in set(run_ids):
        marked = set(_marked_steps(root, run_id))
        for folder in root.glob(f"*/run_id={run_id}/step=*"):
            step = int(folder.name.removeprefix("step="))
            if step not in marked:
                found.add((run_id, step))
    return sorted(found)


def _merge_run(con, root: Path, run_id: str) -> None:
    rows = {table: _read(_run_dir(root, table, run_id) / PART) for table in RUN_LEVEL}
    write_run(con, run_id, {**rows, "runs": rows["runs"].with_columns(pl.lit(run_id).alias("run_id"))})
