"""The attribution screen: a first-order estimate of every MLP neuron's mean-ablation ΔLoss at every layer.

    rows = attribution_rows(model, adapter, data, batch_size=16)   # attribution_deltas rows (no run_id/step)

Mean-ablating neuron i of block l moves its activation by c(t, i) = mu(i) - a(t, i) at every
position t, so to first order (attribution patching) the mean loss of a class K changes by

    ΔLoss_K(i) ≈ sum_t c(t, i) dLoss_K / da(t, i),     Loss_K = mean loss of K's predictions,

where the gradient is the total derivative through every later block and position. One forward
and one backward per class give it for every neuron of every layer; mu is the mean over every
position, accumulated in the same pass through sum_t c g = mu sum_t g - sum_t a g. Exact
ablation (ingest/ablation.py, ingest/layer_ablation.py) then goes to the layers that matter; the
`attribution_agreement` view says how well the screen ranks neurons where both exist.
"""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import polars as pl
import torch

from rtn.ingest import adapters
from rtn.ingest.capture import hooked
from rtn.ingest.corpus import EvalData, class_masks
from rtn.ingest.readout import cross_entropy

ATTRIBUTION_SCHEMA = {"layer": pl.Int32, "neuron": pl.Int32, "token_class": pl.Utf8, "method": pl.Utf8,
                      "delta_loss": pl.Float64, "n": pl.Int32}


def attribution_deltas(model, adapter, input_ids: torch.Tensor, classes: torch.Tensor,
                       batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Returns ({token_class: first-order ΔLoss [n_layers, n]}, {token_class: n predictions}) of every neuron.

    input_ids [S, L]; classes [S, L] the class code of each position's prediction (EXCLUDED
    ones count towards the means mu, not towards any loss). Arithmetic in the model's dtype.
    """
    blocks = adapters.blocks(model, adapter)
    device = next(model.parameters()).device
    masks = class_masks(classes.reshape(-1))
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    acts: list[torch.Tensor] = []

    def keep_graph(_module, inputs):
        acts.append(inputs[0])                                                   # [B, L, n], part of the graph
    grad_sum, act_grad_sum, act_sum = {}, {}, 0                                  # per class: sum_t g, sum_t a g
    with ExitStack() as stack, torch.enable_grad():
        # the graph starts at the token embeddings whether or not the weights require gradients
        embeddings = model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_())
        stack.callback(embeddings.remove)
        for layer in range(len(blocks)):
            stack.enter_context(hooked(adapters.mlp_out_module(model, adapter, layer), keep_graph))
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            acts.clear()
            logits = model(ids, use_cache=False).logits                          # [B, L, V]
            losses = cross_entropy(logits, torch.roll(ids, -1, dims=1))         # [B, L]
            batch_classes = classes[start:start + batch_size].to(device)
            stacked = torch.stack([a.detach() for a in acts])                   # [n_layers, B, L, n]
            act_sum = act_sum + stacked.sum((1, 2))
            for name, mask in class_masks(batch_classes.reshape(-1)).items():
                if not counts[name] or not mask.any():
                    continue
                class_loss = losses.reshape(-1)[mask].sum() / counts[name]
                grads = torch.stack(torch.autograd.grad(class_loss, acts, retain_graph=True))   # [n_layers, B, L, n]
                grad_sum[name] = grad_sum.get(name, 0) + grads.sum((1, 2))
                act_grad_sum[name] = act_grad_sum.get(name, 0) + (stacked * grads).sum((1, 2))
    mean_acts = act_sum / input_ids.numel()                                      # [n_layers, n] over every position
    return ({name: (mean_acts * grad_sum[name] - act_grad_sum[name]).detach() for name in grad_sum}, counts)


def attribution_rows(model, adapter, data: EvalData, batch_size: int) -> pl.DataFrame:
    """Returns attribution_deltas rows (without run_id/step): the first-order ΔLoss of every neuron of every layer."""
    estimates, counts = attribution_deltas(model, adapter, data.input_ids, data.classes, batch_size)
    frames = []
    for name, per_layer in estimates.items():
        n_layers, n = per_layer.shape
        frames.append(pl.DataFrame({
            "layer": np.repeat(np.arange(n_layers, dtype=np.int32), n),
            "neuron": np.tile(np.arange(n, dtype=np.int32), n_layers), "token_class": name,
            "method": "attribution", "delta_loss": per_layer.double().cpu().numpy().ravel(), "n": counts[name]}))
    return pl.concat(frames).cast(ATTRIBUTION_SCHEMA) if frames else pl.DataFrame(schema=ATTRIBUTION_SCHEMA)

