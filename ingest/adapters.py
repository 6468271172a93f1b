"""One small mapping per model family: where the studied MLP, final norm and unembedding live.

Nothing else in rtn says `if "gpt2" in name`; code asks `adapter_for(model)` instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtn.errors import RtnError


@dataclass(frozen=True)
class Adapter:
    family: str              # name stored in runs.family
    model_types: tuple       # config.model_type values this adapter serves
    blocks: str              # attribute path from the model to its list of blocks
    w_in: str                # path from a block to the MLP up-projection
    w_out: str               # path from a block to the MLP down-projection; its input is the activation
    attn_out: str            # path from a block to the attention output projection; its input is the heads
    attention: str           # path from a block to its attention module: every matrix under it has role 'attention'
    final_norm: str          # path from the model to the norm before the unembedding
    conv1d: bool = False     # GPT-2 Conv1D stores weights as [in, out] rather than nn.Linear's [out, in]
    n_heads_attr: str = "num_attention_heads"
    w_gate: str | None = None  # path from a block to a gated MLP's gate projection (also role 'mlp_in')


ADAPTERS = (
    Adapter("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h",
            "attention.dense", "attention", "gpt_neox.final_layer_norm"),
    Adapter("gpt2", ("gpt2",), "transformer.h", "mlp.c_fc", "mlp.c_proj",
            "attn.c_proj", "attn", "transformer.ln_f", conv1d=True, n_heads_attr="n_head"),
    # Llama-style blocks use RMSNorm; the activation is the input of down_proj (act(gate) * up).
    Adapter("llama", ("llama", "mistral", "qwen2"), "model.layers", "mlp.up_proj", "mlp.down_proj",
            "self_attn.o_proj", "self_attn", "model.norm", w_gate="mlp.gate_proj"),
)

# What a 2-D weight matrix is for (weight_spectra.role); the app picks the studied layer's mlp_out by it.
ROLES = ("attention", "mlp_in", "mlp_out", "embedding", "unembedding", "other")


def adapter_for_type(model_type: str) -> Adapter:
    """Returns the adapter serving a config.model_type, or raises a one-line RtnError."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise RtnError(f"unknown architecture {model_type!r}: rtn has adapters for {known}")


def adapter_for(model: nn.Module) -> Adapter:
    """Returns the adapter for a loaded Hugging Face model."""
    return adapter_for_type(model.config.model_type)


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Returns the submodule at a dotted attribute path."""
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def blocks(model: nn.Module, adapter: Adapter) -> nn.ModuleList:
    """Returns the model's transformer blocks."""
    return get_path(model, adapter.blocks)


def check_layer(layer: int, n_layers: int) -> int:
    """Returns a 0-based block index for `layer` (negative counts from the end), or raises a one-line RtnError."""
    if not -n_layers <= layer < n_layers:
        raise RtnError(f"--layer {layer} does not exist: the model has {n_layers} layers (0..{n_layers - 1} or -1)")
    return layer % n_layers


def resolve_layer(model: nn.Module, adapter: Adapter, layer: int) -> int:
    """Returns a 0-based block index for `layer` of a loaded model (negative counts from the end)."""
    return check_layer(layer, len(blocks(model, adapter)))


def mlp_out_module(model: nn.Module, adapter: Adapter, layer: int) -> nn.Module:
    """Returns the down-projection of a block; a forward pre-hook on it sees the activations."""
    return get_path(blocks(model, adapter)[layer], adapter.w_out)


def attn_out_module(model: nn.Module, adapter: Adapter, layer: int) -> nn.Module:
    """Returns the attention output projection; its input is the concatenated head outputs."""
    return get_path(blocks(model, adapter)[layer], adapter.attn_out)


def n_heads(model: nn.Module, adapter: Adapter) -> int:
    """Returns the number of attention heads per layer."""
    return int(getattr(model.config, adapter.n_heads_attr))


def _as_rows(weight: torch.Tensor, adapter: Adapter) -> torch.Tensor:
    # nn.Linear weight is [out, in]; Conv1D's is [in, out]
    return weight if adapter.conv1d else weight.T


def mlp_weights(model: nn.Module, adapter: Adapter, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (w_in [d_mlp, d_model], w_out [d_mlp, d_model]): row i belongs to neuron i."""
    block = blocks(model, adapter)[layer]
    w_in = get_path(block, adapter.w_in).weight       # Linear [d_mlp, d_model] / Conv1D [d_model, d_mlp]
    w_out = get_path(block, adapter.w_out).weight     # Linear [d_model, d_mlp] / Conv1D [d_mlp, d_model]
    w_in_rows = w_in.T if adapter.conv1d else w_in
    return w_in_rows.detach(), _as_rows(w_out, adapter).detach()


def final_norm(model: nn.Module, adapter: Adapter) -> nn.Module:
    """Returns the norm applied to the residual stream before the unembedding."""
    return get_path(model, adapter.final_norm)


def matrix_layer(name: str, model: nn.Module, adapter: Adapter) -> int:
    """Returns the block index of a state-dict parameter name, or -1 outside the blocks."""
    prefix = adapter.blocks + "."
    if name.startswith(prefix):
        return int(name[len(prefix):].split(".")[0])
    return -1


def matrix_role(name: str, param: torch.Tensor, model: nn.Module, adapter: Adapter) -> str:
    """Returns the ROLES entry of a 2-D parameter: attention, mlp_in, mlp_out, embedding, unembedding or other.

    A tied unembedding is the input embedding's matrix, listed once, as 'embedding'.
    """
    prefix = adapter.blocks + "."
    if name.startswith(prefix):
        inside = name[len(prefix):].split(".", 1)[1].rsplit(".", 1)[0]   # module path within the block
        if inside == adapter.w_out:
            return "mlp_out"
        if inside in (adapter.w_in, adapter.w_gate):
            return "mlp_in"
        if inside == adapter.attention or inside.startswith(adapter.attention + "."):
            return "attention"
        return "other"
    if param is model.get_input_embeddings().weight or isinstance(get_path(model, name.rsplit(".", 1)[0]), nn.Embedding):
        return "embedding"     # token and (GPT-2) position embeddings
    output = model.get_output_embeddings()
    return "unembedding" if output is not None and param is output.weight else "other"
