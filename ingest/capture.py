"""Forward passes that capture the studied layer's activations and the final residual."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rtn.ingest import adapters
from rtn.ingest.adapters import Adapter


@dataclass
class Capture:
    acts: torch.Tensor      # [S, L, d_mlp] activations of the studied layer (input of its down-projection)
    resid: torch.Tensor     # [S, L, d_model] final residual (input of the final norm)


@contextmanager
def hooked(module: nn.Module, pre_hook):
    """Registers a forward pre-hook for the duration of the block."""
    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def capture(model: nn.Module, adapter: Adapter, layer: int, input_ids: torch.Tensor,
            batch_size: int = 16, keep_device: bool = False) -> Capture:
    """Returns the activations and final residuals of `input_ids` [S, L] (on CPU unless keep_device)."""
    acts, resid = [], []
    store = (lambda x: x) if keep_device else (lambda x: x.cpu())

    def grab_acts(_module, inputs):
        acts.append(store(inputs[0].detach()))

    def grab_resid(_module, inputs):
        resid.append(store(inputs[0].detach()))

    device = next(model.parameters()).device
    body = model.base_model   # the blocks and the final norm: the unembedding's logits are not needed here
    with hooked(adapters.mlp_out_module(model, adapter, layer), grab_acts), \
            hooked(adapters.final_norm(model, adapter), grab_resid):
        for start in range(0, input_ids.shape[0], batch_size):
            body(input_ids[start:start + batch_size].to(device), use_cache=False)
    return Capture(torch.cat(acts), torch.cat(resid))
