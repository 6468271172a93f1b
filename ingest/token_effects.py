"""Each neuron's most boosted and most suppressed tokens -> `neuron_token_effects` rows."""
from __future__ import annotations

import numpy as np
import polars as pl
import torch

from rtn.ingest.readout import Readout

TOP_TOKENS = 10   # tokens kept per neuron and direction in neuron_token_effects


@torch.no_grad()
def token_effects(readout: Readout, w_out, layer: int, vocab: list, top: int = TOP_TOKENS, chunk: int = 512) -> pl.DataFrame:
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
