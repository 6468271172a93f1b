"""`rtn ingest`: validate every source first, then write one transaction per checkpoint.

A checkpoint already marked done is skipped, so re-running is a no-op and an interrupted
ingest resumes at the first missing checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

import rtn
from rtn import warehouse
from rtn.errors import RtnError
from rtn.ingest import adapters, corpus, hashing, sources
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
    if config.n_samples < 1:
        raise RtnError(f"--samples {config.n_samples} is not positive: keep at least 1 position")
    if config.max_documents < 1:
        raise RtnError(f"--max-documents {config.max_documents} is not positive: read at least 1 document")


def _existing(path: Path, run_id: str):
    """Returns (stored run config or None, steps already done) of a run in the warehouse."""
    if not path.exists():
        return None, set()
    with warehouse.reading(path, wait_s=None, notice=warehouse.notice_on_stderr) as con:
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
    stored = {k: _absolute(v) if k in PATH_SETTINGS else v for k, v in stored.items()}   # runs stored paths as typed
    # a setting newer than the stored run's code is absent from its config: it ran with the default
    defaults = {f.name: f.default for f in dataclasses.fields(IngestConfig)}
    differing = [k for k in wanted if k != "checkpoints" and stored.get(k, defaults.get(k)) != wanted[k]]
    if differing:
        k = differing[0]
        raise RtnError(f"run {config.run_id()!r} already exists with {k}={stored.get(k)!r} (now {wanted[k]!r}); "
                       f"pass --run NEW_NAME")


PATH_SETTINGS = ("model", "checkpoints", "corpus", "tokenizer", "frequencies")


def _absolute(spec: str | None) -> str | None:
    """Returns an existing local path made absolute (symbolic links kept, so names stay), else `spec` unchanged."""
    return os.path.abspath(Path(spec).expanduser()) if spec and Path(spec).expanduser().exists() else spec


def _resolved(config: IngestConfig) -> IngestConfig:
    """Returns `config` with its local paths absolute, so a run resumes from any working directory."""
    keywords = {"final", "all", "synthetic"}     # not paths, whatever the working directory holds
    return dataclasses.replace(config, **{name: _absolute(getattr(config, name)) for name in PATH_SETTINGS
                                          if getattr(config, name) not in keywords})


def _check_checkpoints(refs: list[sources.CheckpointRef], seq_len: int):
    """Returns (model config, adapter) of the first checkpoint after checking every checkpoint's config,
    architecture, shapes, weight files and positions, so bad input is refused before anything is written."""
    first = None
    for ref in refs:
        model_config = sources.load_config(ref)
        adapter = adapters.adapter_for_type(model_config.model_type)
        sources.check_weights(ref, model_config)
        shape = _shape(model_config)
        if first is None:
            first = (model_config, adapter, shape, ref)
        elif shape != first[2]:
            raise RtnError(f"{ref.source} is a {_describe(shape)} model, unlike the run's first checkpoint "
                           f"{first[3].source} ({_describe(first[2])})")
        positions = getattr(model_config, "max_position_embeddings", None)
        if positions is not None and seq_len > positions:
            raise RtnError(f"--seq-len {seq_len} is longer than the {positions} positions {ref.source} was built for; "
                           f"pass --seq-len {positions} or less")
    return first[0], first[1]


def _shape(model_config) -> tuple:
    """Returns what every checkpoint of a run must share: architecture and sizes."""
    return (_architecture(model_config), model_config.num_hidden_layers, model_config.hidden_size,
            _d_mlp(model_config), model_config.vocab_size)


def _describe(shape: tuple) -> str:
    architecture, n_layers, d_model, d_mlp, vocab = shape
    return f"{architecture} ({n_layers} layers, d_model {d_model}, d_mlp {d_mlp}, vocabulary {vocab})"


def _d_mlp(model_config) -> int:
    return getattr(model_config, "intermediate_size", None) or getattr(model_config, "n_inner", None) \
        or 4 * model_config.hidden_size


def _run_row(config: IngestConfig, model_config, adapter, layer: int, data: corpus.EvalData,
             ref: sources.CheckpointRef) -> pl.DataFrame:
    weights_format, quantization = sources.weights_format(ref)
    rank_min, rank_max = config.rare_rank_band() or (None, None)
    return pl.DataFrame([{
        "run_id": config.run_id(), "model": config.model, "family": adapter.family,
        "weights_format": weights_format, "quantization": quantization,
        "architecture": _architecture(model_config),
        "n_layers": model_config.num_hidden_layers, "d_model": model_config.hidden_size, "d_mlp": _d_mlp(model_config),
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


@dataclass
class Plan:
    """A validated ingest, ready to run: what every executor (here, Ray, shards) shares."""
    config: IngestConfig
    run_id: str
    refs: list[sources.CheckpointRef]        # every checkpoint of the run, in step order
    todo: list[sources.CheckpointRef]        # those not ingested yet
    adapter: adapters.Adapter
    layer: int
    device: torch.device
    data: corpus.EvalData | None = None      # the evaluation corpus (None when nothing is left to do)
    run_rows: dict | None = None             # run-level rows to write with the first checkpoint (None: stored already)


def _warehouse_progress(path: Path):
    return lambda run_id: _existing(path, run_id)


def plan_ingest(config: IngestConfig, path: Path, log=print, progress=None) -> Plan:
    """Returns the validated plan of an ingest; `progress(run_id)` gives (stored config, done steps),
    by default from the warehouse at `path` (which must then be writable)."""
    config = _resolved(config)
    _validate(config)
    if progress is None:
        warehouse.check_writable(path)
        progress = _warehouse_progress(path)
    device = sources.pick_device(config.device)
    corpus_spec = config.corpus
    if config.corpus == "synthetic":
        from rtn.demo.synthetic import ensure_demo
        corpus_spec = str(ensure_demo().corpus_path)
    if sources.is_local(corpus_spec):
        sources.corpus_files(corpus_spec)   # a missing corpus is named before anything else is loaded
    refs = sources.resolve_checkpoints(config.model, config.checkpoints)
    model_config, adapter = _check_checkpoints(refs, config.seq_len)
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
    stored, done = progress(run_id)
    _check_same_run(stored, config)
    plan = Plan(config, run_id, refs, [ref for ref in refs if ref.step not in done], adapter, layer, device)
    if not plan.todo:
        return plan
    plan.data = corpus.prepare(config, corpus_spec, tokenizer, model_config.vocab_size)
    log(_class_counts_line(run_id, plan.data, config.min_rare))
    plan.run_rows = None if stored else {
        "runs": _run_row(config, model_config, adapter, layer, plan.data, refs[0]), "corpora": plan.data.corpus_row,
        "token_frequencies": plan.data.frequencies, "eval_tokens": plan.data.eval_tokens(),
        "activation_sample_positions": plan.data.sample_positions(),
    }
    return plan


@dataclass
class CheckpointResult:
    """One checkpoint's per-step tables (without run_id and step), its weight hashes and stage times."""
    step: int
    tables: dict[str, pl.DataFrame]
    layer_sha256: str
    weights_sha256: str
    timer: StageTimer


def checkpoint_tables(ref: sources.CheckpointRef, data: corpus.EvalData, config: IngestConfig,
                      adapter: adapters.Adapter, layer: int, device: torch.device) -> CheckpointResult:
    """Returns the extracted tables of one checkpoint: loads it, hashes its weights, runs every extractor."""
    timer = StageTimer(f"ingest {config.run_id()} step {ref.step}")   # one line per stage where tqdm is silent
    with timer("load"):
        model = sources.load_model(ref, torch.float32, torch.device("cpu"))
        if adapters.adapter_for(model) != adapter:
            raise RtnError(f"{ref.source} is a {model.config.model_type} model, unlike the run's first checkpoint")
    with timer("hash"):     # on the CPU copy just loaded, before it moves to the device
        layer_sha256, weights_sha256 = hashing.weight_hashes(model, layer)
    model = model.to(device)
    tables = extract_checkpoint(model, data, config, timer, step=ref.step)
    return CheckpointResult(ref.step, tables, layer_sha256, weights_sha256, timer)


def checkpoint_row(run_id: str, ref: sources.CheckpointRef, result: CheckpointResult) -> pl.DataFrame:
    """Returns the `checkpoints` row that marks a step done."""
    return pl.DataFrame([{
        "run_id": run_id, "step": ref.step, "revision": ref.revision, "source": ref.source,
        "tokens_seen": ref.tokens_seen, "ingested_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "status": "done", "stage_seconds": json.dumps(result.timer.seconds),
        "weights_sha256": result.weights_sha256, "layer_sha256": result.layer_sha256}],
        schema_overrides={"tokens_seen": pl.Int64, "revision": pl.String})


def write_step(con, run_id: str, step: int, tables: dict[str, pl.DataFrame]) -> None:
    """Replaces one step's rows of every per-step table (not `checkpoints`) inside the caller's transaction."""
    for table in STEP_TABLES:
        rows = tables.get(table, pl.DataFrame())
        if rows.height:
            rows = rows.with_columns(pl.lit(run_id).alias("run_id"), pl.lit(step).alias("step"))
        warehouse.replace_rows(con, table, rows, run_id=run_id, step=step)


def duplicate_line(con, run_id: str, step: int) -> str | None:
    """Returns a one-line warning when a step's weights equal another step's of its run, else None."""
    row = con.execute("select duplicate_of, same_layer_as from duplicate_checkpoints where run_id = ? and step = ?",
                      [run_id, step]).fetchone()
    if row is None:
        return None
    what, other = ("weights", row[0]) if row[0] is not None else ("studied layer's weights", row[1])
    return (f"warning: run {run_id} step {step} has the same {what} as step {other}: the checkpoint may not be "
            f"what its name claims (see the duplicate_checkpoints view)")


def commit_checkpoint(path: Path, plan: Plan, ref: sources.CheckpointRef, result: CheckpointResult, log=print) -> None:
    """Writes one checkpoint's result in one transaction (the run's rows with the first), `checkpoints` last."""
    with warehouse.writing(path, wait_s=None, notice=warehouse.notice_on_stderr) as con:
        write_started = time.perf_counter()   # the row that records the stages is written inside this
        _claim_run(con, plan.config, plan.run_rows)
        write_step(con, plan.run_id, ref.step, result.tables)
        result.timer.record("write", time.perf_counter() - write_started)
        warehouse.replace_rows(con, "checkpoints", checkpoint_row(plan.run_id, ref, result),
                               run_id=plan.run_id, step=ref.step)
        warning = duplicate_line(con, plan.run_id, ref.step)
    plan.run_rows = None
    if warning:
        log(warning)


def ingest(config: IngestConfig, path: Path, log=print) -> dict:
    """Ingests every checkpoint of `config` into the warehouse at `path`; returns a summary."""
    path = Path(path)
    plan = plan_ingest(config, path, log)
    if not plan.todo:
        log(f"run {plan.run_id}: all {len(plan.refs)} checkpoints already ingested; nothing to do")
        return {"run_id": plan.run_id, "ingested": 0, "skipped": len(plan.refs)}
    started = time.perf_counter()
    for ref in tqdm(plan.todo, desc=f"ingest {plan.run_id}", unit="ckpt", file=sys.stderr, disable=None):
        result = checkpoint_tables(ref, plan.data, plan.config, plan.adapter, plan.layer, plan.device)
        commit_checkpoint(path, plan, ref, result, log)
    return _summary(plan, started, path, log)


def _summary(plan: Plan, started: float, where, log) -> dict:
    elapsed = time.perf_counter() - started
    skipped = len(plan.refs) - len(plan.todo)
    log(f"run {plan.run_id}: ingested {len(plan.todo)} checkpoint(s) in {elapsed:.1f} s "
        f"({plan.data.input_ids.numel()} positions, skipped {skipped} already done) into {where}")
    return {"run_id": plan.run_id, "ingested": len(plan.todo), "skipped": skipped, "seconds": elapsed}


def _tokenizer_source(config: IngestConfig, refs) -> str:
    """Returns where the model's tokenizer lives: the checkpoint folder, or the folder holding it."""
    last = Path(refs[-1].source)
    if not sources.is_local(refs[-1].source):
        return refs[-1].source
    for candidate in (last, last.parent, Path(config.model)):
        if (candidate / "tokenizer_config.json").exists() or (candidate / "tokenizer.json").exists():
            return str(candidate)
    raise RtnError(f"no tokenizer found in {last} or {last.parent}; pass --tokenizer PATH")


def _claim_run(con, config: IngestConfig, rows: dict[str, pl.DataFrame] | None) -> None:
    """Writes the run's rows unless the warehouse holds the run already, checked inside the write transaction: an
    ingest of the same run with other settings that committed since this one started is refused, nothing written."""
    stored = con.execute("select config from runs where run_id = ?", [config.run_id()]).fetchone()
    _check_same_run(json.loads(stored[0]) if stored else None, config)
    if stored is None:
        if rows is None:
            raise RtnError(f"run {config.run_id()} left the warehouse while this ingest ran; run it again")
        write_run(con, config.run_id(), rows)


def write_run(con, run_id: str, rows: dict[str, pl.DataFrame]) -> None:
    """Replaces a run's own rows (runs, its corpus, eval tokens, sample positions) inside the caller's transaction."""
    corpus_id = rows["corpora"]["corpus_id"][0]
    warehouse.replace_rows(con, "corpora", rows["corpora"], corpus_id=corpus_id)
    warehouse.replace_rows(con, "token_frequencies", rows["token_frequencies"], corpus_id=corpus_id)
    warehouse.replace_rows(con, "runs", rows["runs"], run_id=run_id)
    for table in RUN_TABLES:
        warehouse.replace_rows(con, table, rows[table].with_columns(pl.lit(run_id).alias("run_id")), run_id=run_id)
