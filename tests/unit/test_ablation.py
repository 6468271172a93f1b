"""The analytic ablation equals a brute-force re-run of the whole model with a hook."""
from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model

from rtn.ingest import adapters
from rtn.ingest.ablation import group_deltas, groups_deltas, neuron_deltas
from rtn.ingest.capture import capture, hooked
from rtn.ingest.readout import readout_of, token_losses

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def _batch(seed=1, seqs=3, length=20):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (seqs, length), generator=gen)


def _setup(family, dtype):
    model = tiny_model(family, dtype)
    adapter = adapters.adapter_for(model)
    layer = adapters.resolve_layer(model, adapter, -1)
    ids = _batch()
    cap = capture(model, adapter, layer, ids)
    acts = cap.acts[:, :-1].reshape(-1, cap.acts.shape[-1])       # drop the last position: no target
    resid = cap.resid[:, :-1].reshape(-1, cap.resid.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    mean_acts = cap.acts.reshape(-1, cap.acts.shape[-1]).mean(0)   # over every position
    _, w_out = adapters.mlp_weights(model, adapter, layer)
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    return model, adapter, layer, ids, acts, resid, targets, mean_acts, w_out, readout


def _brute_force_losses(model, adapter, layer, ids, neurons, mean_acts):
    """Re-runs the whole model with `neurons` set to their means; returns per-position loss."""
    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., neurons] = mean_acts[neurons].to(patched.dtype)
        return (patched,)

    with torch.no_grad(), hooked(adapters.mlp_out_module(model, adapter, layer), ablate):
        logits = model(ids, use_cache=False).logits[:, :-1]
    logits = logits.reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1), reduction="none")


def _clean_losses(model, ids):
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_single_neuron_deltas_equal_hook_rerun(family, dtype):
    model, adapter, layer, ids, acts, resid, targets, mean_acts, w_out, readout = _setup(family, dtype)
    fast = neuron_deltas(resid, acts, mean_acts, w_out, targets, readout, budget=5000)  # small budget: exercise chunking
    clean = _clean_losses(model, ids)
    worst = 0.0
    for i in range(acts.shape[1]):
        slow = _brute_force_losses(model, adapter, layer, ids, [i], mean_acts) - clean
        worst = max(worst, (fast[:, i] - slow).abs().max().item())
    assert worst <= TOLERANCE[dtype]
    assert fast.abs().max() > 100 * TOLERANCE[dtype]   # the check compared real effects, not zeros


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_group_of_five_deltas_equal_hook_rerun(family, dtype):
    model, adapter, layer, ids, acts, resid, targets, mean_acts, w_out, readout = _setup(family, dtype)
    group = torch.tensor([3, 17, 18, 40, 71])
    fast = group_deltas(resid, acts, mean_acts, w_out, targets, readout, group, budget=500)
    slow = _brute_force_losses(model, adapter, layer, ids, group, mean_acts) - _clean_losses(model, ids)
    assert (fast - slow).abs().max().item() <= TOLERANCE[dtype]
    assert fast.abs().max() > 100 * TOLERANCE[dtype]


def test_group_of_one_is_the_single_neuron_formula(family):
    *_, acts, resid, targets, mean_acts, w_out, readout = _setup(family, torch.float64)
    single = neuron_deltas(resid, acts, mean_acts, w_out, targets, readout, neurons=torch.tensor([5]))[:, 0]
    group = group_deltas(resid, acts, mean_acts, w_out, targets, readout, torch.tensor([5]))
    assert torch.allclose(single, group, atol=1e-12, rtol=0)


def test_readout_reproduces_model_loss(family):
    model, _, _, ids, _, resid, targets, *_, readout = _setup(family, torch.float64)
    assert torch.allclose(token_losses(resid, targets, readout), _clean_losses(model, ids), atol=1e-10, rtol=0)


def test_several_groups_at_once_equal_each_group_alone(family):
    *_, acts, resid, targets, mean_acts, w_out, readout = _setup(family, torch.float64)
    groups = [torch.tensor([3, 17]), torch.tensor([17, 40, 71]), torch.tensor([0])]
    together = groups_deltas(resid, acts, mean_acts, w_out, targets, readout, groups)
    for g, group in enumerate(groups):
        alone = group_deltas(resid, acts, mean_acts, w_out, targets, readout, group)
        assert torch.allclose(together[:, g], alone, atol=1e-12, rtol=0)
