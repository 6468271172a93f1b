"""`rtn demo`: the embedded default end to end, offline — corpus, tiny model, ingest, views, analyses."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rtn import warehouse
from rtn.errors import RtnError

DEMO_RUN = "demo"
PLANTED_RUN = "planted"  # the trained model with specialists planted by hand (rtn/demo/planted.py)
SUMMARY_TABLES = ("checkpoints", "token_frequencies", "eval_tokens", "neuron_stats", "activation_samples",
                  "ablation_deltas", "neuron_weights", "weight_spectra", "head_ablations", "group_ablation_deltas")


def demo_config(assets):
    """Returns the IngestConfig the demo uses for the synthetic model's checkpoints."""
    from rtn.ingest.config import IngestConfig
    return IngestConfig(model=str(assets.checkpoint_dir), checkpoints="all", corpus=str(assets.corpus_path),
                        run=DEMO_RUN, tokens=4096, seq_len=assets.config.seq_len, n_samples=512)


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
    for run in (DEMO_RUN, PLANTED_RUN):
        # A fresh process without torch may fork workers for the permutation tests (analyses/modularity.py).
        analyze = [sys.executable, "-m", "rtn.cli", "analyze", "--run", run, "--stale-only", "--warehouse", str(path)]
        if subprocess.run(analyze, check=False).returncode != 0:
            raise RtnError(f"the demo's analyses failed; see above, then run: {' '.join(analyze[2:])}")
    log(summary(path))
    log(f"demo ready in {time.perf_counter() - started:.0f} s. Next:\n"
        f"  rtn query \"select step, token_class, plateau_verdict, plateau_size, plateau_lift, lift_threshold "
        f"from regime_summary where run_id = 'demo' and sign = 'boost' order by step, token_class\"\n"
        f"  rtn app                      # explore in the browser\n"
        f"  python -c \"from rtn.warehouse import read; print(read('neuron_influence'))\"")


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
    return "\n".join(lines)


def _run_filter(table: str) -> str:
    return "true" if table == "token_frequencies" else f"run_id = '{DEMO_RUN}'"
