"""One checkpoint in, the warehouse's per-step tables out (pure: no I/O)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import polars as pl
import torch

from ingest import adapters
from ingest.ablation import neuron_deltas, readout_of, token_losses
from ingest.capture import capture
from ingest.config import IngestConfig
from ingest.corpus import COMMON, EXCLUDED, RARE, EvalData, class_masks
from ingest.groups import ablation_groups, group_ablation_rows
from ingest.heads import head_ablations
from ingest.spectra import spectra_table


class StageTimer:
    """Collects the wall time of each named stage of a checkpoint's ingest."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)


def _mean_and_stderr(values: torch.Tensor, mask: torch.Tensor):
    """Returns (mean, standard error, n) over the rows of `values` [M, k] selected by `mask`."""
    picked = values[mask]
    n = picked.shape[0]
    mean = picked.mean(0)
    stderr = picked.std(0, correction=1) / np.sqrt(n) if n > 1 else torch.full_like(mean, float("nan"))
    return mean, stderr, n


def extract_checkpoint(model, data: EvalData, config: IngestConfig, timer: StageTimer,
                       step: int = 0) -> dict[str, pl.DataFrame]:
    """Returns {table: rows without run_id/step} for one loaded checkpoint (`step` seeds its random groups)."""
    adapter = adapters.adapter_for(model)
    layer = adapters.resolve_layer(model, adapter, config.layer)
    device = next(model.parameters()).device
    precision = config.precision if config.precision != "auto" else ("float32" if device.type == "cuda" else "float64")
    dtype = torch.float64 if precision == "float64" else torch.float32
    with timer("forward"):
        cap = capture(model, adapter, layer, data.input_ids, config.batch_size, keep_device=True)
    n_mlp = cap.acts.shape[-1]
    acts_all = cap.acts.reshape(-1, n_mlp).to(dtype)            # [S*L, n]
    classes = data.classes.reshape(-1).to(device)               # [S*L]
    mean_acts = acts_all.mean(0)                                # [n] the ablation means, over every position

    with timer("neuron_stats"):
        stats = {"layer": layer, "neuron": np.arange(n_mlp, dtype=np.int32),
                 "mean_act": mean_acts.cpu().numpy(),
                 "std_act": acts_all.std(0, correction=1).cpu().numpy(),
                 "frac_active": (acts_all > 0).to(dtype).mean(0).cpu().numpy()}
        for name, code in (("rare", RARE), ("common", COMMON)):
            picked = acts_all[classes == code]
            stats[f"mean_act_{name}"] = picked.mean(0).cpu().numpy() if len(picked) else np.full(n_mlp, np.nan)
        neuron_stats = pl.DataFrame(stats)

    with timer("activation_samples"):
        samples = acts_all[data.sample_flat.to(device)].T.float().cpu().numpy()   # [n, n_samples]
        activation_samples = pl.DataFrame({"layer": layer, "neuron": np.arange(n_mlp, dtype=np.int32),
                                           "acts": list(samples)},
                                          schema_overrides={"acts": pl.List(pl.Float32)})

    with timer("ablation"):
        keep = (data.classes != EXCLUDED).reshape(-1).to(device)                   # [S*L]
        targets = torch.roll(data.input_ids, -1, dims=1).reshape(-1).to(device)   # token at pos + 1
        resid = cap.resid.reshape(-1, cap.resid.shape[-1]).to(dtype)[keep]         # [M, d]
        acts, targets = acts_all[keep], targets[keep]                             # [M, n], [M] included predictions
        readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings()).to(dtype)
        w_in, w_out = adapters.mlp_weights(model, adapter, layer)
        w_out = w_out.to(dtype)                                                   # [n, d]
        deltas = ablate_all(resid, acts, mean_acts, w_out, targets, readout)      # [M, n]
        masks = class_masks(classes[keep])
        rows = []
        for name, mask in masks.items():
            mean, stderr, n = _mean_and_stderr(deltas, mask)
            rows.append(pl.DataFrame({"layer": layer, "neuron": np.arange(n_mlp, dtype=np.int32), "token_class": name,
                                      "delta_loss": mean.cpu().numpy(), "std_err": stderr.cpu().numpy(), "n": n}))
        ablation = pl.concat(rows)
        clean = token_losses(resid, targets, readout)
        eval_losses = pl.DataFrame([{"token_class": name, "mean_loss": float(clean[mask].mean()),
                                     "n": int(mask.sum())} for name, mask in masks.items()])

    with timer("weights"):
        neuron_weights = pl.DataFrame({"layer": layer, "neuron": np.arange(n_mlp, dtype=np.int32),
                                       "w_in": list(w_in.float().cpu().numpy()),
                                       "w_out": list(w_out.float().cpu().numpy())},
                                      schema_overrides={"w_in": pl.List(pl.Float32), "w_out": pl.List(pl.Float32)})
    tables = {"neuron_stats": neuron_stats, "activation_samples": activation_samples, "ablation_deltas": ablation,
              "eval_losses": eval_losses, "neuron_weights": neuron_weights}
    with timer("token_effects"):
        tables["neuron_token_effects"] = token_effects(readout, w_out, layer, data.vocab)
    if config.spectra:
        with timer("spectra"):
            tables["weight_spectra"] = weight_spectra(model, adapter)

    # --- attention heads and group synergy (ingest/heads.py, ingest/groups.py) ---
    with timer("group_ablation"):
        groups = ablation_groups(ablation, config.run_id(), step)   # the warehouse's neuron_groups SQL
        tables["group_ablation_deltas"] = group_ablation_rows(groups, resid, acts, mean_acts, w_out, targets,
                                                              readout, masks)
    with timer("heads"):
        plateau = groups.filter(pl.col("group_name") == "plateau")["neuron"].to_list()
        clean_losses = dict(zip(eval_losses["token_class"], eval_losses["mean_loss"]))
        tables["head_ablations"] = head_ablations(model, adapter, data, config, clean_losses, plateau)
    return tables


TOP_TOKENS = 10   # tokens kept per neuron and direction in neuron_token_effects


@torch.no_grad()
def token_effects(readout, w_out, layer: int, vocab: list, top: int = TOP_TOKENS, chunk: int = 512) -> pl.DataFrame:
    """Returns neuron_token_effects rows: each neuron's `top` most boosted and most suppressed tokens.

    The effect is B(i) = W_U (gamma * w~(i)), the ablation formula's neuron term: the logit change
    per unit of activation before the final norm's 1/s. Neurons go `chunk` at a time, so no
    [neurons, vocabulary] matrix of a large model is held at once.
    """
    frames = []
    for start in range(0, w_out.shape[0], chunk):
        B = (readout.centre(w_out[start:start + chunk]) * readout.gamma) @ readout.W_U.T   # [k, V]
        for direction, largest in (("boost", True), ("suppress", False)):
            values, ids = B.topk(min(top, B.shape[1]), dim=1, largest=largest)           # [k, top]
            k, t = ids.shape
            ids = ids.cpu().numpy().ravel()
            frames.append(pl.DataFrame({
                "layer": layer, "neuron": np.repeat(np.arange(start, start + k, dtype=np.int32), t),
                "direction": direction, "rank": np.tile(np.arange(1, t + 1, dtype=np.int32), k),
                "token_id": ids.astype(np.int32),
                "token": [vocab[i] if i < len(vocab) else None for i in ids.tolist()],
                "logit_effect": values.double().cpu().numpy().ravel()}, schema_overrides={"token": pl.Utf8}))
    return pl.concat(frames)


def weight_spectra(model, adapter) -> pl.DataFrame:
    """Returns weight_spectra rows of every 2-D weight matrix of the model (tied matrices once)."""
    seen, matrices = set(), []
    for name, param in model.named_parameters():   # named_parameters lists a tied weight once
        if param.ndim == 2 and id(param) not in seen:
            seen.add(id(param))
            matrices.append((name, adapters.matrix_layer(name, model, adapter), param.detach().double().cpu().numpy()))
    return spectra_table(matrices)


def ablate_all(resid, acts, mean_acts, w_out, targets, readout) -> torch.Tensor:
    """Returns per-position ΔLoss [M, n] of every neuron: the fused Triton kernel on CUDA, chunked torch elsewhere.

    The kernel's arithmetic is float32, so float64 inputs (--precision float64) stay on the
    torch path, on whatever device they are.
    """
    if resid.is_cuda and resid.dtype == torch.float32:
        from ingest import ablation_triton   # imports triton only when called
        if ablation_triton.available():
            return ablation_triton.neuron_deltas_triton(resid, acts, mean_acts, w_out, targets, readout)
    return neuron_deltas(resid, acts, mean_acts, w_out, targets, readout)
