"""An ingest killed mid-way and started again ends with the same tables as an uninterrupted one."""
from __future__ import annotations

from conftest import kill_cli_after, run_cli, save_checkpoint_family, table_contents

STEPS = (0, 1, 2, 3, 4, 5)


def test_killed_ingest_resumes_to_identical_tables(tmp_path, corpus_txt):
    root = save_checkpoint_family(tmp_path / "ckpts", steps=STEPS)
    args = ["ingest", "--model", root, "--checkpoints", "all", "--corpus", corpus_txt, "--tokens", 2048,
            "--seq-len", 32, "--run", "r"]
    reference = tmp_path / "reference.duckdb"
    run_cli(*args, "--warehouse", reference)

    killed = tmp_path / "killed.duckdb"
    done_at_kill = kill_cli_after([*args, "--warehouse", killed], killed, n_done=2)
    assert 1 <= done_at_kill < len(STEPS), "the kill should land mid-way"

    run_cli(*args, "--warehouse", killed)
    assert table_contents(killed) == table_contents(reference)
