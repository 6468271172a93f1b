"""The attribution screen: a first-order estimate of every MLP neuron's mean-ablation ΔLoss at every layer.

    rows = attribution_rows(model, adapter, data, batch_size=16)   # attribution_deltas rows (no run_id/step)
    clean_pass(model, adapter, ids, layers, 16, screen=Screen(model, adapter, classes))   # as the ingest runs it

Mean-ablating neuron i of block l moves its activation by c(t, i) = mu(i) - a(t, i) at every
position t, so to first order (attribution patching) the mean loss of a class K changes by

    ΔLoss_K(i) ≈ sum_t c(t, i) dLoss_K / da(t, i),     Loss_K = mean loss of K's predictions,

where the gradient is the total derivative through every later block and position. One forward
(logits at the included predictions only: the unembedding is a fifth of the model's arithmetic)
and one backward per class give it for every neuron of every layer; mu is the mean over every
position, accumulated in the same pass through sum_t c g = mu sum_t g - sum_t a g. Exact
ablation (ingest/ablation.py, ingest/layer_ablation.py) then goes to the layers that matter; the
`attribution_agreement` view says how well the screen ranks neurons where both exist.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import numpy as np
import polars as pl
import torch

from rtn.ingest import adapters
from rtn.ingest.capture import hooked
from rtn.ingest.corpus import CLASS_FILTERS, EXCLUDED, EvalData, class_masks
from rtn.ingest.readout import cross_entropy

ATTRIBUTION_SCHEMA = {"layer": pl.Int32, "neuron": pl.Int32, "token_class": pl.Utf8, "method": pl.Utf8,
                      "delta_loss": pl.Float64, "n": pl.Int32}


class Screen:
    """The attribution estimates, accumulated over the batches of a forward pass that carries the screen.

        screen = Screen(model, adapter, classes)
        with screen.hooked(), torch.enable_grad():
            for start in range(0, S, B):
                model.base_model(ids[start:start + B], use_cache=False)     # any pass: the ingest's clean one
                screen.batch(start, ids[start:start + B])                   # losses, one backward per class
        estimates, counts = screen.estimates(n_positions)

    The ingest's clean pass (layer_ablation.clean_pass) carries it, so the screen costs no forward
    pass of its own; `seconds` is the time spent in batch() (its losses and backward passes).
    """

    def __init__(self, model, adapter, classes: torch.Tensor):
        self.model, self.adapter, self.classes = model, adapter, classes               # classes [S, L]
        self.counts = {name: int(mask.sum()) for name, mask in class_masks(classes.reshape(-1)).items()}
        self.acts: list[torch.Tensor] = []           # this batch's activations of every layer, part of the graph
        self.final: list[torch.Tensor] = []          # this batch's residual entering the final norm
        self.grad_sum, self.act_grad_sum, self.act_sum = {}, {}, 0   # per class code: sum_t g, sum_t a g; sum_t a
        self.seconds = 0.0

    @contextmanager
    def hooked(self):
        """Hooks the model so that a grad-enabled forward pass keeps what batch() differentiates."""
        model, adapter = self.model, self.adapter
        with ExitStack() as stack:
            # the graph starts at the token embeddings whether or not the weights require gradients
            embeddings = model.get_input_embeddings().register_forward_hook(
                lambda _m, _i, out: out.detach().requires_grad_() if torch.is_grad_enabled() else out)
            stack.callback(embeddings.remove)
            for layer in range(len(adapters.blocks(model, adapter))):
                stack.enter_context(hooked(adapters.mlp_out_module(model, adapter, layer),
                                           lambda _m, inputs: self.acts.append(inputs[0])))
            stack.enter_context(hooked(adapters.final_norm(model, adapter),
                                       lambda _m, inputs: self.final.append(inputs[0])))
            yield self

    def batch(self, start: int, ids: torch.Tensor) -> None:
        """Adds the batch of sequences start.. (ids [B, L], just run forward with gradients) to the sums.

        Sums are kept per class code (COMMON, RARE, RARE_CHOSEN: disjoint) and combined into the
        classes at the end. Sequences do not see each other, so one backward pass of the summed
        losses of several codes gives each code's gradient exactly wherever no sequence holds two of
        them: corpus-order windows hold COMMON and RARE, windows chosen for rare targets only
        RARE_CHOSEN, so a batch takes two backward passes at most instead of one per class.
        """
        began = time.perf_counter()
        codes = self.classes[start:start + ids.shape[0]].to(ids.device)          # [B, L]
        keep = (codes != EXCLUDED).reshape(-1)                                   # only these predictions have a loss
        with torch.enable_grad():
            hidden = self.final[0].reshape(-1, self.final[0].shape[-1])[keep]   # [K, d]
            # .forward: the final norm's hooks (this screen's, the clean pass's) are for the model's own pass
            normed = adapters.final_norm(self.model, self.adapter).forward(hidden)
            losses = cross_entropy(self.model.get_output_embeddings().forward(normed),
                                   torch.roll(ids, -1, dims=1).reshape(-1)[keep])   # [K]
            # layer by layer: [n_layers, B, L, n] stacks are hundreds of MB, and fresh pages are slow on small VMs
            detached = [a.detach() for a in self.acts]                           # per layer [B, L, n]
            self.act_sum = self.act_sum + torch.stack([a.sum((0, 1)) for a in detached])
            kept_codes = codes.reshape(-1)[keep]
            passes = _passes(codes)
            for number, together in enumerate(passes):
                loss = losses[torch.isin(kept_codes, torch.tensor(together, device=ids.device))].sum()
                grads = torch.autograd.grad(loss, self.acts, retain_graph=number < len(passes) - 1)
                per_seq = torch.stack([g.sum(1) for g in grads])                             # [n_layers, B, n]
                act_per_seq = torch.stack([(a * g).sum(1) for a, g in zip(detached, grads)])  # [n_layers, B, n]
                del grads
                for code in together:
                    holds = (codes == code).any(1)                                         # [B] sequences with it
                    self.grad_sum[code] = self.grad_sum.get(code, 0) + per_seq[:, holds].sum(1)
                    self.act_grad_sum[code] = self.act_grad_sum.get(code, 0) + act_per_seq[:, holds].sum(1)
        self.acts.clear()
        self.final.clear()
        self.seconds += time.perf_counter() - began

    def estimates(self, n_positions: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Returns ({token_class: first-order ΔLoss [n_layers, n]}, {token_class: n predictions})."""
        mean_acts = self.act_sum / n_positions                               # [n_layers, n] over every position
        estimates = {}
        for name, codes in CLASS_FILTERS.items():
            present = [code for code in codes if code in self.grad_sum]
            if not self.counts[name] or not present:
                continue
            grad_sum = sum(self.grad_sum[code] for code in present) / self.counts[name]
            act_grad_sum = sum(self.act_grad_sum[code] for code in present) / self.counts[name]
            estimates[name] = (mean_acts * grad_sum - act_grad_sum).detach()
        return estimates, self.counts

    def rows(self, n_positions: int) -> pl.DataFrame:
        """Returns attribution_deltas rows (without run_id/step)."""
        return _rows(*self.estimates(n_positions))


def _passes(codes: torch.Tensor) -> list[list[int]]:
    """Returns the class codes present in `codes` [B, L] (EXCLUDED aside) grouped into as few backward passes as
    possible such that no sequence holds two codes of one pass (greedy, codes in order)."""
    present = [int(code) for code in torch.unique(codes) if int(code) != EXCLUDED]
    holds = {code: (codes == code).any(1) for code in present}                  # [B] per code
    passes: list[list[int]] = []
    for code in present:
        for together in passes:
            if not any((holds[code] & holds[other]).any() for other in together):
                together.append(code)
                break
        else:
            passes.append([code])
    return passes


def attribution_deltas(model, adapter, input_ids: torch.Tensor, classes: torch.Tensor,
                       batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Returns ({token_class: first-order ΔLoss [n_layers, n]}, {token_class: n predictions}) of every neuron,
    from a forward pass of its own (the ingest's clean pass carries a Screen instead).

    input_ids [S, L]; classes [S, L] the class code of each position's prediction (EXCLUDED
    ones count towards the means mu, not towards any loss). Arithmetic in the model's dtype.
    """
    device = next(model.parameters()).device
    screen = Screen(model, adapter, classes)
    with screen.hooked(), torch.enable_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            model.base_model(ids, use_cache=False)                               # the blocks; logits in batch()
            screen.batch(start, ids)
    return screen.estimates(input_ids.numel())


def attribution_rows(model, adapter, data: EvalData, batch_size: int) -> pl.DataFrame:
    """Returns attribution_deltas rows (without run_id/step): the first-order ΔLoss of every neuron of every layer."""
    return _rows(*attribution_deltas(model, adapter, data.input_ids, data.classes, batch_size))


def _rows(estimates: dict[str, torch.Tensor], counts: dict[str, int]) -> pl.DataFrame:
    frames = []
    for name, per_layer in estimates.items():
        n_layers, n = per_layer.shape
        frames.append(pl.DataFrame({
            "layer": np.repeat(np.arange(n_layers, dtype=np.int32), n),
            "neuron": np.tile(np.arange(n, dtype=np.int32), n_layers), "token_class": name,
            "method": "attribution", "delta_loss": per_layer.double().cpu().numpy().ravel(), "n": counts[name]}))
    return pl.concat(frames).cast(ATTRIBUTION_SCHEMA) if frames else pl.DataFrame(schema=ATTRIBUTION_SCHEMA)
