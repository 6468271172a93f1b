"""The exact single-neuron ablation formula as tensors both fast paths consume (the CPU loops and the Triton kernel).

With c = mu(i) - a(t, i), the ablated final residual is r(t) + c * w(i), so (DESIGN.md)

    A = W_U (gamma * r~)   [N, V]      B = W_U (gamma * w~)   [n, V]
    s(t, i)^2 = (|r~|^2 + 2 c r~.w~ + c^2 |w~|^2) / d + eps
    logits'(t, i) = (A(t) + c B(i)) / s(t, i) + b,    b = W_U beta + b_U

`prepare` computes the GEMMs and dot products; `ablation_terms` turns them into base-2 terms
(AblationTerms) that ingest/ablation.py sums on CPU and ingest/ablation_triton.py on CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rtn.ingest.native import LOG2E
from rtn.ingest.readout import Readout, cross_entropy

LN2 = math.log(2.0)


@dataclass
class Prepared:
    A: torch.Tensor        # [N, V]  W_U (gamma * r~)
    b: torch.Tensor        # [V]
    rr: torch.Tensor       # [N]     |r~|^2
    rw: torch.Tensor       # [N, n]  r~ . w~
    ww: torch.Tensor       # [n, n]  w~ . w~  (Gram of the neurons' centred output weights)
    B: torch.Tensor        # [n, V]  W_U (gamma * w~)
    loss: torch.Tensor     # [N]     clean loss
    max_logit: torch.Tensor  # [N]   clean max logit
    d: int


def prepare(resid, w_out, targets, readout) -> Prepared:
    r = readout.centre(resid)                   # [N, d]
    w = readout.centre(w_out)                   # [n, d]
    A = (r * readout.gamma) @ readout.W_U.T     # [N, V]
    B = (w * readout.gamma) @ readout.W_U.T     # [n, V]
    b = readout.W_U @ readout.beta + readout.b_U
    rr = (r * r).sum(-1)
    s = torch.sqrt(rr / r.shape[-1] + readout.eps)
    logits = A / s[:, None] + b
    loss = cross_entropy(logits, targets)
    return Prepared(A, b, rr, r @ w.T, w @ w.T, B, loss, logits.max(-1).values, r.shape[-1])


@dataclass
class AblationTerms:
    """The single-neuron formula in base 2, shifted so that no exponent overflows or underflows.

    With x(t, i, v) = alpha(t, i) (A2[t, v] + c(t, i) B2[i, v]) + b2[v]:

        ΔLoss(t, i) = ln sum_v 2^x(t, i, v) + offset(t, i)

    x is the ablated logit times log2(e), minus alpha s0 M(t), where M(t) is the clean max logit
    (base 2) and s0 the clean scale: the subtraction is folded into A2's rows, so at c = 0 the
    largest term is exactly 2^0, and an ablation moves it only by its (small) effect. So the
    sum needs no running max, and costs two FMAs, one exp2 and one add per element. It
    overflows float32 only for effects beyond ~88 nats; recompute_overflows handles those.
    """
    A2: torch.Tensor       # [N, V] log2(e) W_U (gamma * r~(t)) - s0(t) M(t)
    B2: torch.Tensor       # [k, V] log2(e) W_U (gamma * w~(i))
    b2: torch.Tensor       # [V]    log2(e) (W_U beta + b_U)
    c: torch.Tensor        # [N, k] mu(i) - a(t, i)
    alpha: torch.Tensor    # [N, k] 1 / s(t, i)
    offset: torch.Tensor   # [N, k] -(ln 2 x(t, i, target(t)) + clean loss(t))


@torch.no_grad()
def ablation_terms(resid, acts, mean_acts, w_out, targets, readout: Readout,
                   neurons: torch.Tensor | None = None) -> AblationTerms:
    """Returns the AblationTerms of mean-ablating each of `neurons` (default: all) alone."""
    if neurons is None:
        neurons = torch.arange(acts.shape[1], device=acts.device)
    p = prepare(resid, w_out[neurons], targets, readout)
    c = mean_acts[neurons][None, :] - acts[:, neurons]            # [N, k]
    alpha = torch.rsqrt((p.rr[:, None] + 2 * c * p.rw + c * c * p.ww.diagonal()) / p.d + readout.eps)  # [N, k]
    s0 = torch.sqrt(p.rr / p.d + readout.eps)                     # [N] clean scale
    A2 = p.A.mul_(LOG2E).sub_((s0 * p.max_logit * LOG2E)[:, None])   # in place: A is the largest tensor here
    B2, b2 = p.B.mul_(LOG2E), p.b * LOG2E
    rows = torch.arange(len(targets), device=targets.device)
    x_target = alpha * (A2[rows, targets][:, None] + c * B2[:, targets].T) + b2[targets][:, None]   # [N, k]
    return AblationTerms(A2, B2, b2, c, alpha, -(LN2 * x_target + p.loss[:, None]))


def recompute_overflows(terms: AblationTerms, out: torch.Tensor) -> None:
    """Recomputes with a max-shifted logsumexp the entries of `out` left non-finite: sums that overflowed or underflowed."""
    bad = (~torch.isfinite(out)).nonzero()                        # [m, 2] (token, neuron)
    for pairs in bad.split(64):
        t, i = pairs[:, 0], pairs[:, 1]
        x = terms.alpha[t, i, None] * (terms.A2[t] + terms.c[t, i, None] * terms.B2[i]) + terms.b2   # [m, V]
        out[t, i] = (torch.logsumexp(x * LN2, -1) + terms.offset[t, i]).to(out.dtype)
