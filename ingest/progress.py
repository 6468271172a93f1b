"""Where a checkpoint's ingest spends its time: StageTimer, recorded in checkpoints.stage_seconds; and
Ticker, progress through one long stage.

tqdm draws bars only on a terminal and stays silent in a batch job's log, so when the stream
is not a terminal StageTimer prints one plain line per finished stage instead, and a Ticker a
line every minute of a long stage:

    ingest demo step 1000: ablation of layer 3: 512/2,048 re-runs after 61 s, about 183 s left
    ingest demo step 1000: heads 931.7 s
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Self, TextIO

import torch
from tqdm import tqdm


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

    def ticker(self, total: int, what: str, unit: str, **options) -> Ticker:
        """Returns a Ticker (`options`: every_s, clock) for `total` units of `what` inside this checkpoint's stages,
        on this timer's stream; silent without a label, like the timer."""
        return Ticker(total, f"{self.label}: {what}" if self.label is not None else None, unit, stream=self.stream,
                      **options)


class Ticker:
    """Progress through `total` units of one long stage: a tqdm bar on a terminal, a plain line every `every_s`
    seconds in a log (none for a stage that ends sooner), nothing without a label.

        with Ticker(4096, "ingest demo step 8: ablation of layer 3", "re-runs") as tick:
            for chunk in chunks:
                ...
                tick(len(chunk))
    """

    def __init__(self, total: int, label: str | None, unit: str, stream: TextIO | None = None,
                 every_s: float = 60.0, clock=time.monotonic):
        self.total, self.label, self.unit, self.every_s, self.clock = total, label, unit, every_s, clock
        self.stream = stream or sys.stderr
        self.done, self.started = 0, clock()
        self.next_line = self.started + every_s
        terminal = label is not None and is_terminal(self.stream)
        self.bar = tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream, leave=False) if terminal else None

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if self.label is None or now < self.next_line or self.done >= self.total:
            return
        elapsed = now - self.started
        left = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        print(f"{self.label}: {self.done:,}/{self.total:,} {self.unit} after {elapsed:.0f} s, about {left:.0f} s left",
              file=self.stream, flush=True)
        self.next_line = now + self.every_s

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
