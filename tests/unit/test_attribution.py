"""The attribution screen equals the analytic first-order ΔLoss where later blocks are identities.

    .venv/bin/pytest tests/unit/test_attribution.py
"""
from __future__ import annotations

import torch
from conftest import VOCAB, tiny_model

from rtn.ingest import adapters
from rtn.ingest.attribution import attribution_deltas, attribution_rows
from rtn.ingest.corpus import COMMON, EXCLUDED, RARE, EvalData, class_masks
from rtn.ingest.layer_ablation import clean_pass, layer_deltas
from rtn.ingest.readout import readout_of


def _batch(seqs=5, length=12):
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (seqs, length), generator=gen)
    classes = torch.where(torch.rand(seqs, length, generator=gen) < 0.4, RARE, COMMON)
    classes[:, :3] = EXCLUDED
    classes[:, -1] = EXCLUDED
    return ids, classes


def _identity_after(model, adapter, layer):
    """Zeroes the attention and MLP outputs of every block after `layer`: those blocks pass the residual on unchanged."""
    with torch.no_grad():
        for later in range(layer + 1, len(adapters.blocks(model, adapter))):
            for module in (adapters.attn_out_module(model, adapter, later), adapters.mlp_out_module(model, adapter, later)):
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def _loss_gradient(resid, targets, readout):
    """Returns dLoss(t)/dr(t) [N, d] of the final norm, unembedding and cross-entropy, written out by hand."""
    r = readout.centre(resid)
    d = r.shape[-1]
    s = torch.sqrt((r * r).mean(-1, keepdim=True) + readout.eps)                # [N, 1]
    probs = torch.softmax(readout.logits(resid), -1)
    probs[torch.arange(len(targets)), targets] -= 1                             # dLoss/dlogits
    u = (probs @ readout.W_U) * readout.gamma                                   # dLoss/d(normed) [N, d]
    grad = u / s - r * (r * u).sum(-1, keepdim=True) / (d * s ** 3)
    return grad - grad.mean(-1, keepdim=True) if readout.centred else grad


def test_attribution_equals_the_analytic_derivative_when_later_blocks_are_identities(family):
    model = tiny_model(family, torch.float64)
    adapter = adapters.adapter_for(model)
    _identity_after(model, adapter, 0)
    ids, classes = _batch()
    estimates, counts = attribution_deltas(model, adapter, ids, classes, batch_size=2)
    clean = clean_pass(model, adapter, ids, [0], 2)
    acts = clean.acts[0].flatten(0, 1)                                          # [S*L, n]
    c = acts.mean(0) - acts                                                     # [S*L, n]
    resid = torch.cat(clean.final).flatten(0, 1)                               # [S*L, d] = residual leaving block 0
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    _, w_out = adapters.mlp_weights(model, adapter, 0)
    per_position = c * (_loss_gradient(resid, torch.roll(ids, -1, 1).reshape(-1), readout) @ w_out.T)   # [S*L, n]
    for name, mask in class_masks(classes.reshape(-1)).items():
        expected = per_position[mask].sum(0) / counts[name]
        assert counts[name] == int(mask.sum())
        assert (estimates[name][0] - expected).abs().max().item() <= 1e-10
        assert expected.abs().max() > 1e-3


def test_attribution_is_the_slope_of_exact_ablation_at_a_small_step():
    """Moving activations a small step eps towards the mean, the exact ΔLoss (three layers, nothing linear) is eps x the estimate."""
    model = tiny_model("gpt_neox", torch.float64, n_layers=3)
    adapter = adapters.adapter_for(model)
    ids, classes = _batch()
    estimates, _ = attribution_deltas(model, adapter, ids, classes, batch_size=2)
    clean = clean_pass(model, adapter, ids, [0], 2)
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)
    eps = 1e-5
    clean.acts[0] = mean_acts - eps * (mean_acts - clean.acts[0])      # layer_deltas then shifts by eps c, not c
    exact = layer_deltas(model, adapter, clean, 0, mean_acts, torch.roll(ids, -1, 1), classes != EXCLUDED)
    slope = exact.mean(0) / eps                                         # [n] class 'all'
    assert (slope - estimates["all"][0]).abs().max().item() <= 1e-3 * estimates["all"][0].abs().max().item()
    assert estimates["all"][0].abs().max() > 1e-3


def test_attribution_rows_cover_every_layer_neuron_and_class():
    model = tiny_model("gpt2", torch.float64)
    ids, classes = _batch()
    data = EvalData(None, None, ids, classes, torch.arange(4), vocab=[])
    rows = attribution_rows(model, adapters.adapter_for(model), data, batch_size=2)
    assert rows.height == 2 * 72 * 3 and set(rows["method"]) == {"attribution"}
    assert rows.filter(rows["token_class"] == "rare")["n"].unique().to_list() == [int((classes == RARE).sum())]
