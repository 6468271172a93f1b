"""`rtn ingest --layers all`: every MLP layer's tables, its earlier layers ablated exactly by re-running the blocks after them."""
from __future__ import annotations

import duckdb
import pytest
import torch
from conftest import save_model_folder

from rtn.ingest import adapters
from rtn.ingest.capture import hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import ingest

N_MLP = 72


def _config(model, corpus, **kw):
    return IngestConfig(model=str(model), corpus=str(corpus), tokens=256, seq_len=32, n_samples=32, head_layers=1, **kw)


def _eval_batch(con):
    """Returns (ids [S, L], target class of each position or None), rebuilt from eval_tokens."""
    rows = con.sql("select seq, pos, token_id, target_class from eval_tokens order by seq, pos").pl()
    ids = torch.tensor(rows["token_id"].to_numpy()).long().reshape(rows["seq"].max() + 1, -1)
    return ids, rows["target_class"].to_list()


def _hook_deltas(model, adapter, ids, layer, neurons, means) -> torch.Tensor:
    """Returns per-position ΔLoss [S*L] of setting `neurons` of `layer` to `means` in a whole-model re-run (0 at the last position)."""
    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., neurons] = means
        return (patched,)

    def losses():
        logits = model(ids, use_cache=False).logits
        per = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].reshape(-1), reduction="none")
        return torch.cat([per.reshape(ids.shape[0], -1), torch.zeros(ids.shape[0], 1, dtype=per.dtype)], 1).reshape(-1)

    with torch.no_grad():
        clean = losses()
        with hooked(adapters.mlp_out_module(model, adapter, layer), ablate):
            return losses() - clean


def _class_mean(deltas, classes, token_class) -> float:
    picked = [d for d, c in zip(deltas.tolist(), classes) if c is not None and token_class in ("all", c)]
    return sum(picked) / len(picked)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_every_layer_is_ingested_and_earlier_layers_equal_whole_model_hook_reruns(tmp_path, corpus_txt, family):
    from transformers import AutoModelForCausalLM
    model_dir = save_model_folder(tmp_path / "model", family)
    wh = tmp_path / "w.duckdb"
    ingest(_config(model_dir, corpus_txt, layers="all", precision="float64"), wh, log=lambda *_: None)
    con = duckdb.connect(str(wh), read_only=True)
    for table, per_neuron in (("ablation_deltas", 3), ("neuron_stats", 1), ("activation_samples", 1), ("neuron_weights", 1)):
        counts = con.execute(f"select layer, count(*) from {table} group by layer order by layer").fetchall()
        assert counts == [(0, per_neuron * N_MLP), (1, per_neuron * N_MLP)], table
    assert {row[0] for row in con.execute("select distinct layer from group_ablation_deltas").fetchall()} == {0, 1}

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()   # as the ingest's float64 copy
    adapter = adapters.adapter_for(model)
    ids, classes = _eval_batch(con)
    mean_act = dict(con.execute("select neuron, mean_act from neuron_stats where layer = 0").fetchall())
    for neuron in (4, 39):
        deltas = _hook_deltas(model, adapter, ids, 0, [neuron], mean_act[neuron])
        for token_class in ("rare", "common", "all"):
            stored = con.execute("select delta_loss from ablation_deltas where layer = 0 and neuron = ? "
                                 "and token_class = ?", [neuron, token_class]).fetchone()[0]
            assert abs(stored - _class_mean(deltas, classes, token_class)) < 1e-9
    group, joint = con.execute("select neurons, joint_delta from group_ablation_deltas where layer = 0 "
                               "and token_class = 'all' order by k desc, group_name limit 1").fetchone()
    means = torch.tensor([mean_act[i] for i in group], dtype=torch.float64)
    deltas = _hook_deltas(model, adapter, ids, 0, group, means)
    assert len(group) > 1 and abs(joint - _class_mean(deltas, classes, "all")) < 1e-9
    assert max(abs(row[0]) for row in con.execute("select delta_loss from ablation_deltas where layer = 0").fetchall()) > 1e-4


def test_the_last_layer_of_an_all_layer_run_matches_a_last_layer_run(tmp_path, corpus_txt):
    model_dir = save_model_folder(tmp_path / "model")
    wh = tmp_path / "w.duckdb"
    ingest(_config(model_dir, corpus_txt, run="last"), wh, log=lambda *_: None)
    ingest(_config(model_dir, corpus_txt, run="every", layers="all"), wh, log=lambda *_: None)
    con = duckdb.connect(str(wh), read_only=True)
    pairs = con.execute("select a.delta_loss, b.delta_loss from ablation_deltas as a join ablation_deltas as b "
                        "using (step, layer, neuron, token_class) where a.run_id = 'last' and b.run_id = 'every'").fetchall()
    assert len(pairs) == 3 * N_MLP
    assert max(abs(a - b) for a, b in pairs) < 1e-6   # float32 vs float64 forward pass, float64 ablation arithmetic


def test_influence_page_offers_every_ingested_layer(tmp_path, corpus_txt, monkeypatch):
    from test_app import charts, count, open_page

    from rtn.analyses import run_analyses
    model_dir = save_model_folder(tmp_path / "model")
    wh = tmp_path / "w.duckdb"
    ingest(_config(model_dir, corpus_txt, run="every", layers="all"), wh, log=lambda *_: None)
    run_analyses(wh, "every", log=lambda *_: None)
    at = open_page("Influence", wh, monkeypatch)
    assert at.selectbox(key="influence_layer").options == ["0", "1"] and at.selectbox(key="influence_layer").value == 1
    at.selectbox(key="influence_layer").set_value(0).run()
    assert not at.exception
    (curve,) = charts(at)["rare targets · boost"]
    expected = count(wh, "select count(*) from influence_regimes where run_id = 'every' and layer = 0 "
                         "and token_class = 'rare' and sign = 'boost'")
    assert curve.num_rows == expected > 0
    agreement = count(wh, "select count(*) from attribution_agreement where run_id = 'every'")
    assert agreement == 2 * 3                                   # both layers, three classes: exact and screen side by side


def test_cli_layer_zero_studies_only_layer_zero_and_heads_of_every_layer(tmp_path, corpus_txt):
    from rtn.cli import main
    model_dir = save_model_folder(tmp_path / "model", "gpt2")
    wh = tmp_path / "w.duckdb"
    assert main(["ingest", "--model", str(model_dir), "--corpus", str(corpus_txt), "--tokens", "128", "--seq-len", "32",
                 "--layer", "0", "--head-layers", "all", "--warehouse", str(wh)]) == 0
    con = duckdb.connect(str(wh), read_only=True)
    assert con.execute("select layer from runs").fetchone()[0] == 0
    for table in ("ablation_deltas", "neuron_stats", "group_ablation_deltas", "neuron_token_effects"):
        assert con.execute(f"select distinct layer from {table}").fetchall() == [(0,)], table
    assert con.execute("select count(distinct layer) from attribution_deltas").fetchone()[0] == 2   # the screen: every layer
    assert con.execute("select count(*) from attribution_agreement").fetchone()[0] == 3            # layer 0, three classes
    assert con.execute("select distinct layer from head_ablations order by 1").fetchall() == [(0,), (1,)]   # all
