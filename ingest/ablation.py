"""Exact mean ablation of last-layer MLP neurons without re-running the model.

With c = mu(i) - a(t, i), the ablated final residual is r(t) + c * w(i), so (DESIGN.md)

    A = W_U (gamma * r~)   [N, V]      B = W_U (gamma * w~)   [n, V]
    s(t, i)^2 = (|r~|^2 + 2 c r~.w~ + c^2 |w~|^2) / d + eps
    logits'(t, i) = (A(t) + c B(i)) / s(t, i) + b,    b = W_U beta + b_U

r~, w~ are mean-centred for LayerNorm and left as they are for RMSNorm. Work is chunked so
that no more than `budget` elements of the [tokens, neurons, vocabulary] tensor exist at once.
A group of neurons uses the same formula with c B(i) replaced by sum_j c(j) B(j).
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

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> "Readout":
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
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon"))
    W_U = unembed.weight.detach()
    b_U = unembed.bias.detach() if getattr(unembed, "bias", None) is not None else torch.zeros(W_U.shape[0], dtype=W_U.dtype)
    return Readout(gamma, beta, eps, centred, W_U, b_U.to(W_U.device))


def token_losses(resid: torch.Tensor, targets: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Returns the clean cross-entropy loss [N] of predicting `targets` from residuals [N, d]."""
    logits = readout.logits(resid)
    return torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0]


@dataclass
class _Prepared:
    A: torch.Tensor        # [N, V]  W_U (gamma * r~)
    b: torch.Tensor        # [V]
    rr: torch.Tensor       # [N]     |r~|^2
    rw: torch.Tensor       # [N, n]  r~ . w~
    ww: torch.Tensor       # [n, n]  w~ . w~  (Gram of the neurons' centred output weights)
    B: torch.Tensor        # [n, V]  W_U (gamma * w~)
    loss: torch.Tensor     # [N]     clean loss
    d: int


def _prepare(resid, w_out, targets, readout) -> _Prepared:
    r = readout.centre(resid)                   # [N, d]
    w = readout.centre(w_out)                   # [n, d]
    A = (r * readout.gamma) @ readout.W_U.T     # [N, V]
    B = (w * readout.gamma) @ readout.W_U.T     # [n, V]
    b = readout.W_U @ readout.beta + readout.b_U
    rr = (r * r).sum(-1)
    s = torch.sqrt(rr / r.shape[-1] + readout.eps)
    logits = A / s[:, None] + b
    loss = torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0]
    return _Prepared(A, b, rr, r @ w.T, w @ w.T, B, loss, r.shape[-1])


def _ablated_loss(numer, scale, b, target_numer, target_b):
    """Returns logsumexp(numer / scale + b) - (target_numer / scale + target_b) over the last axis."""
    logits = numer / scale[..., None] + b
    return torch.logsumexp(logits, -1) - (target_numer / scale + target_b)


def _chunk(total: int, per_item: int, budget: int) -> int:
    return max(1, min(total, budget // max(1, per_item)))


@torch.no_grad()
def neuron_deltas(resid, acts, mean_acts, w_out, targets, readout: Readout,
                  neurons: torch.Tensor | None = None, budget: int = 1 << 24) -> torch.Tensor:
    """Returns per-position ΔLoss [N, k] of mean-ablating each of `neurons` (default: all) alone.

    resid [N, d] final residual (input of the final norm), acts [N, n] activations of the
    studied layer, mean_acts [n] the ablation means, w_out [n, d] the neurons' output weights,
    targets [N] the token predicted at each position.
    """
    if neurons is None:
        neurons = torch.arange(acts.shape[1], device=acts.device)
    p = _prepare(resid, w_out[neurons], targets, readout)
    c = mean_acts[neurons][None, :] - acts[:, neurons]            # [N, k]
    ww = p.ww.diagonal()                                          # [k]
    scale = torch.sqrt((p.rr[:, None] + 2 * c * p.rw + c * c * ww) / p.d + readout.eps)  # [N, k]
    N, k = c.shape
    V = p.B.shape[1]
    out = torch.empty(N, k, dtype=resid.dtype, device=resid.device)
    tok_chunk = _chunk(N, k * V, budget)
    neu_chunk = _chunk(k, V, budget) if tok_chunk == 1 else k
    A_tgt = p.A.gather(1, targets[:, None])[:, 0]                 # [N]
    B_tgt = p.B[:, targets].T                                     # [N, k]
    b_tgt = p.b[targets]                                          # [N]
    for t0 in range(0, N, tok_chunk):
        t = slice(t0, t0 + tok_chunk)
        for j0 in range(0, k, neu_chunk):
            j = slice(j0, j0 + neu_chunk)
            numer = p.A[t, None, :] + c[t, j, None] * p.B[None, j, :]         # [T, K, V]
            target_numer = A_tgt[t, None] + c[t, j] * B_tgt[t, j]             # [T, K]
            out[t, j] = _ablated_loss(numer, scale[t, j], p.b, target_numer, b_tgt[t, None]) - p.loss[t, None]
    return out


@torch.no_grad()
def group_deltas(resid, acts, mean_acts, w_out, targets, readout: Readout,
                 group: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """Returns per-position ΔLoss [N] of mean-ablating all neurons of `group` at once."""
    p = _prepare(resid, w_out[group], targets, readout)
    c = mean_acts[group][None, :] - acts[:, group]                # [N, k]
    # |r~ + sum_j c_j w~_j|^2 = |r~|^2 + 2 sum_j c_j r~.w~_j + c^T (W~ W~^T) c
    sq = p.rr + 2 * (c * p.rw).sum(-1) + ((c @ p.ww) * c).sum(-1)
    scale = torch.sqrt(sq / p.d + readout.eps)                    # [N]
    N, V = p.A.shape
    out = torch.empty(N, dtype=resid.dtype, device=resid.device)
    tok_chunk = _chunk(N, V, budget)
    for t0 in range(0, N, tok_chunk):
        t = slice(t0, t0 + tok_chunk)
        numer = p.A[t] + c[t] @ p.B                               # [T, V]
        tgt = targets[t]
        target_numer = numer.gather(1, tgt[:, None])[:, 0]
        out[t] = _ablated_loss(numer, scale[t], p.b, target_numer, p.b[tgt]) - p.loss[t]
    return out
