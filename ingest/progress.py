"""Where a checkpoint's ingest spends its time: StageTimer, recorded in checkpoints.stage_seconds.

tqdm draws bars only on a terminal and stays silent in a batch job's log, so when the stream
is not a terminal StageTimer prints one plain line per finished stage instead:

    ingest demo step 1000: heads 931.7 s
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TextIO

import torch


def is_terminal(stream: TextIO) -> bool:
    """Returns True when `stream` is an interactive terminal (where tqdm shows its bars)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StageTimer:
    """Collects the wall time of each named stage of a checkpoint's ingest, and reports each to a non-terminal log."""

    def __init__(self, label: str | None = None, stream: TextIO | None = None):
        self.seconds: dict[str, float] = {}
        self.label = label          # what the lines name, e.g. "ingest demo step 1000"; None prints nothing
        self.stream = stream        # None: sys.stderr at the time of each line

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield                       # a stage that raises records nothing: its error is the one line to read
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.record(stage, time.perf_counter() - start)

    def record(self, stage: str, seconds: float) -> None:
        """Adds `seconds` to a stage and prints its line when the log is not a terminal."""
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 4)
        stream = self.stream or sys.stderr
        if self.label is not None and not is_terminal(stream):
            print(f"{self.label}: {stage} {seconds:.1f} s", file=stream, flush=True)
