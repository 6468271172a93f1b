"""The C ablation loop (ingest/native.py) against float64 torch, and the paths that do without it."""
import os
import time

import pytest
import torch

from rtn.ingest import native
from rtn.ingest.ablation import groups_deltas, neuron_deltas
from rtn.ingest.readout import Readout

needs_native = pytest.mark.skipif(not native.available(), reason="no gcc or no AVX2/AVX-512 CPU: the C loop is off")


def _terms(N=37, K=70, V=1000 + 13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen)
    return (3 * randn(N, V) - 6, 0.5 * randn(K, V), randn(N, K), 1 + 0.05 * randn(N, K), 0.5 * randn(V))


def _reference(A2, B2, c, alpha, b2):
    A2, B2, c, alpha, b2 = (t.double() for t in (A2, B2, c, alpha, b2))
    return torch.exp2(alpha[..., None] * (A2[:, None] + c[..., None] * B2[None]) + b2).sum(-1)


@needs_native
def test_sums_equal_float64_torch_including_ragged_edges():
    # N, K and V are not multiples of the token block, the neuron block or the vector width
    terms = _terms()
    sums = native.exp2_sums(*terms)
    reference = _reference(*terms)
    assert sums.dtype == torch.float64 and sums.shape == reference.shape
    assert ((sums - reference) / reference).abs().max() < 1e-6


@needs_native
@pytest.mark.parametrize("k", [0, 1, 7])
def test_group_sums_equal_float64_torch(k):
    A2, B2, c, alpha, b2 = _terms(N=21, K=max(k, 1), V=2 * 1024 + 333)    # more than one chunk of the vocabulary
    B2, c, alpha, shift = B2[:k], c[:, :k], alpha[:, 0], torch.linspace(-3, 3, 21)
    sums = native.exp2_group_sums(A2, B2, c, alpha, shift, b2)
    moved = A2.double() + c.double() @ B2.double() + shift.double()[:, None]
    reference = torch.exp2(alpha[:, None].double() * moved + b2.double()).sum(-1)
    assert ((sums - reference) / reference).abs().max() < 1e-6


@needs_native
def test_cross_entropy_equals_torch():
    gen = torch.Generator().manual_seed(2)
    logits = 20 * torch.randn(50, 3000, generator=gen)
    targets = torch.randint(0, 3000, (50,), generator=gen)
    reference = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")
    assert (native.cross_entropy(logits, targets).double() - reference).abs().max() < 1e-5 * reference.abs().max()


@needs_native
@pytest.mark.parametrize("at", [5, 64 + 57])          # in the vectorised loop and in its scalar tail
def test_an_exponent_above_float32s_range_makes_its_sum_infinite_and_far_below_it_tiny(at):
    A2, B2, c, alpha, b2 = _terms(N=3, K=2, V=64 + 60)
    A2[1, at] = 130.0                                   # 2^130 overflows float32: the sum must say so, not wrap
    A2[2] = -500.0                                      # every term underflows: the sum is V * 2^-126 at most
    sums = native.exp2_sums(A2, B2, torch.zeros_like(c), torch.ones_like(alpha), torch.zeros_like(b2))
    assert torch.isinf(sums[1]).all() and torch.isfinite(sums[0]).all()
    assert (sums[2] >= 0).all() and (sums[2] <= 124 * 2.0 ** -126 * 1.0001).all()


def test_off_switch_and_other_dtypes_return_none(monkeypatch):
    terms = _terms(N=4, K=3, V=50)
    assert native.exp2_sums(*(t.double() for t in terms)) is None      # float64 stays in torch
    monkeypatch.setenv("RTN_NATIVE", "0")
    assert not native.available() and native.exp2_sums(*terms) is None


def _problem(logit_scale, tokens=29, neurons=70, d=16, V=517):
    gen = torch.Generator().manual_seed(5)
    randn = lambda *shape: torch.randn(*shape, generator=gen)
    acts = randn(tokens, neurons)
    readout = Readout(1 + 0.1 * randn(d), 0.1 * randn(d), 1e-5, True, logit_scale * randn(V, d), 0.1 * randn(V))
    return 2 * randn(tokens, d), acts, acts.mean(0), randn(neurons, d), torch.randint(0, V, (tokens,), generator=gen), readout


@needs_native
@pytest.mark.parametrize(("logit_scale", "tolerance"), [(0.5, 1e-5),
                                                       (40.0, 1e-3)])   # logits of thousands of nats: sums overflow
def test_ablation_with_the_c_loop_equals_torch(monkeypatch, logit_scale, tolerance):
    args = _problem(logit_scale)
    groups = [torch.tensor([3, 17]), torch.tensor([17, 40, 41, 60, 69]), torch.tensor([0])]
    fast, fast_groups = neuron_deltas(*args), groups_deltas(*args, groups)
    monkeypatch.setenv("RTN_NATIVE", "0")
    monkeypatch.setenv("RTN_COMPILE", "0")
    double = [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args[:-1]]
    reference = neuron_deltas(*double, args[-1].to(torch.float64))
    reference_groups = groups_deltas(*double, args[-1].to(torch.float64), groups)
    scale = reference.abs().clamp_min(1.0)
    assert torch.isfinite(fast).all() and ((fast.double() - reference).abs() / scale).max() <= tolerance
    group_scale = reference_groups.abs().clamp_min(1.0)
    assert ((fast_groups.double() - reference_groups).abs() / group_scale).max() <= tolerance
    assert reference.abs().max() > (100 if logit_scale > 1 else 0.01)


def test_without_gcc_it_warns_once_and_torch_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("RTN_CACHE", str(tmp_path))                     # nothing built yet
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))                          # no gcc on it
    monkeypatch.setattr(native.tempfile, "tempdir", None)
    native._library.cache_clear()
    try:
        if native._arch_flags() is None:
            pytest.skip("this CPU has no AVX2: the C loop is never built")
        with pytest.warns(UserWarning, match="could not build the C ablation loop"):
            assert not native.available()
        args = _problem(0.5)
        assert torch.isfinite(neuron_deltas(*args)).all()
    finally:
        native._library.cache_clear()


@pytest.mark.skipif(not {"avx2", "fma"} <= native._cpu_flags(), reason="this CPU has no AVX2 with FMA")
@needs_native
def test_a_new_build_removes_builds_unused_for_a_month_and_keeps_the_rest(monkeypatch, tmp_path):
    monkeypatch.setenv("RTN_CACHE", str(tmp_path))
    folder = tmp_path / "native"
    folder.mkdir()
    stale, recent = folder / "rtn_exp2_0000000000000000.so", folder / "rtn_exp2_1111111111111111.so"
    other = folder / "notes.txt"
    for path in (stale, recent, other):
        path.write_text("old")
    month = time.time() - native.STALE_S - 60
    os.utime(stale, (month, month))
    os.utime(other, (month, month))
    os.utime(recent, (time.time() - native.STALE_S / 2,) * 2)
    built = native._compile(native._arch_flags())
    assert built.parent == folder and built.exists()
    assert not stale.exists() and recent.exists() and other.exists()   # only old builds go
    os.utime(built, (month, month))
    assert native._compile(native._arch_flags()) == built and time.time() - built.stat().st_mtime < 60   # marked used


def test_the_avx2_build_gives_the_same_sums(monkeypatch):
    """The build for CPUs without AVX-512 (2^n through the exponent bits, clamped and checked) against float64 torch."""
    monkeypatch.setattr(native, "_arch_flags", lambda: ["-mavx2", "-mfma"])
    native._library.cache_clear()
    try:
        if not native.available():
            pytest.skip("no gcc here")
        terms = _terms()
        assert ((native.exp2_sums(*terms) - _reference(*terms)) / _reference(*terms)).abs().max() < 1e-6
        A2, B2, c, alpha, b2 = _terms(N=3, K=2, V=64 + 60)
        A2[1, 70], A2[2] = 130.0, -500.0
        sums = native.exp2_sums(A2, B2, torch.zeros_like(c), torch.ones_like(alpha), torch.zeros_like(b2))
        assert torch.isinf(sums[1]).all() and torch.isfinite(sums[0]).all() and (sums[2] <= 124 * 2.0 ** -125).all()
        logits = 20 * torch.randn(9, 3000)
        targets = torch.randint(0, 3000, (9,))
        reference = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")
        assert (native.cross_entropy(logits, targets).double() - reference).abs().max() < 1e-5 * reference.abs().max()
    finally:
        native._library.cache_clear()
