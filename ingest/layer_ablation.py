"""Exact mean ablation of MLP neurons at any layer: re-run only the blocks after it, from a cached residual.

    clean = clean_pass(model, adapter, input_ids, layers=[0, 2], batch_size=16)    # one forward
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)                                 # [n] over every position
    deltas = layer_deltas(model, adapter, clean, 0, mean_acts, targets, included)  # [M, n] ΔLoss

Ablating neuron i of block l sets a(t, i) := mu(i) at every position, which adds c(t, i) w_out(i),
c = mu(i) - a(t, i), to the residual leaving block l: the down-projection is linear and every
family adds the MLP's output to the residual (GPT-NeoX's parallel block, GPT-2's and Llama's
sequential ones alike). Nothing before block l+1 changes, so the residual entering it is the clean
one plus that term, and re-running blocks l+1..L-1, the final norm and the unembedding from there
is the whole ablated model. The clean pass records that residual and the arguments the blocks were
called with (ingest/rerun.py). Ablations run many at once, as one batch of ablations x sequences,
chunked so that about `budget` activation elements exist at once: the cost per neuron is the
blocks after l plus the readout, instead of a whole forward. A group of neurons adds sum_j c(j)
w_out(j). For the last layer nothing is re-run but the readout; the analytic path
(ingest/ablation.py) is the fast one there, and this path agrees with it (tests/unit/test_layer_ablation.py).
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rtn.ingest import adapters, rerun
from rtn.ingest.adapters import Adapter
from rtn.ingest.capture import hooked
from rtn.ingest.readout import cross_entropy

if TYPE_CHECKING:
    from rtn.ingest.attribution import Screen

BUDGET = 1 << 25    # activation elements of one re-run batch (and of one chunk of logits): 256 MB in float64


@dataclass
class CleanPass:
    """What one clean forward pass leaves for re-running ablations of the studied layers."""
    acts: dict[int, torch.Tensor]          # layer -> [S, L, n] activations (input of the down-projection)
    final: list[torch.Tensor]              # per batch [B, L, d]: the residual entering the final norm
    calls: rerun.BlockCalls | None         # residuals entering block l+1 and every later block's arguments
    batch_size: int                        # sequences per recorded batch

    def entry(self, layer: int, batch: int) -> torch.Tensor:
        """Returns the clean residual [B, L, d] leaving block `layer` in `batch`."""
        if self.calls is not None and layer + 1 in self.calls.residuals:
            return self.calls.residuals[layer + 1][batch]
        return self.final[batch]


@torch.no_grad()
def clean_pass(model, adapter: Adapter, input_ids: torch.Tensor, layers, batch_size: int,
               screen: Screen | None = None, tick=None) -> CleanPass:
    """Returns the CleanPass of `input_ids` [S, L] for the MLP `layers` (0-based), on the model's device.

    With an attribution `screen` (ingest/attribution.py) the pass runs with gradients and the screen
    takes each batch's backward passes, so the screen needs no forward pass of its own. tick(1), if
    given, hears of each batch done.
    """
    n_layers = len(adapters.blocks(model, adapter))
    layers = sorted(set(layers))
    acts = {layer: [] for layer in layers}
    final = []

    def grab(store):
        def hook(_module, inputs):
            store.append(inputs[0].detach())
        return hook

    device = next(model.parameters()).device
    entries = [layer + 1 for layer in layers if layer + 1 < n_layers]
    with ExitStack() as stack:
        calls = stack.enter_context(rerun.recording(model, adapter, entries)) if entries else None
        for layer in layers:
            stack.enter_context(hooked(adapters.mlp_out_module(model, adapter, layer), grab(acts[layer])))
        stack.enter_context(hooked(adapters.final_norm(model, adapter), grab(final)))
        if screen is not None:
            stack.enter_context(screen.hooked())
        body = model.base_model   # the blocks and the final norm: the unembedding's logits are not needed here
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            with torch.enable_grad() if screen is not None else nullcontext():
                body(ids, use_cache=False)
            if screen is not None:
                screen.batch(start, ids)
            if tick:
                tick(1)
    return CleanPass({layer: torch.cat(batches) for layer, batches in acts.items()}, final, calls, batch_size)


def _tiled(value, copies: int, batch: int):
    """Returns a recorded block argument for a batch of `copies` x `batch` sequences (copy-major).

    Tensors whose first axis is the batch (ndim >= 2: masks, position ids, rotary tables) are
    repeated; those with a first axis of 1 broadcast already; anything else passes as it is.
    """
    if isinstance(value, (tuple, list)):
        return type(value)(_tiled(v, copies, batch) for v in value)
    if torch.is_tensor(value) and value.ndim >= 2 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value


def _blocks_after(model, adapter: Adapter, clean: CleanPass, layer: int, batch: int, hidden: torch.Tensor,
                  copies: int) -> torch.Tensor:
    """Returns the final residual [copies * B, L, d] of re-running blocks layer+1.. on `hidden` [copies * B, L, d]."""
    blocks = adapters.blocks(model, adapter)
    for index in range(layer + 1, len(blocks)):
        args, kwargs = clean.calls.calls[index][batch]
        size = hidden.shape[0] // copies                                          # B: the recorded batch
        hidden = rerun._hidden(blocks[index](hidden, *_tiled(args, copies, size),
                                             **{k: _tiled(v, copies, size) for k, v in kwargs.items()}))
    return hidden


def _losses(model, adapter: Adapter, final: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor,
            budget: int) -> torch.Tensor:
    """Returns the loss [copies, m] at the kept positions of final residuals [copies, B, L, d].

    keep [B, L] marks the m positions whose loss counts; targets [m] what they predict. Logits
    are made `budget` elements at a time.
    """
    hidden = final[:, keep]                                                       # [copies, m, d]
    copies, m, _ = hidden.shape
    flat, wanted = hidden.reshape(copies * m, -1), targets.repeat(copies)        # [copies * m, d], [copies * m]
    rows = max(1, budget // model.get_output_embeddings().weight.shape[0])
    out = torch.cat([cross_entropy(rerun.readout_logits(model, adapter, flat[r:r + rows]), wanted[r:r + rows])
                     for r in range(0, len(flat), rows)]) if len(flat) else flat.new_zeros(0)
    return out.reshape(copies, m)


def _shifted_losses(model, adapter: Adapter, clean: CleanPass, layer: int, batch: int, shifts: torch.Tensor,
                    keep: torch.Tensor, targets: torch.Tensor, budget: int) -> torch.Tensor:
    """Returns the loss [copies, m] at the kept positions when `shifts` [copies, B, L, d] are added to the
    residual leaving block `layer` in `batch` and the model is run on from there."""
    hidden = (clean.entry(layer, batch) + shifts).flatten(0, 1)                  # [copies * B, L, d]
    if layer + 1 < len(adapters.blocks(model, adapter)):
        hidden = _blocks_after(model, adapter, clean, layer, batch, hidden, shifts.shape[0])
    return _losses(model, adapter, hidden.unflatten(0, shifts.shape[:2]), keep, targets, budget)


def _per_copy_elements(model, clean: CleanPass, layer: int, batch: int) -> int:
    """Returns about how many activation elements re-running one copy of `batch` from block layer+1 holds at once."""
    B, L, n = clean.entry(layer, batch).shape[0], clean.acts[layer].shape[1], clean.acts[layer].shape[2]
    d = clean.entry(layer, batch).shape[2]
    heads = getattr(model.config, "num_attention_heads", None) or getattr(model.config, "n_head", 1)
    return B * L * (n + 4 * d + heads * L)


@torch.no_grad()
def layer_deltas(model, adapter: Adapter, clean: CleanPass, layer: int, mean_acts: torch.Tensor,
                 targets: torch.Tensor, included: torch.Tensor, groups: list[torch.Tensor] | None = None,
                 budget: int = BUDGET, tick=None) -> torch.Tensor:
    """Returns per-position ΔLoss [M, G] of mean-ablating each group of neurons of block `layer` together.

    groups: 1-D neuron index tensors (default: every neuron alone, G = n); mean_acts [n] the
    ablation means; targets [S, L] the token predicted at each position; included [S, L] the M
    positions whose loss counts, in row-major order (EXCLUDED ones are re-run, not scored). The
    arithmetic is the model's dtype. tick(k), if given, hears of every k re-runs done (a group over
    one recorded batch each): G x batches in all (ingest/progress.py: Ticker).
    """
    n = clean.acts[layer].shape[-1]
    groups = [torch.tensor([i]) for i in range(n)] if groups is None else groups
    _, w_out = adapters.mlp_weights(model, adapter, layer)                        # [n, d]
    dtype, device = w_out.dtype, w_out.device
    mean_acts = mean_acts.to(device=device, dtype=dtype)
    included, targets = included.to(device), targets.to(device)
    out = torch.empty(int(included.sum()), len(groups), dtype=dtype, device=device)
    row = 0
    for batch in range(len(clean.final)):
        start = batch * clean.batch_size
        entry = clean.entry(layer, batch)                                         # [B, L, d]
        acts = clean.acts[layer][start:start + entry.shape[0]].to(dtype)         # [B, L, n]
        keep = included[start:start + entry.shape[0]]                            # [B, L]
        wanted = targets[start:start + entry.shape[0]][keep]                     # [m]
        m = int(keep.sum())
        if not m:
            if tick:
                tick(len(groups))
            continue
        args = (model, adapter, clean, layer, batch)
        clean_losses = _shifted_losses(*args, torch.zeros_like(entry)[None], keep, wanted, budget)[0]   # [m] same arithmetic
        per_chunk = max(1, budget // _per_copy_elements(model, clean, layer, batch))
        for g0 in range(0, len(groups), per_chunk):
            chunk = groups[g0:g0 + per_chunk]
            shifts = torch.stack([(mean_acts[g] - acts[..., g]) @ w_out[g] for g in chunk])   # [copies, B, L, d]
            out[row:row + m, g0:g0 + len(chunk)] = (_shifted_losses(*args, shifts, keep, wanted, budget) - clean_losses).T
            if tick:
                tick(len(chunk))
        row += m
    return out
