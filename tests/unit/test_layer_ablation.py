"""Exact ablation at any layer (re-run from the cached residual) equals a whole-model hook re-run; at the last layer, the analytic path.

    .venv/bin/pytest tests/unit/test_layer_ablation.py
"""
from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model

from rtn.ingest import adapters
from rtn.ingest.ablation import group_deltas, neuron_deltas
from rtn.ingest.capture import hooked
from rtn.ingest.layer_ablation import clean_pass, layer_deltas
from rtn.ingest.readout import readout_of

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}
N_LAYERS = 3                 # so that layer 0 and layer L-2 differ
BATCH = 2                    # 5 sequences: 3 recorded batches, the last one short
BUDGET = 30_000              # a few ablations per re-run batch and a few hundred logit rows: exercises the chunking
GROUP = torch.tensor([3, 17, 18, 40, 71])


def _setup(family, dtype, seqs=5, length=12):
    model = tiny_model(family, dtype, n_layers=N_LAYERS)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (seqs, length), generator=gen)
    included = torch.rand(seqs, length, generator=gen) < 0.7
    included[:, :3] = False
    included[:, -1] = False                                  # no target
    return model, adapters.adapter_for(model), ids, included, torch.roll(ids, -1, dims=1)


def _whole_model_losses(model, adapter, ids, layer, neurons=None, mean_acts=None):
    """Returns per-position loss [S, L] of the whole model, `neurons` of `layer` set to their means by a hook."""
    def ablate(_module, inputs):
        patched = inputs[0].clone()
        patched[..., neurons] = mean_acts[neurons].to(patched.dtype)
        return (patched,)

    with torch.no_grad(), hooked(adapters.mlp_out_module(model, adapter, layer),
                                 ablate if neurons is not None else lambda *_: None):
        logits = model(ids, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(ids, -1, dims=1).reshape(-1),
                                             reduction="none").reshape(ids.shape)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layer", [0, N_LAYERS - 2])
def test_layer_deltas_equal_whole_model_hook_reruns_single_neurons_and_a_group_of_five(family, dtype, layer):
    model, adapter, ids, included, targets = _setup(family, dtype)
    clean = clean_pass(model, adapter, ids, [layer], BATCH)
    mean_acts = clean.acts[layer].flatten(0, 1).mean(0)                        # over every position
    n = mean_acts.shape[0]
    singles = layer_deltas(model, adapter, clean, layer, mean_acts, targets, included, budget=BUDGET)
    group = layer_deltas(model, adapter, clean, layer, mean_acts, targets, included, [GROUP], budget=BUDGET)[:, 0]
    clean_losses = _whole_model_losses(model, adapter, ids, layer)[included]
    worst = 0.0
    for i in range(0, n, 7):                                                   # every chunk of the batched re-run
        slow = _whole_model_losses(model, adapter, ids, layer, [i], mean_acts)[included] - clean_losses
        worst = max(worst, (singles[:, i] - slow).abs().max().item())
    slow_group = _whole_model_losses(model, adapter, ids, layer, GROUP, mean_acts)[included] - clean_losses
    assert singles.shape == (int(included.sum()), n)
    assert worst <= TOLERANCE[dtype]
    assert (group - slow_group).abs().max().item() <= TOLERANCE[dtype]
    assert singles.abs().max() > 100 * TOLERANCE[dtype] and slow_group.abs().max() > 100 * TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_at_the_last_layer_the_rerun_path_equals_the_analytic_path(family, dtype):
    model, adapter, ids, included, targets = _setup(family, dtype)
    last = N_LAYERS - 1
    clean = clean_pass(model, adapter, ids, [0, last], BATCH)                  # two layers from one pass
    mean_acts = clean.acts[last].flatten(0, 1).mean(0)
    rerun_singles = layer_deltas(model, adapter, clean, last, mean_acts, targets, included, budget=BUDGET)
    rerun_group = layer_deltas(model, adapter, clean, last, mean_acts, targets, included, [GROUP])[:, 0]
    resid = torch.cat(clean.final)[included]                                   # [M, d]
    acts, wanted = clean.acts[last][included], targets[included]
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    _, w_out = adapters.mlp_weights(model, adapter, last)
    analytic = neuron_deltas(resid, acts, mean_acts, w_out, wanted, readout)
    analytic_group = group_deltas(resid, acts, mean_acts, w_out, wanted, readout, GROUP)
    assert (rerun_singles - analytic).abs().max().item() <= TOLERANCE[dtype]
    assert (rerun_group - analytic_group).abs().max().item() <= TOLERANCE[dtype]
    assert analytic.abs().max() > 100 * TOLERANCE[dtype]


def test_sequences_without_included_positions_are_skipped_and_rows_stay_in_order():
    model, adapter, ids, included, targets = _setup("gpt_neox", torch.float64)
    included[2:4] = False                                                      # the whole middle batch
    clean = clean_pass(model, adapter, ids, [0], BATCH)
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)
    got = layer_deltas(model, adapter, clean, 0, mean_acts, targets, included, [torch.tensor([5])])[:, 0]
    slow = (_whole_model_losses(model, adapter, ids, 0, [5], mean_acts)
            - _whole_model_losses(model, adapter, ids, 0))[included]
    assert got.shape == slow.shape and (got - slow).abs().max().item() <= 1e-9


def test_progress_hears_of_every_batch_and_every_group_over_every_batch_skipped_ones_too():
    model, adapter, ids, included, targets = _setup("gpt_neox", torch.float64)
    included[2:4] = False                                                      # the middle batch is skipped
    batches = []
    clean = clean_pass(model, adapter, ids, [0], BATCH, tick=batches.append)
    assert batches == [1, 1, 1]                                                # 5 sequences in batches of 2
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)
    ticks = []
    layer_deltas(model, adapter, clean, 0, mean_acts, targets, included, budget=BUDGET, tick=ticks.append)
    n = clean.acts[0].shape[-1]
    assert sum(ticks) == n * len(clean.final) == n * 3 and len(ticks) > 3      # chunked: several ticks per batch
    assert n in ticks                                                          # the skipped batch, at once


def test_eager_attention_masks_are_tiled_with_the_batch(family):
    """Eager attention records a [B, 1, L, L] mask per batch: the batched re-run must repeat it per ablation."""
    model, adapter, ids, included, targets = _setup(family, torch.float64)
    model.set_attn_implementation("eager")
    clean = clean_pass(model, adapter, ids, [0], BATCH)
    mask = clean.calls.calls[1][0]
    assert any(torch.is_tensor(v) and v.ndim == 4 and v.shape[0] == BATCH for v in [*mask[0], *mask[1].values()])
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)
    neurons = [torch.tensor([i]) for i in (1, 20, 33, 70)]
    got = layer_deltas(model, adapter, clean, 0, mean_acts, targets, included, neurons, budget=BUDGET)
    clean_losses = _whole_model_losses(model, adapter, ids, 0)[included]
    for column, neuron in enumerate(neurons):
        slow = _whole_model_losses(model, adapter, ids, 0, neuron, mean_acts)[included] - clean_losses
        assert (got[:, column] - slow).abs().max().item() <= 1e-9
