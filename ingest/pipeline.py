"""`rtn ingest`: validate every source first, then write one transaction per checkpoint.

A checkpoint already marked done is skipped, so re-running is a no-op and an interrupted
ingest resumes at the first missing checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

import rtn
from rtn import warehouse
from rtn.errors import RtnError
from rtn.ingest import adapters, corpus, sources
from rtn.ingest.config import IngestConfig
from rtn.ingest.extract import extract_checkpoint
from rtn.ingest.heads import check_head_layers
from rtn.ingest.progress import StageTimer

SUGGESTED_MIN_RARE = 1024     # rare-target predictions for a rare-class ΔLoss whose standard error is small against it
RUN_TABLES = ("eval_tokens", "activation_sample_positions")
STEP_TABLES = ("neuron_stats", "activation_samples", "ablation_deltas", "eval_losses", "neuron_weights",
               "weight_spectra", "head_ablations", "group_ablation_deltas", "neuron_token_effects", "attribution_deltas")


def _validate(config: IngestConfig) -> None:
    if config.tokens < config.seq_len or config.seq_len < corpus.FIRST_PREDICTED_POS + 2:
        raise RtnError(f"--tokens {config.tokens} must be at least --seq-len {config.seq_len}, and --seq-len at least 5")
    if not 0 < config.rare_threshold < 1:
        raise RtnError(f"--rare-threshold {config.rare_threshold} must lie strictly between 0 and 1")
    if config.precision not in ("auto", "float32", "float64"):
        raise RtnError(f"--precision {config.precision} is not auto, float32 or float64")
    if config.frequencies and not Path(config.frequencies).expanduser().is_file():
        raise RtnError(f"--frequencies {config.frequencies} does not exist")
    try:
        config.rare_rank_band()
    except ValueError as err:
        raise RtnError(f"--rare-ranks {config.rare_ranks} is not MIN:MAX with 1 <= MIN <= MAX (Zipf ranks)") from err
    if config.min_rare < 0:
        raise RtnError(f"--min-rare {config.min_rare} must be 0 or more")
    if config.class_by not in ("target", "input"):
        raise RtnError(f"--class-by {config.class_by} is not target or input")


def _existing(path: Path, run_id: str):
    """Returns (stored run config or None, steps already done) of a run in the warehouse."""
    if not path.exists():
        return None, set()
    with warehouse.reading(path) as con:
        tables = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
        if "runs" not in tables:
            return None, set()
        row = con.execute("select config from runs where run_id = ?", [run_id]).fetchone()
        done = set(warehouse.done_steps(con, run_id))
    return (json.loads(row[0]) if row else None), done


def _check_same_run(stored: dict | None, config: IngestConfig) -> None:
    if stored is None:
        return
    wanted = config.content()
    # a setting newer than the stored run's code is absent from its config: it ran with the default
    defaults = {f.name: f.default for f in dataclasses.fields(IngestConfig)}
    differing = [k for k in wanted if k != "checkpoints" and stored.get(k, defaults.get(k)) != wanted[k]]
    if differing:
        k = differing[0]
        raise RtnError(f"run {config.run_id()!r} already exists with {k}={stored.get(k)!r} (now {wanted[k]!r}); "
                       f"pass --run NEW_NAME")


def _run_row(config: IngestConfig, model_config, adapter, layer: int, data: corpus.EvalData,
             ref: sources.CheckpointRef) -> pl.DataFrame:
    weights_format, quantization = sources.weights_format(ref)
    rank_min, rank_max = config.rare_rank_band() or (None, None)
    d_mlp = getattr(model_config, "intermediate_size", None) or getattr(model_config, "n_inner", None) \
        or 4 * model_config.hidden_size
    return pl.DataFrame([{
        "run_id": config.run_id(), "model": config.model, "family": adapter.family,
        "weights_format": weights_format, "quantization": quantization,
        "architecture": _architecture(model_config),
        "n_layers": model_config.num_hidden_layers, "d_model": model_config.hidden_size, "d_mlp": d_mlp,
        "vocab_size": model_config.vocab_size, "corpus_id": data.corpus_row["corpus_id"][0],
        "n_eval_tokens": data.input_ids.numel(), "seq_len": config.seq_len, "layer": layer, "seed": config.seed,
        "rare_threshold": config.rare_threshold, "exclude_below_elbow": config.exclude_below_elbow,
        "rare_rank_min": rank_min, "rare_rank_max": rank_max, "class_by": config.class_by, "config": config.to_json(),
        "code_version": rtn.__version__, "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }])


def _architecture(model_config) -> str:
    """Returns the model class name; a GGUF's config does not list it, so the causal-LM class of its type stands in."""
    if model_config.architectures:
        return model_config.architectures[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_config.model_type, type(model_config).__name__)


def _class_counts_line(run_id: str, data: corpus.EvalData, min_rare: int) -> str:
    """Returns the line that says how many predictions each class holds, and how to get more rare ones."""
    counts = data.class_counts()
    line = (f"run {run_id}: predictions per class: rare {counts['rare']:,}, common {counts['common']:,}, "
            f"all {counts['all']:,} ({data.input_ids.shape[0] - data.n_chosen} sequences in corpus order"
            + (f", {data.n_chosen} more chosen for their rare targets" if data.n_chosen else "") + ")")
    if counts["rare"] < min_rare:
        return line + f"; fewer rare than --min-rare {min_rare}: the corpus holds no more"
    if counts["rare"] < SUGGESTED_MIN_RARE and not min_rare:
        return line + f"; few rare: --min-rare {SUGGESTED_MIN_RARE} adds windows rich in rare targets"
    return line


def ingest(config: IngestConfig, path: Path, log=print) -> dict:
    """Ingests every checkpoint of `config` into the warehouse at `path`; returns a summary."""
    path = Path(path)
    _validate(config)
    warehouse.check_writable(path)
    device = sources.pick_device(config.device)
    corpus_spec = config.corpus
    if config.corpus == "synthetic":
        from rtn.demo.synthetic import ensure_demo
        corpus_spec = str(ensure_demo().corpus_path)
    if sources.is_local(corpus_spec):
        sources.corpus_files(corpus_spec)   # a missing corpus is named before anything else is loaded
    refs = sources.resolve_checkpoints(config.model, config.checkpoints)
    model_config = sources.load_config(refs[0])
    adapter = adapters.adapter_for_type(model_config.model_type)
    n_layers = model_config.num_hidden_layers
    layer = adapters.check_layer(config.layer, n_layers)
    try:
        config.studied_layers(n_layers)
    except ValueError as err:
        raise RtnError(f"--layers {config.layers} is not 'all' or a comma list of layers between "
                       f"-{n_layers} and {n_layers - 1}") from err
    check_head_layers(n_layers, config.head_layers)
    if config.tokenizer:
        tokenizer = sources.load_tokenizer(config.tokenizer)
    elif refs[-1].gguf_file:
        tokenizer = sources.load_tokenizer(refs[-1].source, gguf_file=refs[-1].gguf_file)
    else:
        tokenizer = sources.load_tokenizer(_tokenizer_source(config, refs), refs[-1].revision)
    if len(tokenizer) > model_config.vocab_size:
        raise RtnError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                       f"{model_config.vocab_size}: they do not belong together")
    run_id = config.run_id()
    stored, done = _existing(path, run_id)
    _check_same_run(stored, config)
    todo = [ref for ref in refs if ref.step not in done]
    if not todo:
        log(f"run {run_id}: all {len(refs)} checkpoints already ingested; nothing to do")
        return {"run_id": run_id, "ingested": 0, "skipped": len(refs)}

    data = corpus.prepare(config, corpus_spec, tokenizer, model_config.vocab_size)
    log(_class_counts_line(run_id, data, config.min_rare))
    run_rows = None if stored else {
        "runs": _run_row(config, model_config, adapter, layer, data, refs[0]), "corpora": data.corpus_row,
        "token_frequencies": data.frequencies, "eval_tokens": data.eval_tokens(),
        "activation_sample_positions": data.sample_positions(),
    }
    started = time.perf_counter()
    for ref in tqdm(todo, desc=f"ingest {run_id}", unit="ckpt", file=sys.stderr, disable=None):
        timer = StageTimer(f"ingest {run_id} step {ref.step}")   # one line per stage where tqdm is silent
        with timer("load"):
            model = sources.load_model(ref, torch.float32, device)
            if adapters.adapter_for(model) != adapter:
                raise RtnError(f"{ref.source} is a {model.config.model_type} model, unlike the run's first checkpoint")
        tables = extract_checkpoint(model, data, config, timer, step=ref.step)
        with warehouse.writing(path) as con:
            write_started = time.perf_counter()   # the row that records the stages is written inside this
            if run_rows is not None:
                _write_run(con, run_id, run_rows)
                run_rows = None
            for table in STEP_TABLES:
                rows = tables.get(table, pl.DataFrame())
                if rows.height:
                    rows = rows.with_columns(pl.lit(run_id).alias("run_id"), pl.lit(ref.step).alias("step"))
                warehouse.replace_rows(con, table, rows, run_id=run_id, step=ref.step)
            timer.record("write", time.perf_counter() - write_started)
            warehouse.replace_rows(con, "checkpoints", pl.DataFrame([{
                "run_id": run_id, "step": ref.step, "revision": ref.revision, "source": ref.source,
                "tokens_seen": ref.tokens_seen, "ingested_at": datetime.now(timezone.utc).replace(tzinfo=None),
                "status": "done", "stage_seconds": json.dumps(timer.seconds)}]), run_id=run_id, step=ref.step)
        del model
    elapsed = time.perf_counter() - started
    log(f"run {run_id}: ingested {len(todo)} checkpoint(s) in {elapsed:.1f} s "
        f"({data.input_ids.numel()} positions, skipped {len(refs) - len(todo)} already done) into {path}")
    return {"run_id": run_id, "ingested": len(todo), "skipped": len(refs) - len(todo), "seconds": elapsed}


def _tokenizer_source(config: IngestConfig, refs) -> str:
    """Returns where the model's tokenizer lives: the checkpoint folder, or the folder holding it."""
    last = Path(refs[-1].source)
    if not sources.is_local(refs[-1].source):
        return refs[-1].source
    for candidate in (last, last.parent, Path(config.model)):
        if (candidate / "tokenizer_config.json").exists() or (candidate / "tokenizer.json").exists():
            return str(candidate)
    raise RtnError(f"no tokenizer found in {last} or {last.parent}; pass --tokenizer PATH")


def _write_run(con, run_id: str, rows: dict[str, pl.DataFrame]) -> None:
    corpus_id = rows["corpora"]["corpus_id"][0]
    warehouse.replace_rows(con, "corpora", rows["corpora"], corpus_id=corpus_id)
    warehouse.replace_rows(con, "token_frequencies", rows["token_frequencies"], corpus_id=corpus_id)
    warehouse.replace_rows(con, "runs", rows["runs"], run_id=run_id)
    for table in RUN_TABLES:
        warehouse.replace_rows(con, table, rows[table].with_columns(pl.lit(run_id).alias("run_id")), run_id=run_id)
