"""Exact mean ablation of last-layer MLP neurons without re-running the model.

With c = mu(i) - a(t, i), the ablated final residual is r(t) + c * w(i), so (DESIGN.md)

    A = W_U (gamma * r~)   [N, V]      B = W_U (gamma * w~)   [n, V]
    s(t, i)^2 = (|r~|^2 + 2 c r~.w~ + c^2 |w~|^2) / d + eps
    logits'(t, i) = (A(t) + c B(i)) / s(t, i) + b,    b = W_U beta + b_U

r~, w~ are mean-centred for LayerNorm and left as they are for RMSNorm. Single neurons are
computed in base 2 with a per-token shift folded into A (AblationTerms): two FMAs, one exp2
and one add per token x neuron x vocabulary entry, the exp being the floor for an exact
answer. On CPU the work is chunked so that no more than `budget` elements of the [tokens,
neurons, vocabulary] tensor exist at once, the chunks spread over one Python thread per core;
large problems run a torch.compile'd loop that writes none (_compiled_sums). On CUDA,
ingest/ablation_triton.py runs the same AblationTerms in one fused Triton kernel. A group of
neurons uses the same formula with c B(i) replaced by sum_j c(j) B(j) (group_deltas).
"""
from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from rtn.ingest import native
from rtn.ingest.ablation_terms import LOG2E, AblationTerms, ablation_terms, prepare, recompute_overflows
from rtn.ingest.readout import Readout, cross_entropy

COMPILE_MIN_ELEMENTS = 2e10    # tokens x neurons x vocabulary from which the CPU path compiles its fused loop
COMPILED_NEURONS = 64          # neurons per call of the compiled loop (tokens: _compiled_block); fixed shapes compile once
EAGER_CHUNK = 1 << 20          # elements of [tokens, neurons, V] per eager step: about what the caches hold
SMALLEST_SUM = 2.0 ** -64      # an exp2 sum below this had its largest terms near float32's denormals: recompute


def _chunk(total: int, per_item: int, budget: int) -> int:
    return max(1, min(total, budget // max(1, per_item)))


def _exp2_sums(A2, B2, c, alpha, b2, acc_dtype: torch.dtype, work: torch.Tensor | None = None):
    """Returns sum_v 2^(alpha (A2[t, v] + c B2[i, v]) + b2[v]) [T, K] for A2 [T, V], B2 [K, V].

    `work` (at least T * K * V elements) is reused for the [T, K, V] exponents: a fresh buffer
    of megabytes per call costs page faults that, on a small VM, take longer than the exps.
    """
    shape = (A2.shape[0], B2.shape[0], A2.shape[1])
    x = torch.addcmul(A2[:, None, :], c[..., None], B2[None],
                      out=None if work is None else work[:math.prod(shape)].view(shape))   # [T, K, V]
    x.mul_(alpha[..., None]).add_(b2)
    return x.exp2_().sum(-1, dtype=acc_dtype)


def _compiled_sums(device: torch.device, elements: int):
    """Returns the compiled _exp2_sums for a CPU problem of `elements` exps, or None to stay eager.

    Inductor fuses it into one loop over the vocabulary (one exp2 per element, nothing written,
    float64 accumulation), faster than the eager ops; compiling costs ~10-30 s once per
    vocabulary size (cached on disk), so only large problems use it. RTN_COMPILE=0 never
    compiles, RTN_COMPILE=1 always does.
    """
    wanted = os.environ.get("RTN_COMPILE", "auto")
    if device.type != "cpu" or _compile_failed or wanted == "0" or (wanted != "1" and elements < COMPILE_MIN_ELEMENTS):
        return None
    return _compile_exp2_sums()


_compile_failed = False   # set when compiling failed once: the process stays eager


@functools.lru_cache(maxsize=1)
def _compile_exp2_sums():
    return torch.compile(_exp2_sums, dynamic=False, fullgraph=True)


def warm_up_cpu(V: int, elements: int, dtype: torch.dtype = torch.float32) -> bool:
    """Compiles the CPU loop now if a problem of `elements` exps with vocabulary V would use it; returns whether so.

    Lets a timed run exclude the one-off compile.
    """
    fused = _compiled_sums(torch.device("cpu"), elements)
    if fused is None:
        return False
    (T, K), zeros = _compiled_block(), lambda *shape: torch.zeros(shape, dtype=dtype)
    return _call_fused(fused, zeros(T, V), zeros(K, V), zeros(T, K), zeros(T, K), zeros(V)) is not None


def _compiled_block() -> tuple[int, int]:
    """Returns (tokens, neurons) per compiled call: 8 token rows per core, which OpenMP splits between them."""
    return 8 * max(4, torch.get_num_threads()), COMPILED_NEURONS


def _call_fused(fused, A2, B2, c, alpha, b2):
    """Returns the compiled sums, or None (and stops compiling for the process) when compiling fails."""
    global _compile_failed
    try:
        return fused(A2, B2, c.contiguous(), alpha.contiguous(), b2, torch.float64)
    except Exception as err:   # no C++ compiler, an inductor bug: the eager ops give the same numbers
        _compile_failed = True
        warnings.warn(f"rtn: torch.compile of the ablation loop failed ({type(err).__name__}: {err}); using eager torch")
        return None


def _blocks(N: int, k: int, V: int, fused: bool, budget: int) -> list[tuple[slice, slice, bool]]:
    """Returns (tokens, neurons, compiled?) blocks tiling [N, k]: whole compiled blocks, eager chunks around them."""
    T, K = _compiled_block()
    N_fused, k_fused = (N - N % T, k - k % K) if fused else (0, 0)
    blocks = [(slice(t0, t0 + T), slice(j0, j0 + K), True)
              for t0 in range(0, N_fused, T) for j0 in range(0, k_fused, K)]
    for tokens, neurons in ((range(N_fused), range(k_fused, k)), (range(N_fused, N), range(k))):
        if not len(tokens) or not len(neurons):
            continue
        tok_chunk = _chunk(len(tokens), len(neurons) * V, budget)
        neu_chunk = _chunk(len(neurons), V, budget) if tok_chunk == 1 else len(neurons)
        blocks += [(slice(t0, min(t0 + tok_chunk, tokens.stop)), slice(j0, min(j0 + neu_chunk, neurons.stop)), False)
                   for t0 in range(tokens.start, tokens.stop, tok_chunk)
                   for j0 in range(neurons.start, neurons.stop, neu_chunk)]
    return blocks


def _fused_blocks(fused, terms: AblationTerms, out: torch.Tensor, blocks) -> bool:
    """Writes ΔLoss of the compiled blocks into `out`; returns False if compiling failed (nothing to trust then).

    Called from the main thread: each call spreads its rows over the cores itself (OpenMP), and
    holds the GIL, so Python threads would not run two at once.
    """
    for t, j, _ in blocks:
        sums = _call_fused(fused, terms.A2[t], terms.B2[j], terms.c[t, j], terms.alpha[t, j], terms.b2)
        if sums is None:
            return False
        out[t, j] = (_log_or_nan(sums) + terms.offset[t, j]).to(out.dtype)
    return True


def _eager_block(terms: AblationTerms, out: torch.Tensor, block, scratch: threading.local) -> None:
    """Writes ΔLoss of one block into `out` with eager torch ops, reusing this thread's work buffer."""
    t, j, _ = block
    size = (t.stop - t.start) * (j.stop - j.start) * terms.A2.shape[1]
    if getattr(scratch, "work", None) is None or scratch.work.numel() < size:
        scratch.work = torch.empty(size, dtype=terms.A2.dtype, device=terms.A2.device)
    sums = _exp2_sums(terms.A2[t], terms.B2[j], terms.c[t, j], terms.alpha[t, j], terms.b2, terms.A2.dtype, scratch.work)
    out[t, j] = (_log_or_nan(sums) + terms.offset[t, j]).to(out.dtype)


def _on_threads(device: torch.device, items: list, fn) -> None:
    """Calls fn on every item: on CPU from one Python thread per core, each running torch single-threaded.

    Thousands of small eager blocks, each split across cores by OpenMP, stall at every barrier
    when the machine is shared (a descheduled thread holds up the others); whole blocks per
    thread do not, and eager torch ops release the GIL.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or len(items) < 2:
        for item in items:
            fn(item)
        return

    def single_threaded(item):
        torch.set_num_threads(1)   # sets this thread's OpenMP team size too
        fn(item)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(single_threaded, items))
    finally:
        torch.set_num_threads(threads)


def _log_or_nan(sums: torch.Tensor) -> torch.Tensor:
    """Returns ln(sums), NaN where a sum is below SMALLEST_SUM (its terms lost precision as denormals or zeros)."""
    return torch.where(sums >= SMALLEST_SUM, torch.log(sums), float("nan"))


@torch.no_grad()
def neuron_deltas(resid, acts, mean_acts, w_out, targets, readout: Readout,
                  neurons: torch.Tensor | None = None, budget: int = 1 << 24) -> torch.Tensor:
    """Returns per-position ΔLoss [N, k] of mean-ablating each of `neurons` (default: all) alone.

    resid [N, d] final residual (input of the final norm), acts [N, n] activations of the
    studied layer, mean_acts [n] the ablation means, w_out [n, d] the neurons' output weights,
    targets [N] the token predicted at each position. At most `budget` elements of the
    [tokens, neurons, vocabulary] tensor exist at once (none on the compiled path).
    """
    terms = ablation_terms(resid, acts, mean_acts, w_out, targets, readout, neurons)
    sums = native.exp2_sums(terms.A2, terms.B2, terms.c, terms.alpha, terms.b2)   # None: not float32 on CPU, no gcc
    if sums is not None:
        out = (_log_or_nan(sums) + terms.offset).to(resid.dtype)
        recompute_overflows(terms, out)
        return out
    (N, k), V = terms.c.shape, terms.A2.shape[1]
    out = torch.empty(N, k, dtype=resid.dtype, device=resid.device)
    fused = _compiled_sums(resid.device, N * k * V)
    if fused is not None and not warm_up_cpu(V, N * k * V, terms.A2.dtype):
        fused = None
    if resid.device.type == "cpu":
        budget = min(budget, EAGER_CHUNK)
    blocks = _blocks(N, k, V, fused is not None, budget)
    if not _fused_blocks(fused, terms, out, [b for b in blocks if b[2]]):
        blocks = _blocks(N, k, V, False, budget)                  # compiling failed midway: all eager
    scratch = threading.local()                                   # one work buffer per thread
    _on_threads(resid.device, [b for b in blocks if not b[2]], lambda b: _eager_block(terms, out, b, scratch))
    recompute_overflows(terms, out)
    return out


@torch.no_grad()
def group_deltas(resid, acts, mean_acts, w_out, targets, readout: Readout,
                 group: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """Returns per-position ΔLoss [N] of mean-ablating all neurons of `group` at once."""
    return groups_deltas(resid, acts, mean_acts, w_out, targets, readout, [group], budget)[:, 0]


@torch.no_grad()
def groups_deltas(resid, acts, mean_acts, w_out, targets, readout: Readout,
                  groups: list[torch.Tensor], budget: int = 1 << 24) -> torch.Tensor:
    """Returns per-position ΔLoss [N, G] of mean-ablating each group's neurons together.

    The token side (A, the clean loss) is computed once for all groups.
    """
    members = torch.unique(torch.cat([g.reshape(-1) for g in groups]))             # neurons in any group
    p = prepare(resid, w_out[members], targets, readout)
    column = {int(neuron): j for j, neuron in enumerate(members.tolist())}
    N, V = p.A.shape
    out = torch.empty(N, len(groups), dtype=resid.dtype, device=resid.device)
    tok_chunk = _chunk(N, V, budget)
    C_loop = native.available() and resid.device.type == "cpu" and resid.dtype == torch.float32
    if C_loop:   # base 2, shifted by each token's clean max logit (times its scale: alpha = 1 / scale multiplies it)
        A2, B2, b2 = p.A.mul_(LOG2E), p.B * LOG2E, p.b * LOG2E                    # p.A is not used again as it was
    rows = torch.arange(N, device=targets.device)
    for g, group in enumerate(groups):
        cols = torch.tensor([column[int(i)] for i in group.reshape(-1).tolist()], device=acts.device)
        c = mean_acts[group][None, :] - acts[:, group]                # [N, k]
        # |r~ + sum_j c_j w~_j|^2 = |r~|^2 + 2 sum_j c_j r~.w~_j + c^T (W~ W~^T) c
        sq = p.rr + 2 * (c * p.rw[:, cols]).sum(-1) + ((c @ p.ww[cols][:, cols]) * c).sum(-1)
        scale = torch.sqrt(sq / p.d + readout.eps)                    # [N]
        if C_loop:
            sums = native.exp2_group_sums(A2, B2[cols], c, 1 / scale, -(p.max_logit * LOG2E) * scale, b2)
            target = (A2[rows, targets] + (c * B2[cols][:, targets].T).sum(-1)) / (LOG2E * scale) + p.b[targets]
            losses = torch.log(sums) + p.max_logit - target
            out[:, g] = (losses - p.loss).to(out.dtype)
            redo = ~torch.isfinite(out[:, g]) | (sums < SMALLEST_SUM)   # an ~87-nat effect, or every term underflowed
            for t in redo.nonzero().reshape(-1).split(tok_chunk):
                logits = (A2[t] + c[t] @ B2[cols]) / (LOG2E * scale[t, None]) + p.b
                out[t, g] = cross_entropy(logits, targets[t]) - p.loss[t]
            continue
        B = p.B[cols]                                                 # [k, V]
        for t0 in range(0, N, tok_chunk):
            t = slice(t0, t0 + tok_chunk)
            logits = (p.A[t] + c[t] @ B) / scale[t, None] + p.b       # [T, V]
            out[t, g] = cross_entropy(logits, targets[t]) - p.loss[t]
    return out


def ablate_all(resid, acts, mean_acts, w_out, targets, readout: Readout) -> torch.Tensor:
    """Returns per-position ΔLoss [M, n] of every neuron: the fused Triton kernel on CUDA, chunked torch elsewhere.

    The kernel's arithmetic is float32, so float64 inputs (--precision float64) stay on the
    torch path, on whatever device they are.
    """
    if resid.is_cuda and resid.dtype == torch.float32:
        from rtn.ingest import ablation_triton  # imports triton only when called
        if ablation_triton.available():
            return ablation_triton.neuron_deltas_triton(resid, acts, mean_acts, w_out, targets, readout)
    return neuron_deltas(resid, acts, mean_acts, w_out, targets, readout)
