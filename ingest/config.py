"""The ingest configuration; stored whole as JSON in `runs.config`."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class IngestConfig:
    model: str                          # hub id (EleutherAI/pythia-410m) or local save_pretrained folder
    checkpoints: str = "final"          # final, all, comma list of revisions, or a folder of checkpoint folders
    corpus: str = "synthetic"           # hub data set name[:config[:split]], local .txt/.jsonl/.parquet file or folder, or synthetic
    run: str | None = None              # run_id; default: the model's folder or repo name
    tokenizer: str | None = None        # tokenizer folder or hub id; default: the model's own
    tokens: int = 4096                  # evaluated positions per checkpoint (rounded down to whole sequences); with
                                        # --min-rare, min_rare of them are rare targets of windows chosen for them
    seq_len: int = 128                  # length of each evaluated sequence
    layer: int = -1                     # studied MLP layer, 0-based block index; negative counts from the end
    layers: str | None = None           # MLP layers ablated exactly beside --layer: "all" or a comma list of block
                                        # indices (negative count from the end); every per-layer table gets their rows.
                                        # The last layer is analytic, earlier ones re-run the blocks after them
    device: str = "auto"                # auto (cuda when available), cpu or cuda
    precision: str = "auto"             # ablation arithmetic: float64, float32, or auto (float64 on CPU, float32 + the fused kernel on CUDA)
    rare_threshold: float = 0.5         # a type is rare below this percentile of types by count
    rare_ranks: str | None = None       # "MIN:MAX": the papers' band instead: Zipf ranks MIN..MAX rare (1 = most
                                        # frequent), before it common, after it excluded (sql/token_classes.sql)
    exclude_below_elbow: bool = False   # also exclude types counted below the rank-frequency curve's elbow
    min_rare: int = 0                   # rare-target predictions wanted: when the corpus-order windows hold fewer, they
                                        # shrink to tokens - min_rare and windows rich in rare targets are added until
                                        # reached; see eval_tokens.selection. 0 (default) = corpus order only, as
                                        # before; rtn demo --real asks for 1024, and ingest suggests it when rare is short
    frequencies: str | None = None      # unigram counts defining rarity (.npy per token id, or .parquet/.csv token_id,count);
                                        # default: counts of the corpus itself
    class_by: str = "target"            # class of a prediction: the predicted token (target) or the input token
    n_samples: int = 512                # positions kept per neuron in activation_samples (half rare when possible)
    max_documents: int = 50_000         # documents read from the corpus for token frequencies
    seed: int = 0                       # seeds the activation sample
    batch_size: int = 16                # sequences per forward pass
    head_layers: int | str = 2          # last K attention layers whose heads are ablated (0 = none, "all" = every layer)
    spectra: bool = True                # fit the spectrum of every 2-D weight matrix
    attribution: bool = True            # the first-order screen of every neuron of every layer (attribution_deltas)

    # Settings that change how a run is computed, not what it contains: a resumed run may differ in these.
    RUNTIME_ONLY = ("device", "batch_size")

    def run_id(self) -> str:
        """Returns the run name: --run, else the model's last path component."""
        return self.run or Path(self.model.rstrip("/")).name

    def rare_rank_band(self) -> tuple[int, int] | None:
        """Returns (min, max) Zipf ranks of --rare-ranks, or None for the percentile rule; ValueError when malformed."""
        if not self.rare_ranks:
            return None
        low, high = (int(part) for part in self.rare_ranks.split(":"))
        if not 1 <= low <= high:
            raise ValueError(self.rare_ranks)
        return low, high

    def studied_layers(self, n_layers: int) -> list[int]:
        """Returns the 0-based MLP layers to study, ascending: --layer and --layers; ValueError when one is malformed."""
        if self.layers is None:
            wanted = [self.layer]
        elif self.layers.strip() == "all":
            wanted = list(range(n_layers))
        else:
            wanted = [self.layer, *(int(part) for part in self.layers.split(","))]
        if not all(-n_layers <= layer < n_layers for layer in wanted):
            raise ValueError(self.layers)
        return sorted({layer % n_layers for layer in wanted})

    def to_json(self) -> str:
        """Returns the configuration as JSON, as stored in runs.config."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def content(self) -> dict:
        """Returns the settings that must match for a re-run to resume the same run."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUNTIME_ONLY}
