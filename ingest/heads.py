"""Attention-head and whole-attention-layer ablations of the last K layers -> `head_ablations` rows.

    rows = head_ablations(model, adapter, data, config, clean_losses_by_class, plateau_neurons)

Every ablation is a forward pre-hook on the layer's attention output projection, whose input is
the concatenation of the head outputs, head-major [..., n_heads * d_head]. The clean run records
the residual entering each ablated layer (ingest/rerun.py), so an ablation re-runs only that
block, the blocks after it, the final norm and the unembedding — at the positions whose loss is
averaged (EXCLUDED positions are skipped). Two methods:

* `mean`: the head's slice is replaced by its mean over every eval position (of a clean run);
* `bos`:  the head attends only to the first position, as the follow-up paper's code did. Under
  causal attention the first position can attend to nothing but itself, so there the head's
  output already is its value vector v(0); with all attention moved to the first token every
  position outputs that same v(0). The hook therefore broadcasts the slice at position 0 over
  the sequence, which is exact for every causal family (GPT-NeoX, GPT-2, Llama).

head = -1 ablates every head of the layer at once (the whole attention layer).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import polars as pl
import torch

from rtn.errors import RtnError
from rtn.ingest import adapters, rerun
from rtn.ingest.adapters import Adapter
from rtn.ingest.capture import hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import EXCLUDED, EvalData, class_masks
from rtn.ingest.layer_ablation import CleanPass
from rtn.ingest.progress import StageTimer
from rtn.ingest.readout import cross_entropy

METHODS = ("mean", "bos")
WHOLE_LAYER = -1   # the `head` of a whole-layer ablation

HEAD_ABLATIONS_SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "method": pl.Utf8, "token_class": pl.Utf8,
                         "delta_loss": pl.Float64, "relative_change": pl.Float64,
                         "plateau_act_change": pl.Float64}


EVERY_LAYER = "all"   # --head-layers all


def check_head_layers(n_layers: int, k: int | str) -> None:
    """Raises a one-line RtnError unless 0 <= k <= n_layers or k is EVERY_LAYER (k = --head-layers)."""
    if k != EVERY_LAYER and not (isinstance(k, int) and 0 <= k <= n_layers):
        raise RtnError(f"--head-layers {k} must lie between 0 and {n_layers}, the model's number of layers, or be all")


def head_layers(n_layers: int, k: int | str) -> list[int]:
    """Returns the 0-based indices of the last k attention layers (every layer for EVERY_LAYER)."""
    check_head_layers(n_layers, k)
    return list(range(n_layers)) if k == EVERY_LAYER else list(range(n_layers - k, n_layers))


def head_columns(head: int, n_heads: int, width: int) -> slice:
    """Returns the columns of `head` in the attention-output-projection input (all of them for -1)."""
    if head == WHOLE_LAYER:
        return slice(0, width)
    if not 0 <= head < n_heads:
        raise RtnError(f"attention head {head} does not exist: layers have {n_heads} heads "
                       f"(0..{n_heads - 1}, or -1 for the whole layer)")
    d_head = width // n_heads
    return slice(head * d_head, (head + 1) * d_head)


def ablation_hook(columns: slice, method: str, means: torch.Tensor):
    """Returns a forward pre-hook for the attention output projection that ablates `columns`."""
    if method not in METHODS:
        raise RtnError(f"head ablation method {method!r} is not one of {', '.join(METHODS)}")

    def hook(_module, inputs):
        heads_out = inputs[0].clone()                                 # [B, L, n_heads * d_head]
        if method == "mean":
            heads_out[..., columns] = means[columns].to(heads_out.dtype)
        else:   # bos: every position outputs the head's value at the first position
            heads_out[..., columns] = heads_out[:, :1, columns]
        return (heads_out, *inputs[1:])
    return hook


@dataclass
class _Pass:
    losses: torch.Tensor        # [S*L] loss of the prediction at each position (NaN where not computed)
    plateau_acts: torch.Tensor  # [S*L, p] activations of the plateau neurons at the studied layer


def _plateau_grabber(plateau: torch.Tensor, dtype: torch.dtype, acts: list):
    def grab_plateau(_module, inputs):
        acts.append(inputs[0][..., plateau.to(inputs[0].device)].flatten(0, -2).to(dtype))   # [B*L, p]
    return grab_plateau


@torch.no_grad()
def _run(model, adapter: Adapter, input_ids: torch.Tensor, batch_size: int, dtype: torch.dtype,
         studied_layer: int, plateau: torch.Tensor, extra_hooks=()) -> _Pass:
    """Returns the per-position losses and plateau activations of one whole-model run with `extra_hooks`."""
    device = next(model.parameters()).device
    losses, acts = [], []
    with ExitStack() as stack:
        stack.enter_context(hooked(adapters.mlp_out_module(model, adapter, studied_layer),
                                   _plateau_grabber(plateau, dtype, acts)))
        for module, pre_hook in extra_hooks:
            stack.enter_context(hooked(module, pre_hook))
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            logits = model(ids, use_cache=False).logits.to(dtype)                   # [B, L, V]
            targets = torch.roll(ids, -1, dims=1)                                    # token at pos + 1
            losses.append(cross_entropy(logits, targets).reshape(-1))
    return _Pass(torch.cat(losses), torch.cat(acts))


@torch.no_grad()
def _rerun(model, adapter: Adapter, calls: rerun.BlockCalls, layer: int, input_ids: torch.Tensor,
           included: torch.Tensor, batch_size: int, dtype: torch.dtype, studied_layer: int,
           plateau: torch.Tensor, clean: _Pass, patch) -> _Pass:
    """Returns what `_run` with `patch` returns, re-running from block `layer` of the recorded clean run.

    Losses are computed at `included` [S, L] positions only (NaN elsewhere). A studied layer
    before `layer` is not re-run: its activations are the clean ones.
    """
    acts = []
    with ExitStack() as stack:
        if studied_layer >= layer:
            stack.enter_context(hooked(adapters.mlp_out_module(model, adapter, studied_layer),
                                       _plateau_grabber(plateau, dtype, acts)))
        losses = _included_losses(model, adapter, rerun.rerun(model, adapter, calls, layer, [patch]),   # _run's batches
                                  input_ids, included, batch_size, dtype)
    return _Pass(losses, torch.cat(acts) if acts else clean.plateau_acts)


def _included_losses(model, adapter: Adapter, hiddens, input_ids: torch.Tensor, included: torch.Tensor,
                     batch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Returns the losses [S*L] at `included` [S, L] positions (NaN elsewhere) of final residuals given per batch of
    `batch_size` sequences, through the model's own final norm and unembedding."""
    device = next(model.parameters()).device
    kept, targets = [], []
    for batch, hidden in enumerate(hiddens):
        start = batch * batch_size
        ids = input_ids[start:start + batch_size].to(device)
        keep = included[start:start + batch_size].to(device)                     # [B, L]
        kept.append(hidden[keep])                                                # [K, d]
        targets.append(torch.roll(ids, -1, dims=1)[keep])                        # token at pos + 1
    kept, targets = torch.cat(kept), torch.cat(targets)
    # the unembedding as few large GEMMs (rows of every batch together), READOUT_ROWS at a time
    computed = torch.cat([cross_entropy(rerun.readout_logits(model, adapter, kept[r:r + READOUT_ROWS]).to(dtype),
                                        targets[r:r + READOUT_ROWS]) for r in range(0, len(kept), READOUT_ROWS)])
    losses = torch.full((input_ids.numel(),), float("nan"), dtype=dtype, device=device)
    losses[included.reshape(-1).to(device)] = computed
    return losses


READOUT_ROWS = 2048   # final residuals per unembedding GEMM in _included_losses: [2048, V] float32 logits ~ 400 MB


@dataclass
class CleanRecording:
    """What the heads need from a clean forward pass: the blocks' calls from the first head layer on and,
    per head layer, the sum of its head outputs [n_heads * d_head] over every position (for the means)."""
    calls: rerun.BlockCalls
    sums: dict[int, torch.Tensor]


@contextmanager
def recording(model, adapter: Adapter, config: IngestConfig | None):
    """Yields the CleanRecording that every forward pass of `model` inside the block fills (None without head
    layers, or without a config: nothing recorded).

    The ingest's own capture pass runs inside it, so the heads need no clean pass of their own.
    """
    layers = head_layers(len(adapters.blocks(model, adapter)), config.head_layers) if config is not None else []
    if not layers:
        yield None
        return
    sums: dict[int, torch.Tensor] = {}

    def accumulate(layer):
        def hook(_module, inputs):
            total = inputs[0].detach().to(torch.float64).sum((0, 1))                 # [n_heads * d_head]
            sums[layer] = sums[layer] + total if layer in sums else total
        return hook

    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(hooked(adapters.attn_out_module(model, adapter, layer), accumulate(layer)))
        calls = stack.enter_context(rerun.recording(model, adapter, layers))
        yield CleanRecording(calls, sums)


def _clean_from_pass(model, adapter: Adapter, ingest_pass: CleanPass, studied: int, input_ids: torch.Tensor,
                     included: torch.Tensor, batch_size: int, dtype: torch.dtype, plateau: torch.Tensor) -> _Pass:
    """Returns the clean _Pass from the ingest's clean pass: losses at `included` positions from its final residuals,
    batch by batch as _rerun computes the ablated ones, plateau activations from its studied layer's."""
    losses = _included_losses(model, adapter, ingest_pass.final, input_ids, included, batch_size, dtype)
    acts = ingest_pass.acts[studied]
    return _Pass(losses, acts.reshape(-1, acts.shape[-1])[:, plateau.to(acts.device)].to(dtype))


@torch.no_grad()
def head_ablations(model, adapter: Adapter, data: EvalData, config: IngestConfig,
                   clean_losses_by_class: dict[str, float] | None, plateau_neurons,
                   methods=METHODS, recorded: CleanRecording | None = None,
                   ingest_pass: CleanPass | None = None, progress: StageTimer | None = None) -> pl.DataFrame:
    """Returns head_ablations rows (without run_id/step) for every head and whole layer of the last K layers.

    clean_losses_by_class: {token_class: clean mean loss} (eval_losses), the denominator of
    relative_change; None takes it from this function's own clean run. plateau_neurons: the
    neurons of the studied layer whose mean |activation change| is reported (empty: NaN).
    recorded + ingest_pass: the CleanRecording and the ingest's CleanPass (of the studied layer, in batches of
    config.batch_size) of one clean pass over data.input_ids (ingest/extract.py); without them this function makes
    its own clean pass. progress: the checkpoint's StageTimer, whose ticker shows the re-runs' progress (None: none).
    """
    n_layers = len(adapters.blocks(model, adapter))
    layers = head_layers(n_layers, config.head_layers)
    if not layers:
        return pl.DataFrame(schema=HEAD_ABLATIONS_SCHEMA)
    studied = adapters.resolve_layer(model, adapter, config.layer)
    dtype = torch.float64 if config.precision == "float64" else torch.float32
    device = next(model.parameters()).device
    plateau = torch.as_tensor(list(plateau_neurons), dtype=torch.long)
    n_heads = adapters.n_heads(model, adapter)

    if recorded is None:
        with recording(model, adapter, config) as own:
            clean = _run(model, adapter, data.input_ids, config.batch_size, dtype, studied, plateau)
        recorded = own
    else:
        clean = _clean_from_pass(model, adapter, ingest_pass, studied, data.input_ids, data.classes != EXCLUDED,
                                 config.batch_size, dtype, plateau)
    calls = recorded.calls
    means = {layer: total / data.input_ids.numel() for layer, total in recorded.sums.items()}   # over every eval position
    masks = class_masks(data.classes.reshape(-1).to(device))
    if clean_losses_by_class is None:
        clean_losses_by_class = {name: float(clean.losses[mask].mean()) for name, mask in masks.items()}

    reruns = [(layer, method, head) for layer in layers for method in methods for head in [*range(n_heads), WHOLE_LAYER]]
    rows = []
    with (progress or StageTimer()).ticker(len(reruns), "heads", "re-runs") as tick:
        for layer, method, head in reruns:
            hook = ablation_hook(head_columns(head, n_heads, means[layer].shape[0]), method, means[layer])
            ablated = _rerun(model, adapter, calls, layer, data.input_ids, data.classes != EXCLUDED,
                             config.batch_size, dtype, studied, plateau, clean,
                             (adapters.attn_out_module(model, adapter, layer), hook))
            tick(1)
            delta = ablated.losses - clean.losses                                 # [S*L]
            act_change = (ablated.plateau_acts - clean.plateau_acts).abs()        # [S*L, p]
            for name, mask in masks.items():
                delta_loss = float(delta[mask].mean()) if mask.any() else float("nan")
                rows.append({
                    "layer": layer, "head": head, "method": method, "token_class": name,
                    "delta_loss": delta_loss,
                    "relative_change": delta_loss / clean_losses_by_class[name]
                    if clean_losses_by_class.get(name) else float("nan"),
                    "plateau_act_change": float(act_change[mask].mean())
                    if len(plateau) and mask.any() else float("nan"),
                })
    return pl.DataFrame(rows, schema=HEAD_ABLATIONS_SCHEMA)
