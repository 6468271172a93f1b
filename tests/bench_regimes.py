"""Benchmark of the regime views on a generated warehouse: 154 checkpoints x 4096 neurons x 3
token classes of ablation_deltas (a Pythia-410M-shaped last layer over Pythia's checkpoints).
Not a test (pytest does not collect bench_*.py); the target is regime_summary under 1 s.

    .venv/bin/python tests/bench_regimes.py [--warehouse PATH] [--repeat 5] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from rtn.warehouse import reading, replace_rows, writing

STEPS, NEURONS, CLASSES = 154, 4096, ("rare", "common", "all")
QUERIES = {
    "regime_summary": "select * from regime_summary",
    "regime_summary, one step": "select * from regime_summary where run_id = 'bench' and step = 77",
    "regime_dynamics": "select * from regime_dynamics",
    "neuron_groups": "select * from neuron_groups",
    "influence_regimes (count)": "select regime, count(*) from influence_regimes group by regime",
    "app_influence_curves, one step": "select * from app_influence_curves where run_id = 'bench' and step = 77 "
                                      "and layer = 23",
}


def generated_deltas(seed: int = 0) -> pl.DataFrame:
    """Returns ablation_deltas rows: per step and class a sorted-influence curve with a power law
    (slope -1) and a decay from rank 3000, plus for rare targets a head lifted 1 nat above the power
    law growing over the steps (the papers' plateau, up to 70 neurons); log-normal noise per neuron,
    70 % of the neurons boost, the rest suppress."""
    rng = np.random.default_rng(seed)
    x = np.log(np.arange(1, NEURONS + 1))
    frames = []
    for step in range(STEPS):
        for token_class in CLASSES:
            plateau = int(70 * step / (STEPS - 1)) if token_class == "rare" else 0
            y = -2.0 - x - 5.0 * np.clip(x - np.log(3000), 0, None) + np.where(np.arange(NEURONS) < plateau, 1.0, 0.0)
            y = y + rng.normal(0.0, 0.2, NEURONS)
            signs = np.where(rng.random(NEURONS) < 0.7, 1.0, -1.0)
            frames.append(pl.DataFrame({
                "run_id": "bench", "step": step, "layer": 23, "neuron": rng.permutation(NEURONS).astype(np.int32),
                "token_class": token_class, "delta_loss": signs * np.exp(y), "std_err": 0.0, "n": 8192,
            }))
    return pl.concat(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, help="existing or new warehouse (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's, one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.warehouse or Path(tmp) / "bench.duckdb"
        start = time.perf_counter()
        with writing(path) as con:
            if con.sql("select count(*) from ablation_deltas where run_id = 'bench'").fetchall()[0][0] == 0:
                replace_rows(con, "ablation_deltas", generated_deltas(), run_id="bench")
            rows = con.sql("select count(*) from ablation_deltas where run_id = 'bench'").fetchall()[0][0]
        print(f"warehouse {path}: {rows:,} ablation_deltas rows ready in {time.perf_counter() - start:.1f} s")
        with reading(path) as con:
            if args.threads:
                con.execute(f"set threads = {args.threads}")
            threads = con.sql("select current_setting('threads')").fetchall()[0][0]
            print(f"DuckDB threads: {threads} (machine cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f})")
            # CPU time (all threads) next to wall time: on a shared machine, wall time with several
            # DuckDB threads mostly measures waiting for the other processes
            for name, query in QUERIES.items():
                walls, cpus, n = [], [], 0
                for _ in range(args.repeat):
                    wall, cpu = time.perf_counter(), time.process_time()
                    n = len(con.sql(query).fetchall())
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                print(f"{name:28s} {n:7,} rows   wall best {min(walls):6.3f} s  median {statistics.median(walls):6.3f} s"
                      f"   cpu median {statistics.median(cpus):6.3f} s")


if __name__ == "__main__":
    main()
