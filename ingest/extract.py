"""One checkpoint in, the warehouse's per-step tables out (pure: no I/O)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from rtn.ingest import adapters
from rtn.ingest.ablation import ablate_all
from rtn.ingest.attribution import Screen
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import EXCLUDED, EvalData, class_masks, mean_and_stderr
from rtn.ingest.groups import ablation_groups, group_ablation_rows
from rtn.ingest.heads import head_ablations, recording
from rtn.ingest.layer_ablation import CleanPass, clean_pass, layer_deltas
from rtn.ingest.progress import StageTimer
from rtn.ingest.readout import Readout, readout_of, token_losses
from rtn.ingest.spectra import weight_spectra
from rtn.ingest.token_effects import token_effects


@dataclass
class _Predictions:
    """The evaluated predictions of a checkpoint, shared by every studied layer."""
    classes: torch.Tensor      # [S*L] class code of each position
    keep: torch.Tensor         # [S*L] included predictions (M of them)
    grid_targets: torch.Tensor # [S, L] token predicted at each position (pos + 1)
    resid: torch.Tensor        # [M, d] final residual at the included predictions
    targets: torch.Tensor      # [M]
    masks: dict                # {token_class: [M] mask}
    readout: Readout


def extract_checkpoint(model, data: EvalData, config: IngestConfig, timer: StageTimer,
                       step: int = 0) -> dict[str, pl.DataFrame]:
    """Returns {table: rows without run_id/step} for one loaded checkpoint (`step` seeds its random groups)."""
    adapter = adapters.adapter_for(model)
    n_layers = len(adapters.blocks(model, adapter))
    primary = adapters.resolve_layer(model, adapter, config.layer)
    layers = config.studied_layers(n_layers)
    device = next(model.parameters()).device
    precision = config.precision if config.precision != "auto" else ("float32" if device.type == "cuda" else "float64")
    dtype = torch.float64 if precision == "float64" else torch.float32
    # Layers before the last re-run the model's blocks: in the ablation's precision, on a copy of the model.
    forward_model = model if layers == [n_layers - 1] or dtype == model.dtype else copy.deepcopy(model).to(dtype)
    # the heads' clean pass is this one (recorded) where the heads re-run the same model
    heads_share = forward_model is model and primary in layers
    # the attribution screen rides on the clean pass: its backward passes, none of its own forward
    screen = Screen(forward_model, adapter, data.classes) if config.attribution else None
    forward_began = time.perf_counter()
    n_batches = -(-data.input_ids.shape[0] // config.batch_size)
    with recording(model, adapter, config if heads_share else None) as head_clean, \
            timer.ticker(n_batches, "forward and attribution" if screen else "forward", "batches") as tick:
        clean = clean_pass(forward_model, adapter, data.input_ids, layers, config.batch_size, screen=screen, tick=tick)
        keep = (data.classes != EXCLUDED).reshape(-1).to(device)                   # [S*L]
        grid_targets = torch.roll(data.input_ids, -1, dims=1).to(device)           # token at pos + 1
        resid = torch.cat(clean.final).reshape(-1, clean.final[0].shape[-1]).to(dtype)[keep]   # [M, d]
        targets = grid_targets.reshape(-1)[keep]
        readout = readout_of(adapters.final_norm(forward_model, adapter), forward_model.get_output_embeddings()).to(dtype)
        classes = data.classes.reshape(-1).to(device)
        predictions = _Predictions(classes, keep, grid_targets, resid, targets, class_masks(classes[keep]), readout)
        clean_losses = token_losses(resid, targets, readout)
        eval_losses = pl.DataFrame([{"token_class": name, "mean_loss": float(clean_losses[mask].mean()),
                                     "n": int(mask.sum())} for name, mask in predictions.masks.items()])
    timer.record("forward", time.perf_counter() - forward_began - (screen.seconds if screen else 0.0))

    per_layer = [_layer_tables(forward_model, adapter, data, config, clean, layer, predictions, dtype, timer, step)
                 for layer in layers]
    tables = {name: pl.concat([frames[name] for frames in per_layer]) for name in per_layer[0]}
    tables["eval_losses"] = eval_losses
    if screen is not None:
        began = time.perf_counter()
        tables["attribution_deltas"] = screen.rows(data.input_ids.numel())
        timer.record("attribution", screen.seconds + time.perf_counter() - began)
    if config.spectra:
        with timer("spectra"):
            tables["weight_spectra"] = weight_spectra(model, adapter)
    with timer("heads"):
        groups = tables.pop("_groups")
        plateau = groups.filter((pl.col("group_name") == "plateau") & (pl.col("layer") == primary))["neuron"].to_list()
        clean_by_class = dict(zip(eval_losses["token_class"], eval_losses["mean_loss"]))
        tables["head_ablations"] = head_ablations(model, adapter, data, config, clean_by_class, plateau,
                                                  recorded=head_clean, ingest_pass=clean, progress=timer)
    return tables


def _layer_tables(model, adapter, data: EvalData, config: IngestConfig, clean: CleanPass, layer: int,
                  p: _Predictions, dtype: torch.dtype, timer: StageTimer, step: int) -> dict[str, pl.DataFrame]:
    """Returns the per-layer tables of one studied MLP layer (and '_groups', the groups its ablation rows define)."""
    n_mlp = clean.acts[layer].shape[-1]
    acts_all = clean.acts[layer].reshape(-1, n_mlp).to(dtype)  # [S*L, n]
    mean_acts = acts_all.mean(0)                                # [n] the ablation means, over every position
    neurons = np.arange(n_mlp, dtype=np.int32)
    last = layer == len(adapters.blocks(model, adapter)) - 1

    with timer("neuron_stats"):
        stats = {"layer": layer, "neuron": neurons, "mean_act": mean_acts.cpu().numpy(),
                 "std_act": acts_all.std(0, correction=1).cpu().numpy(),
                 "frac_active": (acts_all > 0).to(dtype).mean(0).cpu().numpy()}
        for name, mask in class_masks(p.classes).items():
            if name == "all":
                continue
            picked = acts_all[mask]
            stats[f"mean_act_{name}"] = picked.mean(0).cpu().numpy() if len(picked) else np.full(n_mlp, np.nan)
        neuron_stats = pl.DataFrame(stats)

    with timer("activation_samples"):
        samples = acts_all[data.sample_flat.to(acts_all.device)].T.float().cpu().numpy()   # [n, n_samples]
        activation_samples = pl.DataFrame({"layer": layer, "neuron": neurons, "acts": list(samples)},
                                          schema_overrides={"acts": pl.List(pl.Float32)})

    with timer("ablation"):
        acts = acts_all[p.keep]                                                   # [M, n] included predictions
        w_in, w_out = adapters.mlp_weights(model, adapter, layer)
        w_out = w_out.to(dtype)                                                   # [n, d]
        included = p.keep.reshape(p.grid_targets.shape)

        def rerun_deltas(groups=None):                                            # [M, G], layers before the last
            what = "ablation" if groups is None else "group ablation"
            with timer.ticker((n_mlp if groups is None else len(groups)) * len(clean.final), f"{what} of layer {layer}",
                              "re-runs") as tick:
                return layer_deltas(model, adapter, clean, layer, mean_acts, p.grid_targets, included, groups,
                                    tick=tick)

        deltas = ablate_all(p.resid, acts, mean_acts, w_out, p.targets, p.readout) if last else rerun_deltas()
        rows = []
        for name, mask in p.masks.items():
            mean, stderr, n = mean_and_stderr(deltas, mask)
            rows.append(pl.DataFrame({"layer": layer, "neuron": neurons, "token_class": name,
                                      "delta_loss": mean.cpu().numpy(), "std_err": stderr.cpu().numpy(), "n": n}))
        ablation = pl.concat(rows)

    with timer("weights"):
        neuron_weights = pl.DataFrame({"layer": layer, "neuron": neurons,
                                       "w_in": list(w_in.float().cpu().numpy()),
                                       "w_out": list(w_out.float().cpu().numpy())},
                                      schema_overrides={"w_in": pl.List(pl.Float32), "w_out": pl.List(pl.Float32)})
    tables = {"neuron_stats": neuron_stats, "activation_samples": activation_samples, "ablation_deltas": ablation,
              "neuron_weights": neuron_weights}
    with timer("token_effects"):
        tables["neuron_token_effects"] = token_effects(p.readout, w_out, layer, data.vocab)
    with timer("group_ablation"):
        groups = ablation_groups(ablation, config.run_id(), step)   # the warehouse's neuron_groups SQL
        tables["group_ablation_deltas"] = group_ablation_rows(groups, p.resid, acts, mean_acts, w_out, p.targets,
                                                              p.readout, p.masks, None if last else rerun_deltas)
        tables["_groups"] = groups
    return tables
