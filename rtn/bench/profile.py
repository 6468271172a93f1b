"""Where a whole ingest spends its time, stage by stage, and a random checkpoint family to measure it on.

    rtn bench --save-family /data/fam410 --shape 410m --family-size 8      # 8 random checkpoints + corpus + tokenizer
    rtn bench --profile-ingest /data/fam410 --device cuda --tokens 4096      # ingest into a temp warehouse, per stage

The ingest records each checkpoint's stage wall times in `checkpoints.stage_seconds` (StageTimer
in ingest/extract.py); this runs `rtn ingest` on a temporary warehouse and prints them as a
table (checkpoint x stage) with totals, so the slowest stage is known.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from rtn.errors import RtnError


def save_random_family(root: Path, shape_name: str, size: int, seed: int = 0, log=print) -> Path:
    """Writes `size` random checkpoints of a bench shape (root/step0, step1, step2, step4, ...), a synthetic
    corpus (root/corpus.jsonl) and its tokenizer (root); returns root."""
    import torch
    from transformers.utils import logging as transformers_logging

    from rtn.demo import synthetic
    from rtn.shapes import SHAPES, random_model
    if shape_name not in SHAPES:
        raise RtnError(f"unknown --shape {shape_name!r} for --save-family: use {', '.join(SHAPES)}")
    if size < 1:
        raise RtnError(f"--family-size {size} must be at least 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    corpus = synthetic.generate_corpus(synthetic.DemoConfig(n_documents=2000, seed=seed))
    synthetic.write_corpus(corpus, root / synthetic.CORPUS_FILE)
    synthetic.train_tokenizer(corpus.documents, root, model_max_length=2048)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint drowns the log
    for k, step in enumerate([0] + [2 ** j for j in range(size - 1)]):   # log-spaced, like Pythia's first steps
        started = time.perf_counter()
        model = random_model(SHAPES[shape_name], device, seed=seed + k)
        model.save_pretrained(root / f"step{step}")
        (root / f"step{step}" / "rtn_checkpoint.json").write_text(json.dumps({"step": step}))
        log(f"saved {root / f'step{step}'} in {time.perf_counter() - started:.1f} s")
        del model
    return root


def stage_table(path: Path, run_id: str) -> list[dict]:
    """Returns [{step, stage: seconds, ...}] of every ingested checkpoint of a run."""
    from rtn import warehouse
    with warehouse.reading(path) as con:
        rows = con.execute("select step, stage_seconds from checkpoints where run_id = ? order by step",
                           [run_id]).fetchall()
    return [{"step": step, **json.loads(stages)} for step, stages in rows]


def format_stages(rows: list[dict], total_s: float) -> str:
    """Returns the checkpoint x stage table with per-stage totals, shares and the slowest stage."""
    stages = list(dict.fromkeys(stage for row in rows for stage in row if stage != "step"))
    totals = {stage: sum(row.get(stage, 0.0) for row in rows) for stage in stages}
    stage_sum = sum(totals.values())
    widths = {stage: max(9, len(stage) + 2) for stage in stages + ["sum"]}
    cells = lambda values: "".join(f"{value:>{widths[stage]}.3f}" for stage, value in values)
    lines = [f"{'step':>8}" + "".join(f"{stage:>{widths[stage]}}" for stage in stages + ["sum"])]
    for row in rows:
        values = [(stage, row.get(stage, 0.0)) for stage in stages]
        lines.append(f"{row['step']:>8}" + cells(values + [("sum", sum(v for _, v in values))]))
    lines.append(f"{'total':>8}" + cells([(stage, totals[stage]) for stage in stages] + [("sum", stage_sum)]))
    lines.append(f"{'share':>8}" + "".join(f"{100 * totals[stage] / max(stage_sum, 1e-12):>{widths[stage] - 1}.1f}%"
                                           for stage in stages))
    slowest = max(totals, key=totals.get)
    lines.append(f"\nslowest stage: {slowest} ({100 * totals[slowest] / max(stage_sum, 1e-12):.0f} % of the "
                 f"{stage_sum:.1f} s in stages); whole ingest {total_s:.1f} s for {len(rows)} checkpoint(s) "
                 f"(the rest: corpus preparation and start-up)")
    return "\n".join(lines)


def profile_ingest(config, log=print) -> dict:
    """Ingests `config` (an IngestConfig) into a temporary warehouse; returns {seconds, rows}."""
    from rtn.ingest.pipeline import ingest
    with tempfile.TemporaryDirectory(prefix="rtn-profile-") as folder:
        path = Path(folder) / "profile.duckdb"
        started = time.perf_counter()
        ingest(config, path, log=lambda message: print(message, file=sys.stderr))
        seconds = time.perf_counter() - started
        rows = stage_table(path, config.run_id())
    return {"seconds": seconds, "checkpoints": rows}


def run_profile(args) -> None:
    """`rtn bench --save-family DIR` and/or `rtn bench --profile-ingest MODEL_DIR`."""
    from rtn.ingest.config import IngestConfig
    if args.save_family:
        save_random_family(Path(args.save_family), args.shape, args.family_size,
                           log=lambda message: print(message, file=sys.stderr))
    model_dir = args.profile_ingest
    if not model_dir:
        return
    corpus = args.corpus or (str(Path(model_dir) / "corpus.jsonl") if (Path(model_dir) / "corpus.jsonl").exists()
                             else "synthetic")
    defaults = IngestConfig(model=model_dir)
    config = IngestConfig(model=model_dir, checkpoints=args.checkpoints, corpus=corpus, run="profile",
                          tokens=args.tokens, seq_len=min(defaults.seq_len, args.tokens), device=args.device,
                          precision=args.precision or defaults.precision)
    result = profile_ingest(config)
    if args.json:
        print(json.dumps({**result, "config": json.loads(config.to_json())}))
    else:
        print(format_stages(result["checkpoints"], result["seconds"]))
