"""StageTimer: one plain line per finished stage in a log that is not a terminal, silence on a terminal.

    .venv/bin/pytest tests/unit/test_progress.py      # the CLI's lines per checkpoint: tests/integration/test_ingest.py
"""
from __future__ import annotations

import io
import re
import time

import pytest

from rtn.ingest.progress import StageTimer, Ticker


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


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_stage_prints_a_line_a_minute_with_what_is_left_to_a_log():
    log, clock = io.StringIO(), Clock()
    with Ticker(400, "ingest demo step 8: ablation of layer 3", "re-runs", stream=log, clock=clock) as tick:
        clock.now += 30
        tick(50)                         # 30 s in: no line yet
        clock.now += 31
        tick(50)                         # 61 s in, 100 of 400 done
        clock.now += 10
        tick(100)                        # 71 s: the next line waits for 121 s
        clock.now += 60
        tick(100)                        # 131 s, 300 of 400
        clock.now += 60
        tick(100)                        # done: the stage's own line says so
    assert log.getvalue().splitlines() == [
        "ingest demo step 8: ablation of layer 3: 100/400 re-runs after 61 s, about 183 s left",
        "ingest demo step 8: ablation of layer 3: 300/400 re-runs after 131 s, about 44 s left"]


def test_a_ticker_on_a_terminal_draws_a_bar_and_without_a_label_says_nothing():
    terminal, log, clock = Terminal(), io.StringIO(), Clock()
    with Ticker(10, "ingest demo step 8: ablation of layer 3", "re-runs", stream=terminal, clock=clock) as bar, \
            Ticker(10, None, "re-runs", stream=log, clock=clock) as silent:
        for _ in range(5):
            clock.now += 100
            bar(2)
            silent(2)
        assert bar.bar.n == 10 and silent.bar is None
    assert "ablation of layer 3:   0%" in terminal.getvalue()         # tqdm's bar (it redraws at most 10 times a second)
    assert log.getvalue() == "" and silent.done == 10


def test_a_timers_ticker_carries_its_label_and_stream_and_none_without_a_label():
    log, clock = io.StringIO(), Clock()
    ticker = StageTimer("ingest demo step 8", stream=log).ticker(4, "heads", "re-runs", clock=clock)
    clock.now += 61
    ticker(1)
    assert log.getvalue() == "ingest demo step 8: heads: 1/4 re-runs after 61 s, about 183 s left\n"
    assert StageTimer(stream=log).ticker(4, "heads", "re-runs").label is None
