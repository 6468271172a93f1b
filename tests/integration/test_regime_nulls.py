"""A random-weights family, the null model of the regime verdict: no curve of it has a plateau (issue 13).

    pytest tests/integration/test_regime_nulls.py      # ~1 min on 2 cores
"""
from __future__ import annotations

import duckdb

from rtn.bench.profile import save_random_family
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import ingest


def test_no_curve_of_a_random_weights_family_has_a_plateau(tmp_path):
    # `rtn bench --save-family` in the demo's shape (256 neurons: long enough curves that a head
    # of up to n/20 ranks can be fitted, unlike the tiny shape's 96)
    family = save_random_family(tmp_path / "family", "demo", size=3, log=lambda *_: None)
    config = IngestConfig(model=str(family), checkpoints="all", corpus=str(family / "corpus.jsonl"), run="random",
                          tokens=2048, seq_len=64, n_samples=64, head_layers=0, spectra=False)
    ingest(config, tmp_path / "null.duckdb", log=lambda *_: None)
    con = duckdb.connect(str(tmp_path / "null.duckdb"), read_only=True)
    rows = con.sql("select step, token_class, sign, n_neurons, head_size, plateau_lift, lift_threshold, has_plateau, "
                   "plateau_verdict from regime_summary where run_id = 'random' order by all").pl()
    plateau_group = con.execute("select count(*) from neuron_groups where run_id = 'random' and group_name = 'plateau'")
    assert rows.height == 3 * 3 * 2                             # steps × classes × signs
    assert (rows["n_neurons"] >= 60).sum() >= 12                # most curves could hold a head
    assert not rows["has_plateau"].any(), rows.filter(rows["has_plateau"])
    assert set(rows["plateau_verdict"]) <= {"no_plateau", "insufficient_evidence"}
    assert plateau_group.fetchone()[0] == 0                     # no plateau, no plateau group
