"""Two writers, a long lock, a long analysis: nothing mixes, nothing computed is thrown away (issue 15, points 3, 8)."""
from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import duckdb
import polars as pl
import pytest
from conftest import FILLED_RUN, save_checkpoint_family, save_model_folder
from polars.testing import assert_frame_equal

from rtn import warehouse
from rtn.errors import RtnError
from rtn.ingest import pipeline
from rtn.ingest.config import IngestConfig

HOLD_LOCK = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()"
QUIET = {"head_layers": 0, "spectra": False, "n_samples": 32, "seq_len": 32}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_rows(path) -> tuple:
    """Returns (tokens in runs.config, n_eval_tokens, eval_tokens rows, done steps) of run r."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("""
            select json_extract(config, '$.tokens')::int, n_eval_tokens,
                   (select count(*) from eval_tokens where run_id = 'r'),
                   (select list(step order by step) from checkpoints where run_id = 'r' and status = 'done')
            from runs where run_id = 'r'""").fetchone()
    finally:
        con.close()


def test_an_ingest_whose_settings_changed_under_it_writes_nothing(tmp_path, corpus_txt, monkeypatch):
    # point 3: --tokens 1024 computes its first checkpoint while --tokens 512 of the same run ingests and commits
    root = save_checkpoint_family(tmp_path / "ckpts", steps=(0, 1))
    path = tmp_path / "w.duckdb"
    first = IngestConfig(model=str(root), checkpoints="all", corpus=str(corpus_txt), run="r", tokens=1024, **QUIET)
    second = dataclasses.replace(first, tokens=512)
    real_extract, after_second = pipeline.extract_checkpoint, {}

    def extract_while_the_other_ingest_commits(*args, **kwargs):
        if not after_second:
            after_second["digest"] = None
            pipeline.ingest(second, path, log=lambda *_: None)
            after_second["digest"] = _digest(path)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(pipeline, "extract_checkpoint", extract_while_the_other_ingest_commits)
    with pytest.raises(RtnError, match=r"run 'r' already exists with tokens=512 \(now 1024\)"):
        pipeline.ingest(first, path, log=lambda *_: None)
    assert _digest(path) == after_second["digest"]
    assert _run_rows(path) == (512, 512, 512, [0, 1])


def test_two_ingests_of_one_run_with_other_settings_one_fails_in_one_line(tmp_path, corpus_txt):
    # point 3 as a user met it: both started at once from the command line
    root = save_checkpoint_family(tmp_path / "ckpts", steps=(0, 1))
    path = tmp_path / "w.duckdb"
    args = ["ingest", "--model", root, "--checkpoints", "all", "--corpus", corpus_txt, "--run", "r", "--seq-len", 32,
            "--samples", 32, "--head-layers", 0, "--no-spectra", "--warehouse", path]
    procs = [subprocess.Popen([sys.executable, "-m", "rtn.cli", *map(str, args), "--tokens", str(tokens)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for tokens in (1024, 512)]
    results = [(proc.wait(), proc.stderr.read()) for proc in procs]
    failed = [stderr for code, stderr in results if code != 0]
    assert sorted(code for code, _ in results) == [0, 2], results
    errors = [line for line in failed[0].splitlines() if not line.startswith("ingest r step")]   # not the stage times
    assert len(errors) == 1 and errors[0].startswith("rtn: error: run 'r' already exists with tokens=")
    tokens, n_eval_tokens, eval_rows, steps = _run_rows(path)
    assert tokens == n_eval_tokens == eval_rows and steps == [0, 1]


def test_ingest_waits_for_the_lock_with_a_notice_and_keeps_its_computed_checkpoint(tmp_path, corpus_txt, monkeypatch):
    # point 8: the lock is taken by another process after the checkpoint is computed, and held past several notices
    model = save_model_folder(tmp_path / "model")
    path = tmp_path / "w.duckdb"
    config = IngestConfig(model=str(model), corpus=str(corpus_txt), run="r", tokens=256, **QUIET)
    holder, notices, computed = None, [], []
    real_extract = pipeline.extract_checkpoint

    def extract_then_lock(*args, **kwargs):
        nonlocal holder
        computed.append(real_extract(*args, **kwargs))
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        return computed[-1]

    def notice_then_release(line):
        notices.append(line)
        if len(notices) == 3:
            holder.stdin.close()     # the other process lets go

    monkeypatch.setattr(pipeline, "extract_checkpoint", extract_then_lock)
    monkeypatch.setattr(warehouse, "notice_on_stderr", notice_then_release)
    monkeypatch.setattr(warehouse, "NOTICE_EVERY_S", 0.3)
    pipeline.ingest(config, path, log=lambda *_: None)
    holder.wait()
    assert len(computed) == 1 and len(notices) >= 3
    assert all(f"warehouse {path} is locked by another process; waiting" in line for line in notices)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("select list(step) from checkpoints where run_id = 'r' and status = 'done'").fetchone()[0] == [-1]
    con.close()


def test_analyses_compute_while_another_process_may_write(filled_warehouse, tmp_path, monkeypatch):
    # point 8: `rtn analyze` holds no connection while it computes, so an ingest can take the write lock meanwhile
    import shutil

    from rtn.analyses import regimes, run_analyses
    path = tmp_path / "w.duckdb"
    shutil.copy(filled_warehouse, path)
    opened = []
    real_compute = regimes.compute

    def compute_while_another_process_opens_for_writing(con, run_id):
        probe = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
                                str(path)], check=False, capture_output=True, text=True)
        opened.append(probe.returncode)
        return real_compute(con, run_id)

    monkeypatch.setattr(regimes, "compute", compute_while_another_process_opens_for_writing)
    written = run_analyses(path, FILLED_RUN, log=lambda *_: None)
    assert opened == [0] and written["analysis_regime_fits"] > 0


def test_the_in_memory_copy_gives_every_analysis_the_rows_of_the_warehouse(filled_warehouse):
    from rtn.analyses import MODULES
    copy = warehouse.run_copy(filled_warehouse, FILLED_RUN)
    with warehouse.reading(filled_warehouse) as con:
        for module in MODULES:
            direct, copied = module.compute(con, FILLED_RUN), module.compute(copy, FILLED_RUN)
            assert sorted(direct) == sorted(copied)
            for table, rows in direct.items():
                assert isinstance(rows, pl.DataFrame) and rows.height > 0, table
                assert_frame_equal(rows, copied[table])
    copy.close()
