"""The planted model end to end: ablation, ranking, the regime fit and the groups find what was put there.

    pytest tests/acceptance/test_planted.py    # builds the planted model unless cached (~1 min), ingests it (~2 min)

Two runs over the planted corpus: `planted` (rtn/demo/planted.py, as `rtn demo` ingests it)
and `unplanted`, the same trained checkpoint before planting, the control.
"""
from __future__ import annotations

import dataclasses

import duckdb
import pytest
import torch
from transformers import AutoModelForCausalLM

from rtn.demo import planted_config
from rtn.demo.planted import ensure_planted
from rtn.demo.synthetic import ensure_demo
from rtn.ingest import adapters
from rtn.ingest.capture import hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import ingest

CURVE = "select * from regime_summary where run_id = ? and token_class = ? and sign = ?"


@pytest.fixture(scope="module")
def planted():
    return ensure_planted()


@pytest.fixture(scope="module")
def planted_warehouse(planted, tmp_path_factory):
    """Returns a warehouse holding the runs `planted` and `unplanted` (no head ablations or spectra: not needed here)."""
    path = tmp_path_factory.mktemp("planted") / "planted.duckdb"
    config = dataclasses.replace(planted_config(planted), head_layers=0, spectra=False)
    ingest(config, path, log=lambda *_: None)
    control = IngestConfig(model=str(ensure_demo().checkpoint_dir), checkpoints="final", corpus=config.corpus,
                           run="unplanted", tokens=config.tokens, seq_len=config.seq_len, n_samples=64, head_layers=0,
                           spectra=False)
    ingest(control, path, log=lambda *_: None)
    return path


def query(path, sql: str, params=()):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(sql, params=list(params) or None).pl()
    finally:
        con.close()


def planted_neurons(planted) -> list[int]:
    return [p["neuron"] for p in planted.design["planted"]]


def test_the_planted_neurons_top_the_rare_boost_curve_with_their_designed_margins(planted, planted_warehouse):
    curve = query(planted_warehouse, "select neuron, delta_loss from neuron_influence where run_id = 'planted' "
                  "and token_class = 'rare' and sign = 'boost' order by rank")
    k = len(planted.design["planted"])
    assert curve["neuron"][:k].to_list() == planted_neurons(planted)          # in the designed order
    for p, got in zip(planted.design["planted"], curve["delta_loss"][:k]):
        assert got == pytest.approx(p["measured_rare_delta"], rel=1e-4)       # float32 forward vs the float64 design
        assert got == pytest.approx(p["design_rare_delta"], rel=2e-3)
    assert curve["delta_loss"][k - 1] > 20 * curve["delta_loss"][k]            # measured: 55×


def test_a_hook_rerun_of_the_planted_model_confirms_each_specialist_ablation(planted, planted_warehouse):
    # independent of the analytic ablation: re-run the whole model with the neuron held at its mean
    tokens = query(planted_warehouse, "select seq, pos, token_id, target_class from eval_tokens "
                   "where run_id = 'planted' order by seq, pos")
    n_seq = tokens["seq"].max() + 1
    ids = torch.tensor(tokens["token_id"].to_list()).view(n_seq, -1)
    rare = torch.tensor((tokens["target_class"] == "rare").fill_null(False).to_list()).view(n_seq, -1)[:, :-1]
    model = AutoModelForCausalLM.from_pretrained(planted.checkpoint_dir / f"step{planted.design['config']['base_step']}",
                                                 dtype=torch.float64).eval()
    adapter = adapters.adapter_for(model)
    down = adapters.mlp_out_module(model, adapter, -1 % model.config.num_hidden_layers)
    acts = []
    with torch.no_grad(), hooked(down, lambda _m, inputs: acts.append(inputs[0].detach())):
        clean = _losses(model, ids)
    means = acts[0].reshape(-1, acts[0].shape[-1]).mean(0)                   # [n] over every position
    stored = query(planted_warehouse, "select neuron, delta_loss from ablation_deltas where run_id = 'planted' "
                   "and token_class = 'rare'")
    stored = dict(zip(stored["neuron"], stored["delta_loss"]))
    for neuron in planted_neurons(planted):
        def hold_at_mean(_module, inputs, neuron=neuron):
            held = inputs[0].clone()
            held[..., neuron] = means[neuron]
            return (held,)
        with torch.no_grad(), hooked(down, hold_at_mean):
            ablated = _losses(model, ids)
        assert (ablated - clean)[rare].mean().item() == pytest.approx(stored[neuron], rel=1e-4)


def _losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Returns the loss [S, L-1] of predicting each next token of `ids` [S, L]."""
    logits = model(ids, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def test_the_planted_neurons_stay_out_of_the_common_curves(planted, planted_warehouse):
    common = query(planted_warehouse, "select sign, neuron, rank, abs(delta_loss) as influence, "
                   "max(abs(delta_loss)) over (partition by sign) as top from neuron_influence "
                   "where run_id = 'planted' and token_class = 'common'")
    mine = common.filter(common["neuron"].is_in(planted_neurons(planted)))
    assert (mine["rank"] > 20).all()                    # measured: none in the top 8 of either sign
    assert (mine["influence"] < 0.2 * mine["top"]).all()   # measured: at most 10.5 % of their curve's top


def test_the_head_fit_finds_exactly_the_planted_neurons(planted, planted_warehouse):
    fit = query(planted_warehouse, CURVE, ["planted", "rare", "boost"]).row(0, named=True)
    assert fit["head_size"] == len(planted.design["planted"])
    assert fit["plateau_lift"] > 0                       # the head stands above the extrapolated power law
    assert fit["delta_bic"] > 10                         # and the head model beats power law + decay


def test_the_verdict_calls_the_planted_head_a_plateau_and_its_group_the_planted_neurons(planted, planted_warehouse):
    fit = query(planted_warehouse, CURVE, ["planted", "rare", "boost"]).row(0, named=True)
    assert fit["has_plateau"] and fit["plateau_verdict"] == "plateau"
    group = set(query(planted_warehouse, "select neuron from neuron_groups where run_id = 'planted' "
                      "and group_name = 'plateau'")["neuron"])
    truth = set(planted_neurons(planted))
    assert len(group & truth) >= 0.9 * len(group) and len(group & truth) >= 0.9 * len(truth)


def test_no_common_curve_of_the_planted_model_and_no_curve_of_the_unplanted_checkpoint_has_a_plateau(
        planted_warehouse):
    verdicts = query(planted_warehouse, "select run_id, token_class, sign, has_plateau, plateau_verdict "
                     "from regime_summary order by all")
    assert verdicts.filter(verdicts["run_id"] == "unplanted").height == 6
    quiet = verdicts.filter((verdicts["run_id"] == "unplanted") | (verdicts["token_class"] == "common"))
    assert not quiet["has_plateau"].any(), quiet
    assert query(planted_warehouse, "select count(*) as n from neuron_groups where run_id = 'unplanted' "
                 "and group_name = 'plateau'")["n"][0] == 0
