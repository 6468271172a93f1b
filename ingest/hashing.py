"""Content hashes of a loaded checkpoint's weights, so a checkpoint branch that serves another's weights is noticed.

Published checkpoint branches are not always what they claim (Pythia's step0 = step1, EleutherAI/pythia#83;
Pythia-2.8B branches serving final-era weights, #205). Each tensor's bytes are hashed once, right after
loading, on the CPU copy before it moves to the device; the studied layer's hash and the whole state dict's
hash are both built from those per-tensor digests, so no tensor is hashed twice and nothing is re-read
from disk (the cost, at memory speed, is the `hash` stage in checkpoints.stage_seconds). The hash covers dtypes, shapes and bytes of the tensors as loaded (float32), not their names:
the same weights saved as safetensors or .bin, or in another dtype that converts exactly, hash alike.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from rtn.ingest import adapters


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    """Returns the sha256 of a tensor's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    digest.update(data.contiguous().view(torch.uint8).numpy().data if data.numel() else b"")
    return digest.digest()


def weight_hashes(model: nn.Module, layer: int) -> tuple[str, str]:
    """Returns (hash of the studied layer's block, hash of the whole state dict), 64 hex digits each.

    Each hash is the sha256 of its tensors' digests in sorted order: it does not depend on parameter names,
    which transformers versions rename on load (GPT-NeoX's file says embed_out, the module lm_head).
    """
    adapter = adapters.adapter_for(model)
    block_prefix = f"{adapter.blocks}.{layer}."
    state = model.state_dict()
    # tied weights (embedding = unembedding) are one tensor under two names: same key, hashed once
    keys = {name: (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)) for name, tensor in state.items()}
    unique = {key: state[name] for name, key in reversed(keys.items())}
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:   # hashlib releases the GIL on big buffers
        digests = dict(zip(unique, pool.map(_tensor_digest, unique.values())))
    whole = [digests[key] for key in keys.values()]
    studied = [digests[key] for name, key in keys.items() if name.startswith(block_prefix)]
    return _combined(studied), _combined(whole)


def _combined(digests: list[bytes]) -> str:
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()
