"""Exact all-neuron mean ablation in one fused Triton kernel (CUDA; the Triton interpreter on CPU).

    from rtn.ingest.ablation_triton import available, neuron_deltas_triton
    if available():
        deltas = neuron_deltas_triton(resid, acts, mean_acts, w_out, targets, readout)   # [N, n]

The kernel computes ablation.AblationTerms, the same base-2 formula as the CPU path:

    ΔLoss(t, i) = ln sum_v 2^(alpha(t,i) (A2[t,v] + c(t,i) B2[i,v]) + b2[v]) + offset(t, i)

One program owns BLOCK_T tokens x BLOCK_I neurons and streams the vocabulary in tiles of
BLOCK_V: it loads A2 [BLOCK_V, BLOCK_T], B2 [BLOCK_V, BLOCK_I] and b2 [BLOCK_V], forms the
BLOCK_V x BLOCK_T x BLOCK_I exponents in registers and adds their exp2 into a [BLOCK_T, BLOCK_I]
accumulator: two FMAs, one exp2 and one add per (token, neuron, vocabulary entry) — the exp2
is the floor — and nothing of size tokens x neurons x vocabulary is ever written. Choices:
* No division and no running max: alpha = 1/s is precomputed, and AblationTerms folds a
  per-token shift (the clean max logit) into A2, so the largest term stays near 2^0 and the sum
  needs no rescaling. An effect beyond ~88 nats would overflow float32 (or underflow it): such
  entries come back non-finite and torch recomputes them (ablation.recompute_overflows).
* The vocabulary axis comes first in the 3-D tile, so Triton's default layout (threads along
  the last axes) keeps each thread's BLOCK_V terms in that thread: the per-tile sum needs no
  shuffles. The vocabulary is zero-padded to a multiple of the tile (b2 = -inf there) and rows
  past the token/neuron edges are clamped, so the loop has no masks.
* Accuracy: each tile's BLOCK_V terms are summed in registers, then added to the accumulator
  with Kahan compensation, so the float32 sum over ~50k terms keeps ~1e-7 relative error
  (plain sequential accumulation over thousands of tiles drifts towards ~1e-5).
* A2, B2, alpha, offset are computed by torch (two GEMMs and [N, n] elementwise work) in the
  caller's dtype and cast to float32; the kernel's arithmetic is float32.
Groups of neurons ablated together cost one [N, V] pass per group, not N x n x V: they use
ablation.group_deltas on the GPU as it is.

Triton is imported only inside functions, so CPU machines never import it. TRITON_INTERPRET=1
runs the kernel in Triton's interpreter on CPU tensors (slow; the tests use tiny sizes); Triton
reads it when first imported, so it must be set before that (tests/unit/test_triton.py uses a
subprocess).
"""
from __future__ import annotations

import functools
import os

import torch

from rtn.ingest.ablation_terms import AblationTerms, ablation_terms, recompute_overflows
from rtn.ingest.readout import Readout

tl = None   # triton.language, bound by _kernel() on first use

# (BLOCK_T, BLOCK_I, BLOCK_V, num_warps, STAGES): a [BLOCK_V, BLOCK_T, BLOCK_I] tile per loop step.
# Compiled for sm_90 (ptxas, no GPU needed) these use 80-170 registers, no spills, and the loop
# issues ~0.8 instructions per MUFU slot (64 exp2 per thread per step), i.e. it is exp-bound on
# paper; STAGES = 1 turns the cp.async pipelining off, for comparison. The autotuner picks.
CONFIGS = ((32, 32, 16, 8, 3), (32, 32, 16, 8, 4), (32, 32, 16, 8, 1), (32, 64, 8, 8, 3), (64, 32, 8, 8, 3),
           (64, 64, 4, 8, 3), (32, 32, 8, 4, 3), (64, 64, 8, 16, 3), (32, 64, 16, 16, 3))
INTERPRET_CONFIG = (8, 4, 16, 1, 1)   # small blocks so that tiny test sizes still span several programs
V_MULTIPLE = 64                    # the vocabulary is zero-padded to a multiple of every BLOCK_V


def _ablation_kernel(A2, B2, b2, c, alpha, offset, out, N, n, V_padded,
                     BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_V: tl.constexpr, STAGES: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)   # [BT]
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)   # [BI]
    mask = (offs_t < N)[:, None] & (offs_i < n)[None, :]          # [BT, BI]
    # Rows past the edge re-read the last row, so that the loop needs no masks; they are not stored.
    rows_t = tl.minimum(offs_t, N - 1).to(tl.int64)
    rows_i = tl.minimum(offs_i, n - 1).to(tl.int64)
    pairs = rows_t[:, None] * n + rows_i[None, :]                 # [BT, BI] into the [N, n] arrays
    cc = tl.load(c + pairs)[None, :, :]                           # [1, BT, BI]
    al = tl.load(alpha + pairs)[None, :, :]
    a_ptrs = A2 + rows_t[None, :] * V_padded + tl.arange(0, BLOCK_V)[:, None]   # [BV, BT]
    b_ptrs = B2 + rows_i[None, :] * V_padded + tl.arange(0, BLOCK_V)[:, None]   # [BV, BI]
    bias_ptrs = b2 + tl.arange(0, BLOCK_V)                        # [BV]
    acc = tl.zeros([BLOCK_T, BLOCK_I], dtype=tl.float32)
    comp = tl.zeros([BLOCK_T, BLOCK_I], dtype=tl.float32)         # Kahan compensation
    for _ in tl.range(0, V_padded, BLOCK_V, num_stages=STAGES):   # loads run STAGES-1 tiles ahead (cp.async)
        a = tl.load(a_ptrs)[:, :, None]                           # [BV, BT, 1]
        b = tl.load(b_ptrs)[:, None, :]                           # [BV, 1, BI]
        bias = tl.load(bias_ptrs)[:, None, None]                  # [BV, 1, 1]; -inf in the padding
        part = tl.sum(tl.exp2((a + cc * b) * al + bias), axis=0)  # [BT, BI]: 2 FMAs + exp2 + add per element
        y = part - comp
        total = acc + y
        comp = (total - acc) - y
        acc = total
        a_ptrs += BLOCK_V
        b_ptrs += BLOCK_V
        bias_ptrs += BLOCK_V
    # A sum below ablation.SMALLEST_SUM (2^-64), inf or NaN lost precision: NaN makes torch recompute it.
    log_sum = tl.where(acc >= 5.421010862427522e-20, tl.log(acc), float("nan"))
    tl.store(out + pairs, log_sum + tl.load(offset + pairs), mask=mask)


def _exp2_chain_kernel(x, out, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x + offs)                                         # in (-1, 0]
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(ITERS):
        v = tl.exp2(v) - 1.5                                      # tends to the fixed point ~-0.6: never 0 or denormal
        acc += v
    tl.store(out + offs, acc)


def exp2_throughput(iters: int = 16384, block: int = 2048, num_warps: int = 8) -> float:
    """Returns exp2 per second of this GPU, measured by a kernel doing nothing else (the floor's rate).

    torch.exp over a tensor measures memory bandwidth on a GPU, about 10x below the exp units.
    """
    kernel = _import_triton().jit(_exp2_chain_kernel)
    programs = torch.cuda.get_device_properties(0).multi_processor_count * 8
    x = -torch.rand(programs * block, device="cuda")
    out = torch.empty_like(x)
    run = lambda: kernel[(programs,)](x, out, ITERS=iters, BLOCK=block, num_warps=num_warps)
    run()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return programs * block * iters / best


def _import_triton():
    """Returns the triton module, binding this module's `tl` that the kernels' source refers to."""
    global tl
    import triton
    import triton.language
    tl = triton.language
    return triton


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _kernel(interpret: bool):
    """Returns the kernel: autotuned over CONFIGS on a GPU, plain (one small config) in the interpreter."""
    triton = _import_triton()
    kernel = triton.jit(_ablation_kernel)   # reads TRITON_INTERPRET now, hence one kernel per mode
    if interpret:
        return kernel
    configs = [triton.Config({"BLOCK_T": bt, "BLOCK_I": bi, "BLOCK_V": bv, "STAGES": st}, num_warps=w)
               for bt, bi, bv, w, st in CONFIGS]
    return triton.autotune(configs, key=["n", "V_padded"])(kernel)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Returns whether Triton imports (it ships with CUDA builds of torch; `pip install rtn[gpu]`)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def run_kernel(terms: AblationTerms) -> torch.Tensor:
    """Returns ΔLoss [N, k] (float32) of AblationTerms by the fused kernel, overflows recomputed by torch."""
    f32 = lambda x: x.to(torch.float32).contiguous()
    c, alpha, offset = f32(terms.c), f32(terms.alpha), f32(terms.offset)
    (N, k), V = c.shape, terms.A2.shape[1]
    pad = -V % V_MULTIPLE                                         # the kernel streams whole tiles
    A2 = torch.nn.functional.pad(f32(terms.A2), (0, pad))        # [N, V + pad] zeros past V
    B2 = torch.nn.functional.pad(f32(terms.B2), (0, pad))
    b2 = torch.nn.functional.pad(f32(terms.b2), (0, pad), value=float("-inf"))   # 2^-inf = 0
    out = torch.empty(N, k, dtype=torch.float32, device=c.device)
    interpret = _interpreting()
    kernel = _kernel(interpret)
    if interpret:
        bt, bi, bv, _, st = INTERPRET_CONFIG
        kernel[(-(-N // bt), -(-k // bi))](A2, B2, b2, c, alpha, offset, out, N, k, V + pad,
                                           BLOCK_T=bt, BLOCK_I=bi, BLOCK_V=bv, STAGES=st)
    else:
        grid = lambda meta: (-(-N // meta["BLOCK_T"]), -(-k // meta["BLOCK_I"]))
        kernel[grid](A2, B2, b2, c, alpha, offset, out, N, k, V + pad, enable_fp_fusion=True)   # FMAs, explicitly
    recompute_overflows(AblationTerms(A2[:, :V], B2[:, :V], b2[:V], c, alpha, offset), out)
    return out


@torch.no_grad()
def neuron_deltas_triton(resid, acts, mean_acts, w_out, targets, readout: Readout,
                         neurons: torch.Tensor | None = None) -> torch.Tensor:
    """Returns per-position ΔLoss [N, k] of mean-ablating each of `neurons` (default: all) alone.

    Same arguments and result as ablation.neuron_deltas; the exp-and-sum runs in the fused
    kernel in float32 (the terms are formed in the inputs' dtype first).
    """
    terms = ablation_terms(resid, acts, mean_acts, w_out, targets, readout, neurons)
    return run_kernel(terms).to(resid.dtype)


def best_config() -> dict | None:
    """Returns the block sizes the autotuner picked last (None before the first GPU run)."""
    kernel = _kernel(False) if available() and not _interpreting() else None
    config = getattr(kernel, "best_config", None)
    return None if config is None else {**config.kwargs, "num_warps": config.num_warps}
