"""An ingest killed mid-way and started again ends with the same tables as an uninterrupted one."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import duckdb

from conftest import run_cli, save_checkpoint_family, table_contents

STEPS = (0, 1, 2, 3, 4, 5)


def _done_steps(path) -> int:
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:          # missing, or the writer holds the lock right now
        return 0
    try:
        return con.execute("select count(*) from checkpoints where status = 'done'").fetchone()[0]
    except duckdb.Error:
        return 0
    finally:
        con.close()


def test_killed_ingest_resumes_to_identical_tables(tmp_path, corpus_txt):
    root = save_checkpoint_family(tmp_path / "ckpts", steps=STEPS)
    args = ["ingest", "--model", root, "--checkpoints", "all", "--corpus", corpus_txt, "--tokens", 2048,
            "--seq-len", 32, "--run", "r"]
    reference = tmp_path / "reference.duckdb"
    run_cli(*args, "--warehouse", reference)

    killed = tmp_path / "killed.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "rtn.cli", *map(str, args), "--warehouse", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _done_steps(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _done_steps(killed)
    assert 1 <= done_at_kill < len(STEPS), "the kill should land mid-way"

    run_cli(*args, "--warehouse", killed)
    assert table_contents(killed) == table_contents(reference)
