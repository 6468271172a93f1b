"""One checkpoint in, the warehouse's per-step tables out (pure: no I/O)."""
from __future__ import annotations

import numpy as np
import polars as pl
import torch

from rtn.ingest import adapters
from rtn.ingest.ablation import ablate_all
from rtn.ingest.capture import capture
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import EXCLUDED, EvalData, class_masks, mean_and_stderr
from rtn.ingest.groups import ablation_groups, group_ablation_rows
from rtn.ingest.heads import head_ablations, recording
from rtn.ingest.progress import StageTimer
from rtn.ingest.readout import readout_of, token_losses
from rtn.ingest.spectra import weight_spectra
from rtn.ingest.token_effects import token_effects


def extract_checkpoint(model, data: EvalData, config: IngestConfig, timer: StageTimer,
                       step: int = 0) -> dict[str, pl.DataFrame]:
    """Returns {table: rows without run_id/step} for one loaded checkpoint (`step` seeds its random groups)."""
    adapter = adapters.adapter_for(model)
    layer = adapters.resolve_layer(model, adapter, config.layer)
    device = next(model.parameters()).device
    precision = config.precision if config.precision != "auto" else ("float32" if device.type == "cuda" else "float64")
    dtype = torch.float64 if precision == "float64" else torch.float32
    with timer("forward"), recording(model, adapter, config) as head_clean:   # the heads' clean pass too
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
        for name, mask in class_masks(classes).items():
            if name == "all":
                continue
            picked = acts_all[mask]
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
            mean, stderr, n = mean_and_stderr(deltas, mask)
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
        tables["head_ablations"] = head_ablations(model, adapter, data, config, clean_losses, plateau,
                                                  recorded=head_clean, captured=cap)
    return tables
