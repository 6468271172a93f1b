"""`rtn bench` and `rtn bench --profile-ingest` on a tiny shape, and the CPU fast path's own devices."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from rtn.cli import main
from rtn.ingest import ablation, native
from rtn.ingest.ablation import neuron_deltas
from rtn.ingest.readout import Readout

BENCH_KEYS = ("fast_s", "patch_s", "hook_s", "speedup_vs_patch", "speedup_vs_hook", "max_abs_diff",
              "exp_floor_fraction", "device", "shape", "tokens", "neurons", "vocab", "patch_extrapolated",
              "hook_extrapolated")


def test_tiny_bench_json_agrees_and_fast_beats_the_hook_rerun(capsys):
    assert main(["bench", "--shape", "tiny", "--tokens", "256", "--device", "cpu", "--sample-neurons", "4",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(BENCH_KEYS) <= set(result)
    assert result["neurons"] == 96 and result["vocab"] == 1009 and result["positions"] == 255
    assert result["patch_extrapolated"] and result["hook_extrapolated"] and result["sample_neurons"] == 4
    assert result["max_abs_diff"] <= 1e-5
    assert result["max_abs_diff_position"] <= 1e-4
    assert result["max_abs_mean_delta"] > 1e-4            # the paths agreed on real effects, not zeros
    assert result["fast_s"] < result["hook_s"]
    assert result["exp_floor_fraction"] > 0


def test_bench_table_labels_extrapolated_rows(capsys):
    assert main(["bench", "--shape", "tiny", "--tokens", "64", "--device", "cpu", "--sample-neurons", "2"]) == 0
    table = capsys.readouterr().out
    assert "whole-model hook re-run*" in table and "extrapolated from 2 sampled neurons" in table
    assert ("torch.exp2 alone runs" in table and "the C loop" in table) if native.available() else "exp floor" in table


@pytest.mark.parametrize("argv, message", [
    (["--shape", "3b"], "unknown --shape '3b'"),
    (["--shape", "tiny", "--tokens", "1"], "--tokens 1"),
] + ([] if torch.cuda.is_available() else [(["--shape", "tiny", "--device", "cuda"], "--device cuda")]))
def test_bench_bad_input_is_a_one_line_error(argv, message):
    proc = run_cli("bench", *argv, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_profile_ingest_reports_each_stage_of_each_checkpoint(tmp_path, capsys):
    family = tmp_path / "family"
    assert main(["bench", "--save-family", str(family), "--shape", "tiny", "--family-size", "2"]) == 0
    assert sorted(p.name for p in family.iterdir() if p.is_dir()) == ["step0", "step1"]
    capsys.readouterr()
    assert main(["bench", "--profile-ingest", str(family), "--tokens", "256", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["step"] for row in result["checkpoints"]] == [0, 1]
    for row in result["checkpoints"]:
        assert {"load", "forward", "ablation"} <= set(row)
        assert all(seconds >= 0 for key, seconds in row.items() if key != "step")
    assert result["seconds"] > 0


def _random_problem(tokens=19, neurons=70, d=16, V=101, logit_scale=0.5):
    gen = torch.Generator().manual_seed(3)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    acts = randn(tokens, neurons)
    readout = Readout(1 + 0.1 * randn(d), 0.1 * randn(d), 1e-5, True, logit_scale * randn(V, d), 0.1 * randn(V))
    return 2 * randn(tokens, d), acts, acts.mean(0), randn(neurons, d), torch.randint(0, V, (tokens,), generator=gen), readout


def _float32(args):
    *tensors, targets, readout = args
    return (*(t.float() for t in tensors), targets, readout.to(torch.float32))


def test_cpu_float32_path_recomputes_overflowing_sums():
    args = _random_problem(logit_scale=40.0)                 # logits of thousands of nats: 2^x overflows float32
    reference = neuron_deltas(*args)
    fast = neuron_deltas(*_float32(args), budget=4096).double()
    assert reference.abs().max() > 100
    assert torch.isfinite(fast).all()
    assert ((fast - reference).abs() / reference.abs().clamp_min(1.0)).max() <= 1e-3


def test_compiled_cpu_loop_equals_the_eager_path(monkeypatch):
    # 19 x 70 pairs in (8, 32) blocks: 4 compiled blocks plus eager strips on both edges.
    args = _random_problem()
    monkeypatch.setenv("RTN_NATIVE", "0")                                # the torch paths, not the C loop
    monkeypatch.setenv("RTN_COMPILE", "0")
    reference = neuron_deltas(*args)                                     # eager, float64
    monkeypatch.setenv("RTN_COMPILE", "1")
    monkeypatch.setattr(ablation, "_compiled_block", lambda: (8, 32))
    calls = []
    call_fused = ablation._call_fused
    monkeypatch.setattr(ablation, "_call_fused", lambda *args: calls.append(1) or call_fused(*args))
    fast = neuron_deltas(*_float32(args)).double()
    assert len(calls) == 1 + 4 and not ablation._compile_failed          # the warm-up, then the blocks
    assert (fast - reference).abs().max() <= 1e-5
    assert reference.abs().max() > 0.1


def test_layer_bench_json_agrees_with_the_hook_rerun(capsys):
    assert main(["bench", "--shape", "tiny", "--layer", "0", "--tokens", "128", "--device", "cpu",
                 "--sample-neurons", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layer"] == 0 and result["n_layers"] == 2 and result["extrapolated"] and result["sample_neurons"] == 4
    assert result["max_abs_diff_position"] <= 1e-5 and result["max_abs_mean_delta"] > 1e-4
    assert result["rerun_s"] == pytest.approx(result["rerun_sample_s"] * 96 / 4)
    assert 1 < result["flop_ratio"] < 2      # blocks 1.. of 2 plus the unembedding, over the whole forward
