"""Re-run a model from block l on, with a patch, from the inputs a clean run gave that block.

    with recording(model, adapter, layers=[28, 29]) as cache:
        for ids in batches:
            model(ids, use_cache=False)                      # the clean run, hooks and all
    for hidden in rerun(model, adapter, cache, 28, [(module, pre_hook)]):
        logits = readout_logits(model, adapter, hidden)     # [B, L, V] as the patched whole model computes them

An ablation at block l cannot change anything before it, so the residual entering block l is the
clean one. A clean pass records, per batch, that residual and the arguments every block from l
on was called with (attention mask, rotary position embeddings, ...: whatever the family passes,
replayed verbatim, so GPT-NeoX's parallel attention + MLP, GPT-2 and Llama need no case of their
own). Re-running then costs the blocks from l on, the final norm and the unembedding, instead of
the whole model. The recorded arguments are references to tensors the clean run made anyway;
only the residual at each chosen layer [S, L, d] is extra memory.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from rtn.ingest import adapters
from rtn.ingest.adapters import Adapter
from rtn.ingest.capture import hooked


@dataclass
class BlockCalls:
    """What a clean run passed to the blocks from `first` on, one entry per forward pass (batch)."""
    first: int                                                  # lowest block whose calls are kept
    layers: tuple[int, ...]                                     # blocks whose input residual is kept
    residuals: dict[int, list[torch.Tensor]] = field(default_factory=dict)   # layer -> per batch [B, L, d]
    calls: dict[int, list[tuple[tuple, dict]]] = field(default_factory=dict)  # block -> per batch (args[1:], kwargs)

    def n_batches(self) -> int:
        return len(self.calls.get(self.first, []))


@contextmanager
def recording(model: torch.nn.Module, adapter: Adapter, layers):
    """Yields a BlockCalls that every forward pass of `model` inside the block appends to."""
    layers = tuple(sorted(set(layers)))
    blocks = adapters.blocks(model, adapter)
    cache = BlockCalls(first=layers[0], layers=layers,
                       residuals={layer: [] for layer in layers},
                       calls={index: [] for index in range(layers[0], len(blocks))})

    def record(index):
        def hook(_module, args, kwargs):
            if index in cache.residuals:
                cache.residuals[index].append(args[0].detach())
            cache.calls[index].append((args[1:], dict(kwargs)))
        return hook

    handles = [blocks[index].register_forward_pre_hook(record(index), with_kwargs=True) for index in cache.calls]
    try:
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def _hidden(output) -> torch.Tensor:
    """Returns a block's output residual: older transformers return a tuple, newer the tensor."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def rerun(model: torch.nn.Module, adapter: Adapter, cache: BlockCalls, layer: int, patches=()):
    """Yields, per recorded batch, the residual [B, L, d] entering the final norm when the model is re-run
    from block `layer` (one of cache.layers) with `patches` — (module, forward pre-hook) pairs — in place."""
    if layer not in cache.residuals:
        raise ValueError(f"block {layer} was not recorded (recorded: {cache.layers})")
    blocks = adapters.blocks(model, adapter)
    with ExitStack() as stack:
        for module, pre_hook in patches:
            stack.enter_context(hooked(module, pre_hook))
        for batch, hidden in enumerate(cache.residuals[layer]):
            for index in range(layer, len(blocks)):
                args, kwargs = cache.calls[index][batch]
                hidden = _hidden(blocks[index](hidden, *args, **kwargs))
            yield hidden


def readout_logits(model: torch.nn.Module, adapter: Adapter, hidden: torch.Tensor) -> torch.Tensor:
    """Returns the logits [..., V] of final residuals [..., d]: the model's own final norm and unembedding."""
    return model.get_output_embeddings()(adapters.final_norm(model, adapter)(hidden))
