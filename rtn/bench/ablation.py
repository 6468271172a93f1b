"""`rtn bench`: exact all-neuron ablation against the papers' residual patch and a hook re-run, in one run.

    rtn bench --shape 70m --tokens 1024 --device cpu
    rtn bench --shape 410m --tokens 8192 --device cuda --json
    rtn bench --profile-ingest MODEL_DIR          # where a whole ingest spends its time (rtn/bench/profile.py)

A run builds a random Pythia-shaped GPT-NeoX (or loads a local model folder), captures the last
MLP layer's activations and the final residual of a random token batch, then times
  fast   every neuron at once: rtn.ingest.ablation.ablate_all, as the ingest runs it (the Triton
         kernel on CUDA, the C loop of ingest/native.py on CPU, chunked torch without it);
  patch  the papers' method, per neuron: r + c w -> final norm -> W_U -> loss, a tokens x d_model
         x vocabulary GEMM each;
  hook   a whole-model re-run per neuron, its activation set to its mean by a forward hook.
patch and hook run on a sample of neurons and are extrapolated to all of them (labelled so);
all three must agree on the sampled neurons. The exp floor is tokens x neurons x vocabulary
exps at the device's exp throughput, measured in the same run.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from tqdm import tqdm

from rtn.errors import RtnError
from rtn.ingest import ablation, adapters, native, sources
from rtn.ingest.ablation import ablate_all
from rtn.ingest.capture import capture, hooked
from rtn.ingest.readout import readout_of
from rtn.shapes import SHAPES, random_model

# H100 SXM spec sheet: 132 SMs x 16 MUFU ex2 results per clock x 1.98 GHz boost.
H100_SXM_EXP2_PER_S = 132 * 16 * 1.98e9


@dataclass
class BenchConfig:
    shape: str = "70m"          # a SHAPES name (random weights) or a local save_pretrained folder
    tokens: int = 1024          # tokens in the random batch, in sequences of seq_len
    seq_len: int = 512          # tokens per sequence (fewer when --tokens is smaller)
    device: str = "auto"        # auto, cpu or cuda
    sample_neurons: int = 8     # neurons timed on the slow paths, then extrapolated to all
    seed: int = 0               # seeds the weights, the batch and the neuron sample


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, fn):
    """Returns (fn(), wall seconds), the device synchronised on both ends."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def _load(config: BenchConfig, device: torch.device):
    if config.shape in SHAPES:
        return random_model(SHAPES[config.shape], device, config.seed), f"{config.shape}-shaped GPT-NeoX, random weights"
    from pathlib import Path
    if not Path(config.shape).expanduser().is_dir():
        raise RtnError(f"unknown --shape {config.shape!r}: use {', '.join(SHAPES)} or a local model folder")
    ref = sources.resolve_checkpoints(config.shape, "final")[-1]
    return sources.load_model(ref, torch.float32, device), config.shape


def _exp_rate_cpu(threads: int, seconds: float = 0.5) -> float:
    """Returns exps per second of torch.exp2 on cache-sized buffers, one Python thread per core as the fast path runs."""
    def worker(_):
        torch.set_num_threads(1)
        x = torch.rand(1 << 15) - 0.5
        y = torch.empty_like(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(20):
                torch.exp2(x, out=y)
            done += 20 * x.numel()
        return done / (time.perf_counter() - start)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(worker, range(threads)))
    finally:
        torch.set_num_threads(threads)


def _exp_rate_torch(device: torch.device) -> float:
    """Returns exps per second of torch.exp over a large tensor (memory-bound on a GPU)."""
    x = torch.rand(1 << (26 if device.type == "cuda" else 22), device=device)
    y = torch.empty_like(x)
    torch.exp(x, out=y)
    best = min(_timed(device, lambda: torch.exp(x, out=y))[1] for _ in range(5))
    return x.numel() / best


def hook_rerun(model, adapter, layer, ids, sample, mean_acts, device, batch_size):
    """Returns (ΔLoss [N, s], seconds) of a whole-model re-run per sampled neuron of `layer`, its activation set to
    its mean by a forward hook; the clean run it is measured against is not timed."""
    def model_losses():
        losses = []
        for s in range(0, ids.shape[0], batch_size):
            logits = model(ids[s:s + batch_size], use_cache=False).logits[:, :-1]   # [b, L-1, V]
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[s:s + batch_size, 1:].reshape(-1),
                                                            reduction="none"))
        return torch.cat(losses)

    with torch.no_grad():
        clean, hook = model_losses(), []
        _sync(device)
        start = time.perf_counter()
        for i in tqdm(sample.tolist(), desc="hook re-run", file=sys.stderr, disable=None, leave=False):
            def set_mean(_module, inputs, i=i):
                patched = inputs[0].clone()
                patched[..., i] = mean_acts[i]
                return (patched,)
            with hooked(adapters.mlp_out_module(model, adapter, layer), set_mean):
                hook.append(model_losses() - clean)
        _sync(device)
    return torch.stack(hook, 1), time.perf_counter() - start


def _slow_paths(model, adapter, layer, ids, resid, acts, w_out, sample, mean_acts, device, batch_size):
    """Returns (patch ΔLoss [N, s], patch seconds, hook ΔLoss [N, s], hook seconds) for the sampled neurons."""
    norm, unembed = adapters.final_norm(model, adapter), model.get_output_embeddings()
    targets = ids[:, 1:].reshape(-1)
    rows = max(1, (1 << 27) // unembed.weight.shape[0])                             # logits of ~0.5 GB at once

    def patch_losses(r):                                                            # the papers' readout re-run
        return torch.cat([torch.nn.functional.cross_entropy(unembed(norm(r[t:t + rows])), targets[t:t + rows],
                                                            reduction="none") for t in range(0, len(r), rows)])

    with torch.no_grad():
        clean_patch, patch = patch_losses(resid), []
        _sync(device)
        start = time.perf_counter()
        for i in tqdm(sample.tolist(), desc="residual patch", file=sys.stderr, disable=None, leave=False):
            c = mean_acts[i] - acts[:, i]                                           # [N]
            patch.append(patch_losses(resid + c[:, None] * w_out[i]) - clean_patch)
        _sync(device)
        patch_s = time.perf_counter() - start
    hook, hook_s = hook_rerun(model, adapter, layer, ids, sample, mean_acts, device, batch_size)
    return torch.stack(patch, 1), patch_s, hook, hook_s


def bench(config: BenchConfig) -> dict:
    """Returns the timings, ratios and agreement of the three methods (see the module docstring)."""
    device = sources.pick_device(config.device)
    if config.tokens < 2 or config.sample_neurons < 1:
        raise RtnError(f"--tokens {config.tokens} must be at least 2 and --sample-neurons {config.sample_neurons} at least 1")
    (model, name), build_s = _timed(device, lambda: _load(config, device))
    _log(f"built {name} in {build_s:.1f} s")
    adapter = adapters.adapter_for(model)
    layer = adapters.resolve_layer(model, adapter, -1)
    seq_len = min(config.seq_len, config.tokens, model.config.max_position_embeddings)
    gen = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(0, model.config.vocab_size, (config.tokens // seq_len, seq_len), generator=gen).to(device)
    batch_size = max(1, 8192 // seq_len)
    cap, capture_s = _timed(device, lambda: capture(model, adapter, layer, ids, batch_size, keep_device=True))
    n_mlp = cap.acts.shape[-1]
    acts = cap.acts[:, :-1].reshape(-1, n_mlp)                                       # [N, n] positions with a target
    resid = cap.resid[:, :-1].reshape(-1, cap.resid.shape[-1])                       # [N, d]
    targets = ids[:, 1:].reshape(-1)
    mean_acts = cap.acts.reshape(-1, n_mlp).mean(0)                                  # [n] over every position
    _, w_out = adapters.mlp_weights(model, adapter, layer)
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings()).to(torch.float32)
    N, V = resid.shape[0], readout.W_U.shape[0]
    exps = N * n_mlp * V

    threads = torch.get_num_threads()
    exp_rate_torch = _exp_rate_torch(device)
    if device.type == "cuda":
        from rtn.ingest import ablation_triton
        fast_path = "triton" if ablation_triton.available() else "torch"
        exp_rate = ablation_triton.exp2_throughput() if fast_path == "triton" else exp_rate_torch
    else:
        exp_rate = _exp_rate_cpu(threads)
    floor_s = exps / exp_rate
    _log(f"{N} positions x {n_mlp} neurons x {V} vocabulary = {exps:.3g} exps; floor {floor_s:.3g} s at "
         f"{exp_rate:.3g} exp/s")

    def fast():
        return ablate_all(resid, acts, mean_acts, w_out, targets, readout)

    if device.type == "cpu" and native.available():   # the C loop (ingest/native.py): built or loaded on first use
        _, warmup_s = _timed(device, lambda: native.exp2_sums(*(torch.zeros(shape) for shape in ((1, V), (1, V), (1, 1),
                                                                                              (1, 1), (V,)))))
        fast_path = "native"
    elif device.type == "cpu":
        compiled, warmup_s = _timed(device, lambda: ablation.warm_up_cpu(V, exps))
        fast_path = "torch-compiled" if compiled else "torch"
    else:   # autotune and compile the kernel on a slice with the same neurons and vocabulary
        head = min(N, 1024)
        _, warmup_s = _timed(device, lambda: ablate_all(resid[:head], acts[:head], mean_acts, w_out, targets[:head], readout))
    _log(f"fast path: {fast_path} (warm-up {warmup_s:.1f} s); timing all {n_mlp} neurons ...")
    deltas, fast_s = _timed(device, fast)
    _log(f"fast path: {fast_s:.3g} s")

    sample = torch.randperm(n_mlp, generator=gen)[:min(config.sample_neurons, n_mlp)].sort().values.to(device)
    _log(f"timing the residual patch and the hook re-run on {len(sample)} sampled neurons ...")
    patch, patch_s, hook, hook_s = _slow_paths(model, adapter, layer, ids, resid, acts, w_out, sample, mean_acts,
                                               device, batch_size)
    scale = n_mlp / len(sample)
    picked = deltas[:, sample].to(torch.float64)
    patch, hook = patch.to(torch.float64), hook.to(torch.float64)
    mean_diff = max((picked.mean(0) - other.mean(0)).abs().max().item() for other in (patch, hook))
    position_diff = max((picked - other).abs().max().item() for other in (patch, hook))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
        "shape": config.shape, "model": name, "tokens": int(ids.numel()), "positions": N, "neurons": n_mlp,
        "vocab": V, "d_model": resid.shape[1], "fast_path": fast_path,
        "fast_s": fast_s, "warmup_s": warmup_s,
        "patch_s": patch_s * scale, "hook_s": hook_s * scale,
        "patch_extrapolated": len(sample) < n_mlp, "hook_extrapolated": len(sample) < n_mlp,
        "sample_neurons": len(sample), "patch_sample_s": patch_s, "hook_sample_s": hook_s,
        "speedup_vs_patch": patch_s * scale / fast_s, "speedup_vs_hook": hook_s * scale / fast_s,
        "max_abs_diff": mean_diff, "max_abs_diff_position": position_diff,
        "max_abs_mean_delta": picked.mean(0).abs().max().item(),
        "exps": exps, "exp_rate": exp_rate, "exp_rate_torch": exp_rate_torch, "floor_s": floor_s,
        "exp_floor_fraction": floor_s / fast_s, "build_s": build_s, "capture_s": capture_s,
    }
    if device.type == "cuda":
        result.update(spec_exp_rate=H100_SXM_EXP2_PER_S, spec_floor_s=exps / H100_SXM_EXP2_PER_S,
                      exp_floor_fraction_spec=exps / H100_SXM_EXP2_PER_S / fast_s)
        if fast_path == "triton":
            from rtn.ingest import ablation_triton
            result["triton_config"] = ablation_triton.best_config()
    return result


def format_report(r: dict) -> str:
    """Returns the bench result as a readable table."""
    s = r["sample_neurons"]
    mark = lambda key: "*" if r[key] else ""
    lines = [
        f"rtn bench · {r['model']} · d_model {r['d_model']} · {r['neurons']} neurons · V {r['vocab']} · "
        f"{r['positions']} positions · {r['device']}",
        "",
        f"{'method':<44}{'seconds':>12}{'per neuron':>14}{'vs fast':>10}",
        f"{'fast path, all neurons (' + r['fast_path'] + ')':<44}{r['fast_s']:>12.4g}"
        f"{r['fast_s'] / r['neurons']:>14.3g}{'1.0x':>10}",
        f"{'residual patch, the papers (fp32)' + mark('patch_extrapolated'):<44}{r['patch_s']:>12.4g}"
        f"{r['patch_s'] / r['neurons']:>14.3g}{r['speedup_vs_patch']:>9.1f}x",
        f"{'whole-model hook re-run' + mark('hook_extrapolated'):<44}{r['hook_s']:>12.4g}"
        f"{r['hook_s'] / r['neurons']:>14.3g}{r['speedup_vs_hook']:>9.1f}x",
    ]
    if r["patch_extrapolated"]:
        lines.append(f"* extrapolated from {s} sampled neurons ({r['patch_sample_s']:.3g} s and {r['hook_sample_s']:.3g} s)")
    lines += [
        "",
        f"agreement on the {s} sampled neurons: max |diff| of mean ΔLoss {r['max_abs_diff']:.2g}, per position "
        f"{r['max_abs_diff_position']:.2g} (largest |mean ΔLoss| {r['max_abs_mean_delta']:.2g})",
        f"exp floor: {r['exps']:.3g} exps at {r['exp_rate']:.3g} exp/s measured = {r['floor_s']:.3g} s; "
        f"the fast path reaches {100 * r['exp_floor_fraction']:.0f} % of it" if r["fast_path"] != "native" else
        f"exps: {r['exps']:.3g}; torch.exp2 alone runs {r['exp_rate']:.3g} exp/s here ({r['floor_s']:.3g} s for "
        f"these), the C loop {r['exps'] / r['fast_s']:.3g} exp/s with its FMAs and sums "
        f"({r['exp_floor_fraction']:.2g}x torch.exp2 alone)",
        f"warm-up excluded from the fast time: {r['warmup_s']:.2g} s (compile / autotune / build)",
    ]
    if "spec_exp_rate" in r:
        lines.append(f"H100 SXM spec: {r['spec_exp_rate']:.3g} exp2/s (132 SMs x 16/clk x 1.98 GHz) -> floor "
                     f"{r['spec_floor_s']:.3g} s, {100 * r['exp_floor_fraction_spec']:.0f} % reached; "
                     f"torch.exp (memory-bound) {r['exp_rate_torch']:.3g} exp/s")
        if r.get("triton_config"):
            lines.append(f"kernel config: {r['triton_config']}")
    return "\n".join(lines)
