"""Re-running from block l with a patch equals the whole patched model; head ablations through it equal the whole-model path.

    .venv/bin/pytest tests/unit/test_rerun.py
"""
from __future__ import annotations

import polars as pl
import pytest
import torch
from conftest import VOCAB, tiny_model

from rtn.ingest import adapters, heads, rerun
from rtn.ingest.capture import hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import COMMON, EXCLUDED, RARE, EvalData, class_masks

TOL = 1e-9   # float64 models: the same arithmetic, only the unembedding's GEMM shape differs


def _ids(seqs=5, length=12, seed=4) -> torch.Tensor:
    return torch.randint(0, VOCAB, (seqs, length), generator=torch.Generator().manual_seed(seed))


def _neuron_patch(model, adapter, layer):
    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., [3, 17, 40]] = torch.tensor([0.5, -1.0, 2.0], dtype=patched.dtype)
        return (patched,)
    return adapters.mlp_out_module(model, adapter, layer), ablate


def _head_patch(model, adapter, layer):
    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., 8:16] = patched[:, :1, 8:16]       # head 1 of 4 (d_head 8): bos-style
        return (patched,)
    return adapters.attn_out_module(model, adapter, layer), ablate


@pytest.mark.parametrize("make_patch", [_neuron_patch, _head_patch])
@pytest.mark.parametrize("layer", [0, 1])
def test_rerun_from_a_block_equals_the_whole_patched_model(family, layer, make_patch):
    model = tiny_model(family, torch.float64)
    adapter = adapters.adapter_for(model)
    ids, batch_size = _ids(), 2                     # 3 batches, the last one short
    with torch.no_grad(), rerun.recording(model, adapter, [layer]) as calls:
        clean = [model(ids[s:s + batch_size], use_cache=False).logits for s in range(0, len(ids), batch_size)]
    assert calls.n_batches() == 3
    patch = make_patch(model, adapter, layer)
    with torch.no_grad(), hooked(*patch):
        expected = torch.cat([model(ids[s:s + batch_size], use_cache=False).logits
                              for s in range(0, len(ids), batch_size)])
    got = torch.cat([rerun.readout_logits(model, adapter, hidden)
                     for hidden in rerun.rerun(model, adapter, calls, layer, [patch])])
    assert (got - expected).abs().max().item() <= TOL
    assert (expected - torch.cat(clean)).abs().max().item() > 1e-3      # the patch changed the logits
    unpatched = torch.cat([rerun.readout_logits(model, adapter, hidden)
                           for hidden in rerun.rerun(model, adapter, calls, layer)])
    assert (unpatched - torch.cat(clean)).abs().max().item() <= TOL


def test_recording_and_patches_end_with_their_blocks_and_unrecorded_layers_are_refused():
    model = tiny_model("gpt2", torch.float64)
    adapter = adapters.adapter_for(model)
    with torch.no_grad(), rerun.recording(model, adapter, [1]) as calls:
        model(_ids(), use_cache=False)
    patch = _neuron_patch(model, adapter, 1)
    with torch.no_grad():
        model(_ids(), use_cache=False)
        list(rerun.rerun(model, adapter, calls, 1, [patch]))
    assert calls.n_batches() == 1 and len(calls.residuals[1]) == 1
    assert not patch[0]._forward_pre_hooks and not any(block._forward_pre_hooks for block in adapters.blocks(model, adapter))
    with pytest.raises(ValueError, match="block 0 was not recorded"):
        next(rerun.rerun(model, adapter, calls, 0))


def _data(seqs=5, length=12) -> EvalData:
    gen = torch.Generator().manual_seed(9)
    classes = torch.where(torch.rand(seqs, length, generator=gen) < 0.4, RARE, COMMON)
    classes[:, :3] = EXCLUDED
    classes[:, -1] = EXCLUDED
    return EvalData(None, None, _ids(seqs, length), classes, torch.arange(8), vocab=[])


def _whole_model_rows(model, data, config, plateau) -> dict:
    """Returns {(layer, head, method, class): (delta_loss, plateau_act_change)} by re-running the whole model per ablation."""
    adapter = adapters.adapter_for(model)
    studied = adapters.resolve_layer(model, adapter, config.layer)
    plateau = torch.as_tensor(plateau)
    layers = heads.head_layers(2, config.head_layers)
    sums = {}

    def accumulate(layer):
        def hook(_module, inputs):
            sums[layer] = sums.get(layer, 0) + inputs[0].to(torch.float64).sum((0, 1))
        return hook

    clean = heads._run(model, adapter, data.input_ids, config.batch_size, torch.float64, studied, plateau,
                       [(adapters.attn_out_module(model, adapter, layer), accumulate(layer)) for layer in layers])
    masks = class_masks(data.classes.reshape(-1))
    out = {}
    for layer in layers:
        means = sums[layer] / data.input_ids.numel()
        for method in heads.METHODS:
            for head in [0, 3, heads.WHOLE_LAYER]:
                hook = heads.ablation_hook(heads.head_columns(head, 4, means.shape[0]), method, means)
                ablated = heads._run(model, adapter, data.input_ids, config.batch_size, torch.float64, studied,
                                     plateau, [(adapters.attn_out_module(model, adapter, layer), hook)])
                for name, mask in masks.items():
                    out[layer, head, method, name] = (
                        (ablated.losses - clean.losses)[mask].mean().item(),
                        (ablated.plateau_acts - clean.plateau_acts).abs()[mask].mean().item())
    return out


@pytest.mark.parametrize("studied_layer", [-1, 0])
def test_head_ablations_from_the_recorded_residual_equal_whole_model_reruns(family, studied_layer):
    model = tiny_model(family, torch.float64)
    data, plateau = _data(), [1, 30, 64]
    config = IngestConfig(model="tiny", head_layers=2, batch_size=2, precision="float64", layer=studied_layer)
    rows = heads.head_ablations(model, adapters.adapter_for(model), data, config, None, plateau)
    expected = _whole_model_rows(model, data, config, plateau)
    worst, largest = 0.0, 0.0
    for (layer, head, method, name), (delta, act_change) in expected.items():
        row = rows.filter((pl.col("layer") == layer) & (pl.col("head") == head) & (pl.col("method") == method)
                          & (pl.col("token_class") == name)).row(0, named=True)
        worst = max(worst, abs(row["delta_loss"] - delta), abs(row["plateau_act_change"] - act_change))
        largest = max(largest, abs(delta))
    assert worst <= TOL
    assert largest > 1e-3            # real effects were compared, not zeros
    if studied_layer == 0:           # an ablation after the studied layer cannot move its activations
        assert rows.filter(pl.col("layer") == 1)["plateau_act_change"].max() == 0.0


@pytest.mark.parametrize("studied_layer", [-1, 0])
def test_head_ablations_from_the_ingests_clean_pass_equal_their_own_clean_pass(family, studied_layer):
    """The ingest records the heads' clean pass during its own (base model, no logits): same rows."""
    from rtn.ingest.layer_ablation import clean_pass
    model = tiny_model(family, torch.float64)
    adapter = adapters.adapter_for(model)
    data, plateau = _data(), [1, 30, 64]
    config = IngestConfig(model="tiny", head_layers=2, batch_size=2, precision="float64", layer=studied_layer)
    own = heads.head_ablations(model, adapter, data, config, None, plateau)
    with heads.recording(model, adapter, config) as recorded:
        ingest_pass = clean_pass(model, adapter, data.input_ids, [adapters.resolve_layer(model, adapter, studied_layer)],
                                 config.batch_size)
    assert recorded.calls.n_batches() == 3 and sorted(recorded.sums) == [0, 1]
    shared = heads.head_ablations(model, adapter, data, config, None, plateau, recorded=recorded,
                                  ingest_pass=ingest_pass)
    keys = ["layer", "head", "method", "token_class"]
    joined = own.join(shared, on=keys, suffix="_shared")
    assert joined.height == own.height == shared.height == 2 * 2 * 5 * 3
    for column in ("delta_loss", "relative_change", "plateau_act_change"):
        assert (joined[column] - joined[f"{column}_shared"]).abs().max() <= TOL
    assert joined["delta_loss"].abs().max() > 1e-3        # real effects were compared
