"""The fused Triton kernel gives the CPU path's ΔLoss: on a GPU (marked gpu), and in Triton's interpreter on CPU.

The interpreter runs the kernel's own code (tiles, clamped edges, padding, Kahan sum) with numpy,
so its logic is checked wherever triton is installed (`pip install -e .[gpu]`); the GPU tests add
the real compiler and the hardware exp2.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtn.ingest.ablation import neuron_deltas
from rtn.ingest.ablation_terms import ablation_terms
from rtn.ingest.readout import Readout

ODD_SIZES = [(37, 13, 24, 101), (70, 45, 40, 203)]   # tokens, neurons, d_model, V: multiples of no block size


def _problem(tokens, neurons, d, V, layernorm: bool, seed: int = 0, effect: float = 0.5, logit_scale: float = 0.5):
    """Returns float64 (resid, acts, mean_acts, w_out, targets, readout) of a random last layer."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    acts = randn(tokens, neurons)
    readout = Readout(gamma=1 + 0.1 * randn(d), beta=0.1 * randn(d) if layernorm else torch.zeros(d, dtype=torch.float64),
                      eps=1e-5, centred=layernorm, W_U=logit_scale * randn(V, d), b_U=0.1 * randn(V))
    return (2 * randn(tokens, d), acts, acts.mean(0), effect * randn(neurons, d),
            torch.randint(0, V, (tokens,), generator=gen), readout)


def _as(args, dtype, device="cpu"):
    resid, acts, mean_acts, w_out, targets, readout = args
    move = lambda x: x.to(device=device, dtype=dtype)
    return (move(resid), move(acts), move(mean_acts), move(w_out), targets.to(device), readout.to(dtype, device))


def interpreter_results() -> dict:
    """Returns {case: measurements} of the kernel run by Triton's interpreter against the float64 CPU path.

    Runs in a subprocess started with TRITON_INTERPRET=1: Triton reads it when first imported.
    """
    from rtn.ingest import ablation_triton
    assert ablation_triton._interpreting()
    results = {}

    def compare(name, args, neurons=None):
        reference = neuron_deltas(*args, neurons=neurons)
        fast = ablation_triton.neuron_deltas_triton(*_as(args, torch.float32), neurons=neurons).double()
        results[name] = {"shape_ok": fast.shape == reference.shape, "finite": bool(torch.isfinite(fast).all()),
                         "max_diff": (fast - reference).abs().max().item(),
                         "mean_diff": (fast.mean(0) - reference.mean(0)).abs().max().item(),
                         "max_rel_diff": ((fast - reference).abs() / reference.abs().clamp_min(1.0)).max().item(),
                         "largest_effect": reference.abs().max().item()}
    for size in ODD_SIZES:
        for layernorm in (True, False):
            compare(f"{size}-{layernorm}", _problem(*size, layernorm))
    huge = _problem(*ODD_SIZES[0], layernorm=True, effect=5.0, logit_scale=40.0)
    compare("overflow", huge)
    terms = ablation_terms(*huge)
    exponents = terms.alpha[..., None] * (terms.A2[:, None, :] + terms.c[..., None] * terms.B2[None]) + terms.b2
    results["overflow"]["overflowing_entries"] = int((exponents.max(-1).values > 128).sum())   # 2^128: float32 inf
    compare("subset", _problem(*ODD_SIZES[0], layernorm=False), neurons=torch.tensor([12, 0, 5]))
    return results


@pytest.fixture(scope="module")
def interpreted():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install -e .[gpu])")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_triton; "
            "print(json.dumps(test_triton.interpreter_results()))")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layernorm", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_interpreted_kernel_equals_cpu_path(interpreted, size, layernorm):
    case = interpreted[f"{size}-{layernorm}"]
    assert case["shape_ok"] and case["finite"]
    assert case["max_diff"] <= 1e-5
    assert case["mean_diff"] <= 1e-6
    assert case["largest_effect"] > 0.1                                         # real effects were compared


def test_interpreted_kernel_recomputes_overflowing_entries(interpreted):
    # Effects of hundreds of nats overflow the float32 exp2 sum; those entries must come back exact, not inf.
    case = interpreted["overflow"]
    assert case["overflowing_entries"] > 0
    assert case["finite"]
    assert case["max_rel_diff"] <= 1e-3      # logits of thousands of nats: float32 keeps ~1e-4 of them


def test_interpreted_kernel_ablates_a_chosen_subset(interpreted):
    case = interpreted["subset"]
    assert case["shape_ok"] and case["max_diff"] <= 1e-5


def _cuda_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    from rtn.ingest import ablation_triton
    if ablation_triton._interpreting():
        pytest.skip("TRITON_INTERPRET is set")
    return ablation_triton


@pytest.mark.gpu
@pytest.mark.parametrize("layernorm", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("size", ODD_SIZES + [(1000, 300, 256, 50257)], ids=lambda s: "x".join(map(str, s)))
def test_gpu_kernel_equals_cpu_path(size, layernorm):
    kernel = _cuda_kernel()
    args = _problem(*size, layernorm)
    reference = neuron_deltas(*args)                                            # float64 on the CPU
    fast = kernel.neuron_deltas_triton(*_as(args, torch.float32, "cuda")).double().cpu()
    assert (fast - reference).abs().max() <= 1e-5
    assert (fast.mean(0) - reference.mean(0)).abs().max() <= 1e-6
    assert reference.abs().max() > 0.1


@pytest.mark.gpu
def test_ingest_routes_float32_cuda_to_the_kernel_and_agrees():
    kernel = _cuda_kernel()
    from rtn.ingest.ablation import ablate_all
    args = _problem(*ODD_SIZES[1], layernorm=True, effect=5.0, logit_scale=40.0)   # with overflowing entries too
    calls = []
    original = kernel.run_kernel
    kernel.run_kernel = lambda terms: calls.append(1) or original(terms)
    try:
        fast = ablate_all(*_as(args, torch.float32, "cuda")).double().cpu()
    finally:
        kernel.run_kernel = original
    assert calls
    assert torch.allclose(fast, neuron_deltas(*args), rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_gpu_exp2_throughput_is_near_the_exp_units():
    kernel = _cuda_kernel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rate = kernel.exp2_throughput()
    assert 0.3 * sms * 16 * 1.0e9 < rate < sms * 16 * 2.2e9   # 16 exp2 per clock per SM, ~1-2 GHz
