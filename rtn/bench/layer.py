"""`rtn bench --layer K`: exact ablation of an earlier MLP layer, re-run from the cached residual, against the whole-model hook re-run.

    rtn bench --shape 70m --layer 2 --tokens 1024 --device cpu --sample-neurons 16

A run builds the model and random batch of rtn/bench/ablation.py, records one clean pass
(ingest/layer_ablation.py) and times, on the same sample of neurons of layer K,
  rerun  rtn.ingest.layer_ablation.layer_deltas as the ingest runs it: the sampled neurons as one
         batched re-run of blocks K+1.. (neurons x sequences), the final norm and the unembedding;
  hook   a whole-model re-run per neuron, its activation set to its mean by a forward hook.
Both are extrapolated per neuron to the whole layer (labelled so): their cost per neuron does not
depend on how many neurons there are. The exact answer needs every vocabulary logit of every
re-run position, so neither path escapes the unembedding; `flop_ratio` is the whole forward's
multiply-adds per token over the re-run's, the most a re-run from K+1 can gain.
"""
from __future__ import annotations

import torch

from rtn.errors import RtnError
from rtn.ingest import adapters
from rtn.ingest.layer_ablation import clean_pass, layer_deltas


def _flops_per_token(model, adapter, first_block: int, seq_len: int) -> float:
    """Returns about 2 x multiply-adds per token of blocks first_block.., the causal attention and the unembedding."""
    blocks = adapters.blocks(model, adapter)[first_block:]
    d, V = model.config.hidden_size, model.get_output_embeddings().weight.shape[0]
    block_params = sum(p.numel() for block in blocks for p in block.parameters() if p.ndim == 2)
    return 2 * block_params + len(blocks) * 2 * seq_len * d + 2 * d * V   # QK^T and AV over half the sequence


def bench_layer(config, layer_arg: int) -> dict:
    """Returns timings and agreement of the batched re-run against the hook re-run on sampled neurons of one layer."""
    from rtn.bench.ablation import _load, _log, _timed, hook_rerun
    from rtn.ingest import sources
    device = sources.pick_device(config.device)
    if config.tokens < 2 or config.sample_neurons < 1:
        raise RtnError(f"--tokens {config.tokens} must be at least 2 and --sample-neurons {config.sample_neurons} at least 1")
    (model, name), build_s = _timed(device, lambda: _load(config, device))
    adapter = adapters.adapter_for(model)
    n_layers = len(adapters.blocks(model, adapter))
    layer = adapters.check_layer(layer_arg, n_layers)
    seq_len = min(config.seq_len, config.tokens, model.config.max_position_embeddings)
    gen = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(0, model.config.vocab_size, (config.tokens // seq_len, seq_len), generator=gen).to(device)
    batch_size = max(1, 8192 // seq_len)
    _log(f"built {name} in {build_s:.1f} s; layer {layer} of {n_layers}")
    clean, clean_s = _timed(device, lambda: clean_pass(model, adapter, ids, [layer], batch_size))
    n_mlp = clean.acts[layer].shape[-1]
    mean_acts = clean.acts[layer].flatten(0, 1).mean(0)                           # [n] over every position
    targets = torch.roll(ids, -1, dims=1)
    included = torch.ones_like(ids, dtype=torch.bool)
    included[:, -1] = False                                                       # the last position has no target
    sample = torch.randperm(n_mlp, generator=gen)[:min(config.sample_neurons, n_mlp)].sort().values
    groups = [neuron[None] for neuron in sample]

    layer_deltas(model, adapter, clean, layer, mean_acts, targets, included, groups[:1])   # warm-up: allocations
    _log(f"timing the batched re-run on {len(sample)} sampled neurons ...")
    rerun_deltas, rerun_s = _timed(device, lambda: layer_deltas(model, adapter, clean, layer, mean_acts, targets,
                                                                included, groups))
    _log(f"re-run: {rerun_s:.3g} s; timing the whole-model hook re-run ...")

    hook, hook_s = hook_rerun(model, adapter, layer, ids, sample, mean_acts, device, batch_size)   # clean run untimed
    scale = n_mlp / len(sample)
    diff = (rerun_deltas.double() - hook.double())
    flop_ratio = _flops_per_token(model, adapter, 0, seq_len) / _flops_per_token(model, adapter, layer + 1, seq_len)
    return {
        "device": str(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "shape": config.shape, "model": name, "layer": layer, "n_layers": n_layers, "tokens": int(ids.numel()),
        "positions": int(included.sum()), "neurons": n_mlp, "sample_neurons": len(sample),
        "vocab": model.get_output_embeddings().weight.shape[0],
        "rerun_s": rerun_s * scale, "hook_s": hook_s * scale, "extrapolated": len(sample) < n_mlp,
        "rerun_sample_s": rerun_s, "hook_sample_s": hook_s, "speedup_vs_hook": hook_s / rerun_s,
        "flop_ratio": flop_ratio, "clean_pass_s": clean_s, "build_s": build_s,
        "max_abs_diff": diff.mean(0).abs().max().item(), "max_abs_diff_position": diff.abs().max().item(),
        "max_abs_mean_delta": hook.double().mean(0).abs().max().item(),
    }


def format_layer_report(r: dict) -> str:
    """Returns the layer bench result as a readable table."""
    mark = "*" if r["extrapolated"] else ""
    header = (f"rtn bench · {r['model']} · layer {r['layer']} of {r['n_layers']} · {r['neurons']} neurons · "
              f"V {r['vocab']} · {r['positions']} positions · {r['device']}")
    rerun_row = (f"{'re-run from block ' + str(r['layer'] + 1) + ', neurons batched' + mark:<48}{r['rerun_s']:>12.4g}"
                 f"{r['rerun_s'] / r['neurons']:>14.3g}{'1.0x':>11}")
    hook_row = (f"{'whole-model hook re-run' + mark:<48}{r['hook_s']:>12.4g}"
                f"{r['hook_s'] / r['neurons']:>14.3g}{r['speedup_vs_hook']:>10.2f}x")
    lines = [header, "", f"{'method':<48}{'seconds':>12}{'per neuron':>14}{'vs re-run':>11}", rerun_row, hook_row]
    if r["extrapolated"]:
        lines.append(f"* extrapolated from {r['sample_neurons']} sampled neurons ({r['rerun_sample_s']:.3g} s and "
                     f"{r['hook_sample_s']:.3g} s)")
    lines += [
        "",
        (f"agreement on the sampled neurons: max |diff| of mean ΔLoss {r['max_abs_diff']:.2g}, per position "
         f"{r['max_abs_diff_position']:.2g} (largest |mean ΔLoss| {r['max_abs_mean_delta']:.2g})"),
        (f"most a re-run from block {r['layer'] + 1} can gain (multiply-adds per token, whole forward / re-run, "
         f"unembedding included): {r['flop_ratio']:.2f}x"),
        f"clean pass (once per checkpoint, excluded): {r['clean_pass_s']:.2g} s",
    ]
    return "\n".join(lines)
