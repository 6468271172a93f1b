"""An ingest killed again and again at random moments, then started again, ends with the same tables as an
uninterrupted one (the crash drill of issue 15: at least KILLS kills, each resumed from what the last one left).

Each ingest is `rtn ingest` in a process of its own, forked from a server that has imported torch and transformers
once (multiprocessing's forkserver), so a kill costs a checkpoint's work and not an interpreter's start-up.
"""
from __future__ import annotations

import json
import multiprocessing
import random
import sys
import time
import types

import duckdb
from conftest import done_checkpoints, save_checkpoint_family, table_contents

STEPS = (0, 1, 2, 3, 4)
KILLS = 10
PRELOAD = ["rtn.cli", "rtn.ingest.pipeline", "rtn.ingest.extract", "transformers",
           "transformers.models.gpt_neox.modeling_gpt_neox", "datasets"]


def _rtn(argv: list[str]) -> None:
    """`rtn ARGV` in a forked process, exiting with its status."""
    import os
    import sys

    from rtn.cli import main
    sys.stdout = sys.stderr = open(os.devnull, "w")   # noqa: SIM115 (the process ends here)
    raise SystemExit(main(argv))


def test_killed_ingest_resumes_to_identical_tables(tmp_path, corpus_txt, monkeypatch):
    # forkserver children re-import __main__ from its file: after an AppTest in the same session that is app.py
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    root = save_checkpoint_family(tmp_path / "ckpts", steps=STEPS)
    args = ["ingest", "--model", str(root), "--checkpoints", "all", "--corpus", str(corpus_txt), "--tokens", "512",
            "--seq-len", "32", "--head-layers", "1", "--run", "r"]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    def start(path):
        proc = context.Process(target=_rtn, args=([*args, "--warehouse", str(path)],))
        proc.start()
        return proc

    reference = tmp_path / "reference.duckdb"
    warm = context.Process(target=_rtn, args=(["query", "select 1", "--warehouse", str(tmp_path / "none.duckdb")],))
    warm.start()                                # starting the server pays for the imports once
    warm.join()
    started = time.monotonic()
    proc = start(reference)
    proc.join()
    whole = time.monotonic() - started
    assert proc.exitcode == 0
    expected = table_contents(reference)
    con = duckdb.connect(str(reference), read_only=True)
    step_seconds = [sum(json.loads(row[0]).values()) for row in
                    con.execute("select stage_seconds from checkpoints order by step").fetchall()]
    con.close()
    # a process's first checkpoint pays for lazy imports and warm-ups, the others do not: kill moments reach from
    # the start past the first checkpoint to about one more, on this machine's own clock
    window = whole - sum(step_seconds[1:]) + sum(step_seconds[1:]) / (len(STEPS) - 1)

    # A kill lands in starting, loading, computing or writing, and a run needs several kills to finish. One that
    # finishes is checked, and the drill goes on with a new warehouse until KILLS kills have landed.
    rng = random.Random(15)
    done_at_kills, attempt = [], 0
    killed = tmp_path / "killed0.duckdb"
    while len(done_at_kills) < KILLS:
        proc = start(killed)
        proc.join(timeout=rng.uniform(0, window))
        if proc.exitcode is None:
            proc.kill()               # SIGKILL: no clean-up, no rollback
            proc.join()
            done_at_kills.append(done_checkpoints(killed))
            continue
        assert proc.exitcode == 0
        assert table_contents(killed) == expected
        attempt += 1
        killed = tmp_path / f"killed{attempt}.duckdb"

    print(f"ingest {whole:.1f} s, kill window {window:.1f} s; done steps at {len(done_at_kills)} kills: {done_at_kills}; {attempt} finished")
    assert any(0 < done < len(STEPS) for done in done_at_kills), f"no kill landed mid-way: {done_at_kills}"
    proc = start(killed)
    proc.join()
    assert proc.exitcode == 0
    assert table_contents(killed) == expected
