"""Puts the specialists into the demo checkpoint: the torch side of rtn/demo/planted.py (read its docstring)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtn.demo.config import DemoAssets
from rtn.demo.synthetic import CORPUS_FILE
from rtn.demo.train import CHECKPOINT_INFO_FILE
from rtn.errors import RtnError
from rtn.ingest import adapters
from rtn.ingest.capture import capture, hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import RARE, prepare
from rtn.ingest.readout import Readout, readout_of, token_losses

SHRINKAGE = 1e-6  # ridge on the layer input's covariance (× its mean variance): keeps the solve defined; 1e-3 blurred two triggers into token 1000
BISECTION_STEPS = 40  # halvings of the output scale's bracket: 1e-12 of it, below float64 noise on ΔLoss


@torch.no_grad()
def plant_specialists(out_dir: Path, demo: DemoAssets, config, pairs: list[tuple[str, str]]) -> dict:
    """Returns the design (pairs, neurons, margins); writes the planted checkpoint to out_dir/step{base_step}/."""
    tokenizer = AutoTokenizer.from_pretrained(demo.tokenizer_dir)
    base = demo.checkpoint_dir / f"step{config.base_step}"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64).eval()
    adapter = adapters.adapter_for(model)
    layer = len(adapters.blocks(model, adapter)) - 1
    block = adapters.blocks(model, adapter)[layer]
    up, down = adapters.get_path(block, adapter.w_in), adapters.get_path(block, adapter.w_out)
    # the evaluation data exactly as the demo's ingest of this checkpoint will build it
    ingest_config = IngestConfig(model=str(out_dir), corpus=str(out_dir / CORPUS_FILE), tokens=config.tokens,
                                 seq_len=config.seq_len)
    data = prepare(ingest_config, ingest_config.corpus, tokenizer, model.config.vocab_size)
    ids = data.input_ids.reshape(-1)                                            # [N]
    targets = torch.roll(data.input_ids, -1, dims=1).reshape(-1)                # [N] token at pos + 1
    rare = data.classes.reshape(-1) == RARE                                     # [N]
    trigger_ids = tokenizer.convert_tokens_to_ids([t for t, _ in pairs])
    target_ids = tokenizer.convert_tokens_to_ids([g for _, g in pairs])
    fires = torch.stack([ids == t for t in trigger_ids])                        # [k, N] where each should fire
    scored = torch.stack([(ids == t) & (targets == g) & rare for t, g in zip(trigger_ids, target_ids)])
    if (scored.sum(1) < 2).any():
        raise RtnError("a planted pair is not scored as a rare prediction at least twice in the evaluated tokens")

    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    before = capture(model, adapter, layer, data.input_ids)
    neurons = quietest_neurons(before.acts.reshape(-1, down.weight.shape[1]), down.weight.T, len(pairs))
    layer_input = _layer_input(model, up, data.input_ids)                       # [N, d]
    for j, neuron in enumerate(neurons):
        weight, bias = trigger_detector(layer_input, fires[j], config.fire_margin)
        up.weight[neuron], up.bias[neuron] = weight, bias
        down.weight[:, neuron] = 0.0
    _round_to_float32(up)
    cap = capture(model, adapter, layer, data.input_ids)
    acts = cap.acts.reshape(-1, down.weight.shape[1])[:, neurons]               # [N, k]
    resid = cap.resid.reshape(-1, cap.resid.shape[-1])                          # [N, d] no specialist output yet
    directions = quiet_directions(readout, len(pairs))                          # [k, d]
    width = readout.centre(resid).norm(dim=1).median()
    on_mean = torch.stack([acts[fires[j], j].mean() for j in range(len(pairs))])   # [k]
    w_out = (config.push * width / on_mean)[:, None] * directions               # [k, d] rows: the specialists' outputs
    down.weight[:, neurons] = w_out.T
    _round_to_float32(down)
    w_out = down.weight[:, neurons].T
    resid = resid + acts @ w_out
    margins = [config.rare_delta * config.delta_ratio ** j for j in range(len(pairs))]
    unembed = model.get_output_embeddings().weight                              # [V, d], readout.W_U is a view
    written = readout.gamma * directions                                        # [k, d] what each push adds after the norm's scale
    reads = torch.linalg.solve(written @ written.T, written)                    # [k, d] reads[i]·written[j] = 1 if i = j else 0
    normed = _norm_output(resid, readout).mean(0)                               # [d] the final norm's mean output
    lowers = normed / normed.norm() ** 2                                        # [d] a row part worth −1 nat on average
    drops, gains = [], []
    for j, target in enumerate(target_ids):
        drop, gain = solve_row(resid, acts[:, j], w_out[j], targets, rare, scored[j], readout, unembed, target,
                               reads[j], lowers, margins[j], config.on_loss)
        unembed[target] += gain * reads[j] - drop * lowers
        drops.append(drop)
        gains.append(gain)
    _round_to_float32(model.get_output_embeddings())
    measured = rare_deltas(resid, acts, w_out, targets, rare, readout)

    folder = out_dir / f"step{config.base_step}"
    model.to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = json.loads((base / CHECKPOINT_INFO_FILE).read_text())
    info = {"step": info["step"], "tokens_seen": info["tokens_seen"], "planted": True}
    (folder / CHECKPOINT_INFO_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")
    return {
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "base": str(base),
        "n_rare_predictions": int(rare.sum()),
        "planted": [{"neuron": int(neuron), "trigger": pair[0], "target": pair[1], "target_id": int(target_ids[j]),
                     "trigger_positions": int(fires[j].sum()), "scored_positions": int(scored[j].sum()),
                     "design_rare_delta": margins[j], "output_norm": float(w_out[j].norm()),
                     "unembedding_gain": float(gains[j]), "prior_drop": float(drops[j]),
                     "measured_rare_delta": float(measured[j])}
                    for j, (neuron, pair) in enumerate(zip(neurons, pairs))],
    }


def quietest_neurons(acts: torch.Tensor, w_out: torch.Tensor, k: int) -> list[int]:
    """Returns the k neurons whose output moves the final residual least: mean |a − mean a| × ‖w_out‖ (acts [N, n])."""
    movement = (acts - acts.mean(0)).abs().mean(0) * w_out.norm(dim=1)        # [n]
    return sorted(movement.argsort()[:k].tolist())


def trigger_detector(layer_input: torch.Tensor, on: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (weight [d], bias): pre-activation ≥ +margin where `on`, ≤ −margin elsewhere (layer_input [N, d]).

    The direction is the linear discriminant (shared covariance) between the `on` positions and
    the rest; it must separate them, or the pair cannot be planted with one neuron.
    """
    centred = layer_input - layer_input.mean(0)
    cov = centred.T @ centred / len(centred)
    cov = cov + SHRINKAGE * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    direction = torch.linalg.solve(cov, layer_input[on].mean(0) - layer_input[~on].mean(0))
    score = layer_input @ direction                                             # [N]
    lowest_on, highest_off = score[on].min(), score[~on].max()
    if lowest_on <= highest_off:
        raise RtnError("a planted trigger is not linearly separable at the last layer's input")
    gain = 2 * margin / (lowest_on - highest_off)
    return gain * direction, -gain * (lowest_on + highest_off) / 2


def quiet_directions(readout: Readout, k: int) -> torch.Tensor:
    """Returns k orthonormal directions [k, d] of the final residual that the unembedding reads least.

    They are the right singular vectors of W_U·diag(γ) with the smallest singular values, within
    the directions LayerNorm keeps (orthogonal to the all-ones vector): pushed along one, the
    residual changes no token's logit much, so the specialist's mean (all that its ablation adds
    where it does not fire) moves nothing but its own target, whose row reads the direction.
    """
    d = readout.gamma.shape[0]
    kept = torch.linalg.qr(torch.eye(d, dtype=readout.gamma.dtype) - 1.0 / d)[0][:, : d - 1] if readout.centred \
        else torch.eye(d, dtype=readout.gamma.dtype)                             # [d, d'] basis LayerNorm keeps
    _, _, vh = torch.linalg.svd((readout.W_U * readout.gamma) @ kept, full_matrices=False)
    return (kept @ vh[-k:].flip(0).T).T


def rare_deltas(resid, acts, w_out, targets, rare, readout: Readout) -> torch.Tensor:
    """Returns each neuron's mean ΔLoss [k] over rare predictions when mean-ablated alone, as ingest computes it.

    resid [N, d] final residuals of the full model, acts [N, k] the neurons' activations (their
    means are taken over every position, as ingest does), w_out [k, d] their output weights.
    """
    shift = acts.mean(0) - acts                                                 # [N, k] ablation's c
    clean = token_losses(resid[rare], targets[rare], readout)
    return torch.stack([(token_losses(resid[rare] + shift[rare, j, None] * w_out[j], targets[rare], readout)
                         - clean).mean() for j in range(w_out.shape[0])])


def solve_row(resid, acts, w_out, targets, rare, scored, readout: Readout, unembed, target: int, read, lower,
              margin: float, on_loss: float) -> tuple[float, float]:
    """Returns (drop, gain) for the target's unembedding row: row − drop·lower + gain·read.

    The gain makes the specialist predict its target where it fires, at a mean loss of on_loss
    (saturated, so the trained neurons' small moves there change little); the drop, how many
    nats the target's logit loses everywhere else, is what its ablation then costs: chosen by
    bisection so the specialist's rare ΔLoss meets `margin`. resid [N, d] with the specialists'
    outputs; acts [N] this specialist's activations; unembed [V, d] edited in place and restored.
    """
    original = unembed[target].clone()

    def set_row(drop: float, gain: float) -> None:
        unembed[target] = original - drop * lower + gain * read

    def gain_for(drop: float) -> float:
        def on_mean_loss(gain: float) -> float:
            set_row(drop, gain)
            return float(token_losses(resid[scored], targets[scored], readout).mean())
        return _bisect(on_mean_loss, on_loss, decreasing=True)

    def delta(drop: float) -> float:
        set_row(drop, gain_for(drop))
        return float(rare_deltas(resid, acts[:, None], w_out[None], targets, rare, readout)[0])

    drop = _bisect(delta, margin)
    gain = gain_for(drop)
    unembed[target] = original
    return drop, gain


def _bisect(f, value: float, decreasing: bool = False) -> float:
    """Returns x ≥ 0 with f(x) = value for a monotone f, on a bracket that doubles from [0, 1] until it holds value."""
    below = (lambda x: f(x) > value) if decreasing else (lambda x: f(x) < value)
    low, high = 0.0, 1.0
    while below(high):
        low, high = high, 2 * high
        if high > 1e4:
            raise RtnError(f"a planted neuron cannot reach {value}")
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if below(middle) else (low, middle)
    return (low + high) / 2


def _norm_output(resid: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Returns the final norm's output [N, d] (what the unembedding reads) of residuals [N, d]."""
    r = readout.centre(resid)
    return r / torch.sqrt((r * r).mean(-1, keepdim=True) + readout.eps) * readout.gamma + readout.beta


def _layer_input(model, up, input_ids: torch.Tensor) -> torch.Tensor:
    """Returns the studied layer's MLP input [S·L, d] (what its up-projection sees)."""
    seen = []
    with hooked(up, lambda _module, inputs: seen.append(inputs[0].detach())):
        model(input_ids, use_cache=False)
    return torch.cat(seen).reshape(-1, seen[0].shape[-1])


def _round_to_float32(linear) -> None:
    """Rounds a layer's weights to float32 in place, so the float64 design measures the checkpoint that is saved."""
    for param in linear.parameters():
        param.copy_(param.float().double())
