"""The final norm and unembedding (everything after the last block), and cross-entropy.

    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    losses = token_losses(final_residuals, targets, readout)     # [N], as the model computes them
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Readout:
    """The final norm and unembedding: everything after the last block."""
    gamma: torch.Tensor        # [d] norm scale
    beta: torch.Tensor         # [d] norm shift (zeros for RMSNorm)
    eps: float
    centred: bool              # LayerNorm subtracts the mean; RMSNorm does not
    W_U: torch.Tensor          # [V, d]
    b_U: torch.Tensor          # [V] (zeros when the unembedding has no bias)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Readout:
        move = lambda t: t.to(device=device or t.device, dtype=dtype)
        return Readout(move(self.gamma), move(self.beta), self.eps, self.centred, move(self.W_U), move(self.b_U))

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """Returns x mean-centred over its last axis for LayerNorm, x itself for RMSNorm."""
        return x - x.mean(-1, keepdim=True) if self.centred else x

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Returns the logits [N, V] of final residuals [N, d], as the model computes them."""
        r = self.centre(resid)
        scale = torch.sqrt((r * r).mean(-1, keepdim=True) + self.eps)
        return (r / scale * self.gamma + self.beta) @ self.W_U.T + self.b_U


def readout_of(norm: nn.Module, unembed: nn.Module) -> Readout:
    """Returns the Readout of a model's final norm (LayerNorm or RMSNorm) and unembedding."""
    gamma = norm.weight.detach()
    centred = isinstance(norm, nn.LayerNorm)
    beta = norm.bias.detach() if centred and norm.bias is not None else torch.zeros_like(gamma)
    eps = float(getattr(norm, "eps", None) or norm.variance_epsilon)
    W_U = unembed.weight.detach()
    b_U = unembed.bias.detach() if getattr(unembed, "bias", None) is not None else torch.zeros(W_U.shape[0], dtype=W_U.dtype)
    return Readout(gamma, beta, eps, centred, W_U, b_U.to(W_U.device))


NATIVE_MIN_ELEMENTS = 1 << 20   # logits from which cross_entropy takes the C loop


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Returns the loss [...] of predicting `targets` [...] from `logits` [..., V]: logsumexp minus the target's logit.

    Large float32 CPU logits without gradients go through the C loop (ingest/native.py): the same
    numbers (float64 sums), two reads of the logits instead of log-softmax's passes.
    """
    if logits.ndim == 2 and logits.numel() >= NATIVE_MIN_ELEMENTS and not (logits.requires_grad and torch.is_grad_enabled()):
        from rtn.ingest import native
        losses = native.cross_entropy(logits.detach(), targets)       # None unless float32 on CPU with the C loop
        if losses is not None:
            return losses
    return torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None])[..., 0]


def token_losses(resid: torch.Tensor, targets: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Returns the clean cross-entropy loss [N] of predicting `targets` from residuals [N, d]."""
    return cross_entropy(readout.logits(resid), targets)
