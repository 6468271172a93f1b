"""`rtn demo`: the embedded default end to end, offline — corpus, tiny model, ingest, views, analyses.

`rtn demo --real`: the same with a real trained model and real text (rtn/demo/real.py says where they come from).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rtn import warehouse
from rtn.errors import RtnError

DEMO_RUN = "demo"
PLANTED_RUN = "planted"  # the trained model with specialists planted by hand (rtn/demo/planted.py)
LAYERS_RUN = "demo-layers"  # the demo's first and last checkpoints with every MLP layer ablated exactly
REAL_RUN = "smollm2-sotu"
SUMMARY_TABLES = ("checkpoints", "token_frequencies", "eval_tokens", "neuron_stats", "activation_samples",
                  "ablation_deltas", "neuron_weights", "weight_spectra", "head_ablations", "group_ablation_deltas")


def demo_config(assets):
    """Returns the IngestConfig the demo uses for the synthetic model's checkpoints."""
    from rtn.ingest.config import IngestConfig
    return IngestConfig(model=str(assets.checkpoint_dir), checkpoints="all", corpus=str(assets.corpus_path),
                        run=DEMO_RUN, tokens=4096, seq_len=assets.config.seq_len, n_samples=512)


def layers_config(assets):
    """Returns the IngestConfig of the per-layer run: the demo's settings, its first and last checkpoints, every layer
    exact (an earlier layer re-runs the blocks after it per neuron: two checkpoints, not thirteen)."""
    import dataclasses

    from rtn.ingest.sources import resolve_checkpoints
    refs = resolve_checkpoints(str(assets.checkpoint_dir), "all")   # step order, as the demo run ingests them
    return dataclasses.replace(demo_config(assets), run=LAYERS_RUN, checkpoints=f"{refs[0].revision},{refs[-1].revision}",
                               layers="all")


def planted_config(planted):
    """Returns the IngestConfig of the planted run: its one checkpoint over its own corpus, as the demo's settings."""
    from rtn.ingest.config import IngestConfig
    return IngestConfig(model=str(planted.checkpoint_dir), checkpoints="all", corpus=str(planted.corpus_path),
                        run=PLANTED_RUN, tokens=planted.design["config"]["tokens"],
                        seq_len=planted.design["config"]["seq_len"], n_samples=512)


def run_demo(path: Path, log=print) -> None:
    """Builds (or completes) the demo warehouse at `path` and prints what to do next."""
    from rtn.demo.planted import ensure_planted
    from rtn.demo.synthetic import ensure_demo
    from rtn.ingest.pipeline import ingest

    started = time.perf_counter()
    warehouse.check_writable(Path(path))
    assets = ensure_demo()
    ingest(demo_config(assets), path, log=log)
    ingest(planted_config(ensure_planted(assets)), path, log=log)
    ingest(layers_config(assets), path, log=log)
    for run in (DEMO_RUN, PLANTED_RUN, LAYERS_RUN):
        _analyze(path, run)
    log(summary(path))
    log(f"demo ready in {time.perf_counter() - started:.0f} s. Next:\n"
        f"  rtn query \"select step, token_class, plateau_verdict, plateau_size, plateau_lift, lift_threshold "
        f"from regime_summary where run_id = 'demo' and sign = 'boost' order by step, token_class\"\n"
        f"  rtn app                      # explore in the browser\n"
        f"  python -c \"from rtn.warehouse import read; print(read('neuron_influence'))\"")


def _analyze(path: Path, run: str) -> None:
    # A fresh process without torch may fork workers for the permutation tests (analyses/modularity.py).
    analyze = [sys.executable, "-m", "rtn.cli", "analyze", "--run", run, "--stale-only", "--warehouse", str(path)]
    if subprocess.run(analyze, check=False).returncode != 0:
        raise RtnError(f"the demo's analyses failed; see above, then run: {' '.join(analyze[2:])}")


def real_config(model: Path, corpus: Path, tokens: int = 4096, min_rare: int = 1024, **overrides):
    """Returns the IngestConfig of the real demo: SmolLM2 on the addresses, one checkpoint."""
    from rtn.ingest.config import IngestConfig
    settings = {"tokens": tokens, "seq_len": 128, "min_rare": min_rare, "n_samples": 512,
                # float32 ablation arithmetic on CPU too (the default there is float64): half the time, and
                # tests/acceptance/test_real_model.py holds it to 1e-5 of whole-model float32 re-runs
                "precision": "float32",
                # the last attention layer's 9 heads and the whole layer, both methods: 20 re-runs of one block
                # and the 49k-row unembedding (~50 s on 2 cores); --head-layers takes more
                "head_layers": 1}
    return IngestConfig(model=str(model), corpus=str(corpus), run=REAL_RUN, **(settings | overrides))


def run_real_demo(path: Path, tokens: int = 4096, min_rare: int = 1024, use_hub: bool = True, log=print,
                  **overrides) -> None:
    """Builds the real-model warehouse at `path` (SmolLM2-135M on State of the Union addresses) and prints a summary."""
    from rtn.demo.real import ensure_real_sources, loadable_model
    from rtn.ingest.pipeline import ingest

    started = time.perf_counter()
    warehouse.check_writable(Path(path))
    sources = ensure_real_sources(use_hub=use_hub, log=log)
    log(f"model {sources.model} (from {sources.origin}); corpus {sources.corpus}")
    model = loadable_model(sources.model, log=log)
    ingest(real_config(model, sources.corpus, tokens, min_rare, **overrides), path, log=log)
    _analyze(path, REAL_RUN)
    log(real_summary(path))
    log(f"real demo ready in {time.perf_counter() - started:.0f} s. Next:\n"
        f"  rtn query \"select * from regime_summary where run_id = '{REAL_RUN}'\" --warehouse {path}\n"
        f"  rtn app --warehouse {path}")


REAL_SUMMARY_QUERIES = {
    "clean loss per class (nats)":
        "select token_class, n, round(mean_loss, 3) as mean_loss from eval_losses where run_id = ? order by token_class",
    "regimes of the sorted influence curves (boost)":
        "select token_class, plateau_verdict, head_size, round(power_law_slope, 2) as slope, "
        "round(plateau_lift, 2) as lift, round(lift_threshold, 2) as threshold, flattened_head, "
        "paper_plateau_size from regime_summary where run_id = ? and sign = 'boost' order by token_class",
    "most influential neurons on rare targets (mean ΔLoss ± s.e.)":
        "select r.neuron, round(r.delta_loss, 5) as rare, round(r.std_err, 5) as rare_se, "
        "round(c.delta_loss, 5) as common from ablation_deltas as r join ablation_deltas as c "
        "using (run_id, step, layer, neuron) where run_id = ? and r.token_class = 'rare' "
        "and c.token_class = 'common' order by abs(r.delta_loss) desc limit 5",
    # the plateau group is empty where the verdict finds no plateau: top_boost_k is shown beside it
    "Hill alpha of W_out rows, plateau and top boosting neurons vs random (lower = heavier tail)":
        "select group_name, round(alpha_hill, 2) as alpha_hill, round(random_alpha_hill, 2) as random_alpha_hill "
        "from analysis_group_spectra where run_id = ? and matrix = 'w_out' "
        "and group_name in ('plateau', 'top_boost_k') order by group_name",
    "modularity against 100 random groups":
        "select group_name, round(q, 3) as q, round(null_mean, 3) as null_mean, round(p_value, 3) as p_value "
        "from analysis_modularity where run_id = ? and group_name in ('plateau', 'top_boost_k', 'random_1') "
        "order by group_name",
    "one head vs its whole attention layer (rare targets)":
        "select layer as attn_layer, method, round(median_head_to_layer, 3) as median_head_vs_layer "
        "from head_effects where run_id = ? and token_class = 'rare' order by attn_layer, method",
}


def real_summary(path: Path) -> str:
    """Returns what a researcher looks at first in the real run: classes, regimes, top neurons, spectra, modularity, heads."""
    import polars as pl
    lines = [f"warehouse {path}, run {REAL_RUN}:"]
    with warehouse.reading(Path(path)) as con, pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                                                         tbl_formatting="ASCII_MARKDOWN", tbl_width_chars=120):
        for title, query in REAL_SUMMARY_QUERIES.items():
            lines += [f"\n{title}:", str(warehouse.frame(con, query, [REAL_RUN]))]
    return "\n".join(lines)


def summary(path: Path) -> str:
    """Returns a few lines: rows per table and the rare-token plateau at the last step."""
    lines = [f"warehouse {path}:"]
    with warehouse.reading(Path(path)) as con:
        counts = [f"{t} {con.execute(f'select count(*) from {t} where {_run_filter(t)}').fetchone()[0]:,}"
                  for t in SUMMARY_TABLES]
        lines.append("  rows: " + ", ".join(counts))
        last = con.execute("select plateau_size, plateau_fraction, plateau_verdict, step, plateau_lift, "
                           "lift_threshold from regime_summary "
                           "where run_id = ? and token_class = 'rare' and sign = 'boost' order by step desc limit 1",
                           [DEMO_RUN]).fetchone()
        planted = con.execute("select plateau_verdict, head_size, plateau_lift, lift_threshold from regime_summary "
                              "where run_id = ? and token_class = 'rare' and sign = 'boost'", [PLANTED_RUN]).fetchone()
        layers = con.execute("select step, layer, plateau_verdict_rare, plateau_lift_rare, attribution_spearman_rare "
                             "from layer_comparison where run_id = ? order by step, layer", [LAYERS_RUN]).fetchall()
    if last and last[2] == "plateau":
        lines.append(f"  rare-token boost curve at step {last[3]}: a plateau of {last[0]} neurons "
                     f"({100 * last[1]:.1f} % of the layer), {last[4]:+.2f} nats above the power law")
    elif last:
        lift = "" if last[4] is None else f" (head lift {last[4]:+.2f} nats, threshold {last[5]:.2f})"
        lines.append(f"  rare-token boost curve at step {last[3]}: {last[2].replace('_', ' ')}{lift}; "
                     "the plateau group is empty, analyses compare top_boost_k and random groups only")
    if planted:
        lines.append(f"  run '{PLANTED_RUN}' (specialists planted by hand): rare-token boost verdict {planted[0]}, "
                     f"head of {planted[1]} neurons, lift {planted[2] or 0:+.2f} nats against a threshold of "
                     f"{planted[3] or 0:.2f}")
    for step, layer, verdict, lift, rho in layers:
        lines.append(f"  run '{LAYERS_RUN}' step {step} MLP layer {layer}: rare-token boost verdict {verdict}, "
                     f"head lift {lift or 0:+.2f} nats; attribution screen vs exact, Spearman ρ (rare) "
                     + ("n/a" if rho is None else f"{rho:.3f}"))
    return "\n".join(lines)


def _run_filter(table: str) -> str:
    return "true" if table == "token_frequencies" else f"run_id = '{DEMO_RUN}'"
