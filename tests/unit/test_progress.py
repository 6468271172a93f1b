"""StageTimer: one plain line per finished stage in a log that is not a terminal, silence on a terminal.

    .venv/bin/pytest tests/unit/test_progress.py      # the CLI's lines per checkpoint: tests/integration/test_ingest.py
"""
from __future__ import annotations

import io
import re
import time

import pytest

from rtn.ingest.progress import StageTimer


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_each_finished_stage_prints_one_line_with_its_seconds_to_a_log():
    log = io.StringIO()
    timer = StageTimer("ingest demo step 8", stream=log)
    with timer("forward"):
        time.sleep(0.05)
    with timer("heads"):
        pass
    timer.record("write", 2.26)
    lines = log.getvalue().splitlines()
    assert [re.sub(r"\d+\.\d s$", "N s", line) for line in lines] == [
        "ingest demo step 8: forward N s", "ingest demo step 8: heads N s", "ingest demo step 8: write N s"]
    assert lines[2].endswith("write 2.3 s")
    assert float(lines[0].split()[-2]) == pytest.approx(timer.seconds["forward"], abs=0.05)
    assert timer.seconds["forward"] >= 0.05 and set(timer.seconds) == {"forward", "heads", "write"}


def test_a_terminal_or_no_label_prints_nothing_and_still_times():
    terminal, log = Terminal(), io.StringIO()
    for timer in (StageTimer("ingest demo step 8", stream=terminal), StageTimer(stream=log)):
        with timer("forward"):
            pass
        with timer("forward"):
            pass
        assert list(timer.seconds) == ["forward"]
    assert terminal.getvalue() == "" and log.getvalue() == ""


def test_a_stage_that_raises_records_and_prints_nothing():
    log = io.StringIO()
    timer = StageTimer("ingest demo step 8", stream=log)
    with pytest.raises(RuntimeError), timer("load"):
        raise RuntimeError("bad checkpoint")
    assert timer.seconds == {} and log.getvalue() == ""


def test_the_default_stream_is_stderr_at_the_time_of_the_line(capsys):
    with StageTimer("ingest r step 0")("forward"):
        pass
    assert re.fullmatch(r"ingest r step 0: forward \d+\.\d s\n", capsys.readouterr().err)
