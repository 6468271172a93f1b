"""Benchmark: geometry, modularity permutation test and spectra for one checkpoint of a 4096-neuron layer.

    .venv/bin/python tests/bench_geometry.py [--n-null 100] [--top-k K] [--workers 0]

Pythia-410M-shaped last layer: 4096 neurons, d_model 1024, 512 rare-target samples (of 768),
plateau of 70 neurons (1.7 %), five random controls and the top-boost / top-suppress groups of
its size (as the neuron_groups view draws them; `--top-k` adds a third group size). Prints wall
and CPU time of each stage; the data are synthetic (timing only). Not collected by pytest (the
file name does not start with test_).
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
from test_geometry import build_warehouse

from rtn.analyses import geometry, group_spectra, modularity
from rtn.analyses.modularity import ModularityConfig
from rtn.ingest.spectra import spectra_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-null", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=None, help="top-group size; default the plateau's (as neuron_groups)")
    parser.add_argument("--neurons", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--plateau", type=int, default=70)
    parser.add_argument("--workers", type=int, default=0, help="null-Louvain processes; 0 = one per core")
    args = parser.parse_args()
    top_k = args.top_k or args.plateau

    rng = np.random.default_rng(0)
    n_samples, n_neurons, d_model = 768, args.neurons, args.d_model
    rare = np.zeros(n_samples, dtype=bool)
    rare[rng.choice(n_samples, 512, replace=False)] = True
    latent = rng.standard_normal((n_samples, 8))
    acts = latent @ rng.standard_normal((8, n_neurons)) * 0.3 + rng.standard_normal((n_samples, n_neurons))
    order = rng.permutation(n_neurons)
    plateau, rest = order[:args.plateau], order[args.plateau:]
    groups = {"plateau": plateau, "top_boost_k": order[:top_k], "top_suppress_k": order[-top_k:]}
    groups |= {f"random_{j}": rng.choice(rest, args.plateau, replace=False) for j in range(1, 6)}
    w_in = rng.standard_t(3.0, (n_neurons, d_model)) / np.sqrt(d_model)
    w_out = rng.standard_normal((n_neurons, d_model)) / np.sqrt(n_neurons)
    start = time.perf_counter()
    con = build_warehouse({1000: acts}, {1000: {k: v.tolist() for k, v in groups.items()}}, rare,
                          {1000: (w_in, w_out)})
    print(f"build synthetic warehouse          {time.perf_counter() - start:6.2f} s  "
          f"({n_neurons} neurons, d_model {d_model}, {rare.sum()} rare samples, plateau {args.plateau})")

    config = ModularityConfig(n_null=args.n_null, workers=args.workers)
    matrices = [("mlp.dense_h_to_4h.weight", 0, w_in), ("mlp.dense_4h_to_h.weight", 0, w_out.T)]
    timings = {}
    for name, run in [
        ("analysis_geometry", lambda: geometry.compute(con, "t")),
        (f"analysis_modularity (n_null {args.n_null})", lambda: modularity.compute(con, "t", config)),
        ("analysis_group_spectra", lambda: group_spectra.compute(con, "t")),
        ("weight_spectra (W_in, W_out)", lambda: spectra_table(matrices)),
    ]:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = run()
        timings[name] = time.perf_counter() - start
        rows = sum(t.height for t in result.values()) if isinstance(result, dict) else result.height
        print(f"{name:34s} {timings[name]:6.2f} s  (CPU {_cpu_seconds() - cpu_start:6.2f} s, {rows} rows)")
    print(f"{'total':34s} {sum(timings.values()):6.2f} s  on {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")


def _cpu_seconds() -> float:
    """Returns CPU seconds used so far by this process and its finished worker processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
