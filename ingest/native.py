"""The CPU ablation loop in C: sum_v 2^x over the vocabulary with a vectorised exp2, compiled once per machine.

    sums = native.exp2_sums(A2, B2, c, alpha, b2)    # [N, k] float64, or None (then use ingest/ablation.py's torch)
    sums = native.exp2_group_sums(A2, B2, c, alpha, shift, b2)   # [N] float64: a group of neurons at once, or None
    losses = native.cross_entropy(logits, targets)   # [N], or None

Exact single-neuron ablation costs one exp per token x neuron x vocabulary entry (ingest/ablation.py);
on a CPU that exp is the whole cost. torch's exp2 (eager or compiled by inductor) runs a general
libm-grade routine; here x is range-reduced to n + f with |f| <= 1/2 and 2^f is a degree-7
polynomial (its truncation error below 6e-9 relative, under float32's rounding), with 2^n added
into the exponent bits: about 2.5x the inductor loop's rate on the same cores (`rtn bench`).

Exactness guards, as the torch paths have them: a sum that overflows float32 is +inf, and a term
below float32's normal range counts as 0 (flush-to-zero; at most V * 2^-126 beside a largest term
near 2^0), so callers recompute non-finite and too-small sums with a max-shifted logsumexp
(ablation.recompute_overflows). With AVX-512, scalef applies 2^n with that range handling built in;
with AVX2, 2^n goes into the exponent bits, exponents are clamped at -126 and checked against 126.
Sums accumulate in float32 over 1024 entries, then in float64.

The source below is compiled with the machine's gcc (AVX-512 or AVX2 with FMA, whichever the CPU
has) into $RTN_CACHE/native/ on first use, keyed by the source and the CPU's flags, and loaded
with ctypes; calls release the GIL, so one Python thread per core runs them side by side. Without
gcc, or on another CPU, or with RTN_NATIVE=0, every function returns None and the torch paths run.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

LOG2E = 1.0 / math.log(2.0)    # exp(x) = 2^(x log2 e): exp2 is the cheaper instruction on CPUs and GPUs alike
TOKEN_BLOCK = 16       # token rows sharing each chunk of B's rows while it is in cache
NEURON_BLOCK = 64      # neurons (B rows) per block: 64 x 1024 floats = 256 KiB, an L2's worth

SOURCE = r"""
#include <stdint.h>
#include <immintrin.h>

#ifdef __AVX512F__
#define W 16
typedef __m512 vf;
#define SET1 _mm512_set1_ps
#define LOAD _mm512_loadu_ps
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define FMA _mm512_fmadd_ps
#define MAX _mm512_max_ps
#define ZERO _mm512_setzero_ps
static inline vf roundv(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* p 2^n by scalef: +inf above float32's range, 0 below it (flush-to-zero is set while the loops run) */
static inline vf scalev(vf p, vf n) { return _mm512_scalef_ps(p, n); }
#define CLAMP(x) (x)
static inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
#else
#define W 8
typedef __m256 vf;
#define SET1 _mm256_set1_ps
#define LOAD _mm256_loadu_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define FMA _mm256_fmadd_ps
#define MAX _mm256_max_ps
#define ZERO _mm256_setzero_ps
static inline vf roundv(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* p 2^n by adding n into the exponent bits: x is clamped below at -126, sums are checked for exponents above TOO_BIG */
static inline vf scalev(vf p, vf n) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}
#define CLAMP(x) MAX(x, SET1(-126.0f))
static inline float hsum(vf v) { float a[W]; _mm256_storeu_ps(a, v); float s = 0; for (int l = 0; l < W; l++) s += a[l]; return s; }
static inline float hmax(vf v) { float a[W]; _mm256_storeu_ps(a, v); float m = a[0]; for (int l = 1; l < W; l++) m = a[l] > m ? a[l] : m; return m; }
#endif

#define CHUNK 1024
#define TOO_BIG 126.0f

/* 2^x: x = n + f, |f| <= 1/2, 2^f a degree-7 polynomial (< 6e-9 relative beside float32's rounding), times 2^n */
static inline vf exp2v(vf x) {
    vf n = roundv(x);
    vf f = SUB(x, n);
    vf p = FMA(SET1(1.5252733804059841e-05f), f, SET1(1.5403530393381606e-04f));
    p = FMA(p, f, SET1(1.3333558146428443e-03f));
    p = FMA(p, f, SET1(9.6181291076284772e-03f));
    p = FMA(p, f, SET1(5.5504108664821580e-02f));
    p = FMA(p, f, SET1(2.4022650695910072e-01f));
    p = FMA(p, f, SET1(6.9314718055994531e-01f));
    p = FMA(p, f, SET1(1.0f));
    return scalev(p, n);
}

static inline float exp2s(float x) { return __builtin_exp2f(x < -126.0f ? -126.0f : x); }

/* sum over v in [v0, v1) of 2^(al (a[v] + ct bb[v]) + b[v]); bb may be 0 (no neuron term).
   *big is set if an exponent exceeds TOO_BIG (AVX2) or the sum is not finite (AVX-512) */
static double chunk_sum(const float* a, const float* bb, const float* b, float ct, float al, int v0, int v1, int* big) {
    vf vct = SET1(ct), val = SET1(al);
    vf acc0 = ZERO(), acc1 = ZERO(), acc2 = ZERO(), acc3 = ZERO();
#ifndef __AVX512F__
    vf top = SET1(-1e30f);
#endif
    int v = v0;
#define X(o) (bb ? FMA(val, FMA(vct, LOAD(bb + v + (o)), LOAD(a + v + (o))), LOAD(b + v + (o))) \
                 : FMA(val, LOAD(a + v + (o)), LOAD(b + v + (o))))
    for (; v + 4 * W <= v1; v += 4 * W) {
        vf x0 = X(0), x1 = X(W), x2 = X(2 * W), x3 = X(3 * W);
#ifndef __AVX512F__
        top = MAX(MAX(top, MAX(x0, x1)), MAX(x2, x3));
#endif
        acc0 = ADD(acc0, exp2v(CLAMP(x0)));
        acc1 = ADD(acc1, exp2v(CLAMP(x1)));
        acc2 = ADD(acc2, exp2v(CLAMP(x2)));
        acc3 = ADD(acc3, exp2v(CLAMP(x3)));
    }
#undef X
    float s = hsum(ADD(ADD(acc0, acc1), ADD(acc2, acc3)));
#ifdef __AVX512F__
    float m = -1e30f;
    if (!__builtin_isfinite(s)) *big = 1;
#else
    float m = hmax(top);
#endif
    for (; v < v1; v++) {
        float x = al * ((bb ? ct * bb[v] : 0.0f) + a[v]) + b[v];
        m = x > m ? x : m;
        s += exp2s(x);
    }
    if (m > TOO_BIG) *big = 1;
    return (double)s;
}

/* out[t, i] = sum_v 2^(alpha[t, i] (A[t, v] + c[t, i] B[i, v]) + b[v]) for t in [t0, t1), every i < K;
   A [N, V], B [K, V], c and alpha [N, K], out [N, K] (float64), all row-major. */
void exp2_sums(const float* A, const float* B, const float* c, const float* alpha, const float* b,
               double* out, int64_t K, int64_t V, int64_t t0, int64_t t1, int64_t tb, int64_t kb) {
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);       /* flush-to-zero, denormals-are-zero: tiny terms are 0, not microcode assists */
    double acc[tb * kb];
    int big[tb * kb];
    for (int64_t ts = t0; ts < t1; ts += tb) {
        int64_t te = ts + tb < t1 ? ts + tb : t1;
        for (int64_t is = 0; is < K; is += kb) {
            int64_t ie = is + kb < K ? is + kb : K;
            for (int64_t j = 0; j < tb * kb; j++) { acc[j] = 0; big[j] = 0; }
            for (int64_t v0 = 0; v0 < V; v0 += CHUNK) {
                int v1 = (int)(v0 + CHUNK < V ? v0 + CHUNK : V);
                for (int64_t t = ts; t < te; t++)
                    for (int64_t i = is; i < ie; i++) {
                        int64_t j = (t - ts) * kb + (i - is);
                        acc[j] += chunk_sum(A + t * V, B + i * V, b, c[t * K + i], alpha[t * K + i], (int)v0, v1, &big[j]);
                    }
            }
            for (int64_t t = ts; t < te; t++)
                for (int64_t i = is; i < ie; i++) {
                    int64_t j = (t - ts) * kb + (i - is);
                    out[t * K + i] = big[j] ? __builtin_inf() : acc[j];
                }
        }
    }
    _mm_setcsr(csr);
}

/* out[t] = sum_v 2^(alpha[t] (A[t, v] + sum_j c[t, j] B[j, v] + shift[t]) + b[v]) for t in [t0, t1);
   A [N, V], B [k, V], c [N, k] (k may be 0), alpha and shift [N]: a group of k neurons ablated together */
void exp2_group_sums(const float* A, const float* B, const float* c, const float* alpha, const float* shift,
                     const float* b, double* out, int64_t k, int64_t V, int64_t t0, int64_t t1) {
    float xs[CHUNK];
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    for (int64_t t = t0; t < t1; t++) {
        int big = 0;
        double total = 0;
        for (int64_t v0 = 0; v0 < V; v0 += CHUNK) {
            int n = (int)(v0 + CHUNK < V ? CHUNK : V - v0);
            const float* a = A + t * V + v0;
            const float s = shift[t];
            for (int v = 0; v < n; v++) xs[v] = a[v] + s;
            for (int64_t j = 0; j < k; j++) {
                const float cj = c[t * k + j];
                const float* bj = B + j * V + v0;
                for (int v = 0; v < n; v++) xs[v] += cj * bj[v];
            }
            total += chunk_sum(xs, 0, b + v0, 0.0f, alpha[t], 0, n, &big);
        }
        out[t] = big ? __builtin_inf() : total;
    }
    _mm_setcsr(csr);
}
"""

def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _arch_flags() -> list[str] | None:
    """Returns gcc's flags for the widest vector unit this CPU has, or None (no AVX2 with FMA: stay in torch)."""
    flags = _cpu_flags()
    if {"avx512f", "fma"} <= flags:
        return ["-mavx512f", "-mfma"]
    if {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma"]
    return None


def _cache_dir() -> Path:
    from rtn.demo.config import default_cache_dir
    return default_cache_dir() / "native"


STALE_S = 30 * 86400    # a build unused for this long (another source or CPU) is removed when a new one is made


def _prune(folder: Path, keep: Path) -> None:
    """Removes builds in `folder` other than `keep` that no run has used for STALE_S (a loaded one stays valid)."""
    for old in folder.glob("rtn_exp2_*.so"):
        try:
            if old != keep and time.time() - old.stat().st_mtime > STALE_S:
                old.unlink()
        except OSError:
            pass           # another process removed it, or the folder is read-only: harmless either way


def _compile(arch: list[str]) -> Path:
    """Returns the compiled library, building it into the cache (atomically: concurrent builders do not collide).

    A run that finds its build marks it used (mtime); a new build removes those unused for STALE_S,
    so the builds of earlier sources do not pile up.
    """
    key = hashlib.sha256((SOURCE + " ".join(arch)).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "rtn-native"):
        target = folder / f"rtn_exp2_{key}.so"
        if target.exists():
            try:
                os.utime(target)
            except OSError:
                pass       # a read-only cache: it is used all the same
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as build:
                source = Path(build) / "rtn_exp2.c"
                source.write_text(SOURCE)
                built = Path(build) / "rtn_exp2.so"
                subprocess.run(["gcc", "-O3", "-std=c11", *arch, "-shared", "-fPIC", str(source), "-o", str(built)],
                               check=True, capture_output=True, text=True, timeout=120)
                os.replace(built, target)
            _prune(folder, target)
            return target
        except PermissionError:
            continue           # a read-only cache: build in the temp folder instead
    raise PermissionError("no writable folder for the compiled ablation loop")


@functools.lru_cache(maxsize=1)
def _library():
    """Returns the loaded library, or None (with one warning) where it cannot be had."""
    arch = _arch_flags()
    if arch is None:
        return None
    try:
        lib = ctypes.CDLL(str(_compile(arch)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"rtn: could not build the C ablation loop ({type(err).__name__}: {detail.strip()[:200]}); "
                      "using torch's")
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.exp2_sums.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64]
    lib.exp2_sums.restype = None
    lib.exp2_group_sums.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64]
    lib.exp2_group_sums.restype = None
    return lib


def available() -> bool:
    """Whether the C loop runs now (RTN_NATIVE=0 turns it off)."""
    return os.environ.get("RTN_NATIVE", "1") != "0" and _library() is not None


def _usable(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def _token_ranges(N: int, threads: int) -> list[tuple[int, int]]:
    """Splits [0, N) into one range per thread, in whole TOKEN_BLOCKs where there are enough."""
    blocks = -(-N // TOKEN_BLOCK)
    per = -(-blocks // max(1, threads))
    return [(b * TOKEN_BLOCK, min(N, (b + per) * TOKEN_BLOCK)) for b in range(0, blocks, per)]


def _on_threads(call, ranges: list[tuple[int, int]]) -> None:
    if len(ranges) == 1:
        call(*ranges[0])
        return
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda r: call(*r), ranges))


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def exp2_sums(A2: torch.Tensor, B2: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor,
              b2: torch.Tensor) -> torch.Tensor | None:
    """Returns sum_v 2^(alpha (A2[t, v] + c B2[i, v]) + b2[v]) [N, k] in float64, +inf where an exponent
    exceeded 126; None when the C loop is unavailable or the inputs are not float32 CPU tensors."""
    if not _usable(A2, B2, c, alpha, b2):
        return None
    A2, B2, b2 = A2.contiguous(), B2.contiguous(), b2.contiguous()
    c, alpha = c.contiguous(), alpha.contiguous()
    (N, K), V = c.shape, A2.shape[1]
    out = torch.empty(N, K, dtype=torch.float64)
    lib = _library()
    _on_threads(lambda t0, t1: lib.exp2_sums(_ptr(A2), _ptr(B2), _ptr(c), _ptr(alpha), _ptr(b2), _ptr(out),
                                             K, V, t0, t1, TOKEN_BLOCK, NEURON_BLOCK),
                _token_ranges(N, torch.get_num_threads()))
    return out


def exp2_group_sums(A2: torch.Tensor, B2: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor,
                    b2: torch.Tensor) -> torch.Tensor | None:
    """Returns sum_v 2^(alpha[t] (A2[t, v] + sum_j c[t, j] B2[j, v] + shift[t]) + b2[v]) [N] in float64 (+inf where an
    exponent exceeded 126), or None. B2 [k, V] and c [N, k] may have k = 0."""
    if not _usable(A2, B2, c, alpha, shift, b2):
        return None
    A2, B2, c, alpha, shift, b2 = (t.contiguous() for t in (A2, B2, c, alpha, shift, b2))
    N, V = A2.shape
    out = torch.empty(N, dtype=torch.float64)
    lib = _library()
    _on_threads(lambda t0, t1: lib.exp2_group_sums(_ptr(A2), _ptr(B2), _ptr(c), _ptr(alpha), _ptr(shift), _ptr(b2),
                                                   _ptr(out), c.shape[1], V, t0, t1),
                _token_ranges(N, torch.get_num_threads()))
    return out


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Returns the loss [N] of each row of float32 logits [N, V] at its target (float32), or None (use torch's):
    one pass for the row maxima, one through the C loop, nothing [N, V] written."""
    if not _usable(logits):
        return None
    top = logits.amax(-1)                                                            # [N]
    none = logits.new_empty(0, logits.shape[1])
    sums = exp2_group_sums(logits, none, logits.new_empty(len(top), 0), torch.full_like(top, LOG2E), -top,
                           torch.zeros(logits.shape[1]))
    rows = torch.arange(len(targets), device=targets.device)
    return (torch.log(sums) + top - logits[rows, targets]).float()                   # sums >= 1: the max term is 2^0
