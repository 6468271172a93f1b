"""`rtn bench`: how fast, and how exact, rtn's ablation is against the slow paths; where an ingest spends its time.

    rtn bench --shape 70m --tokens 1024 --device cpu        # rtn/bench/ablation.py
    rtn bench --shape 70m --layer 2 --device cpu            # rtn/bench/layer.py: an earlier layer, re-run
    rtn bench --save-family DIR --shape 410m                  # rtn/bench/profile.py
    rtn bench --profile-ingest DIR --device cuda
"""
from __future__ import annotations

import json
from dataclasses import asdict


def run_bench(args) -> None:
    """`rtn bench`: prints the report (or one JSON object with --json); --profile-ingest and --save-family branch off."""
    if getattr(args, "save_family", None) or getattr(args, "profile_ingest", None):
        from rtn.bench import profile
        profile.run_profile(args)
        return
    from rtn.bench.ablation import BenchConfig, bench, format_report
    config = BenchConfig(shape=args.shape, tokens=args.tokens, device=args.device, sample_neurons=args.sample_neurons)
    if getattr(args, "layer", None) is not None:
        from rtn.bench.layer import bench_layer, format_layer_report
        result = bench_layer(config, args.layer)
        report = format_layer_report
    else:
        result, report = bench(config), format_report
    result["config"] = asdict(config)
    print(json.dumps(result) if args.json else report(result))
