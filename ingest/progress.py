"""Where a checkpoint's ingest spends its time: StageTimer, recorded in checkpoints.stage_seconds."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StageTimer:
    """Collects the wall time of each named stage of a checkpoint's ingest."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)
