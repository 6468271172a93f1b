"""Tokenize a corpus once per run: token frequencies, the eval batch and its token classes."""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl
import torch

from rtn import sql
from rtn.ingest.config import IngestConfig
from rtn.ingest.sources import load_documents, tokenizer_hash
from rtn import warehouse
from rtn.errors import RtnError

EXCLUDED, COMMON, RARE = -1, 0, 1
CLASS_NAMES = {COMMON: "common", RARE: "rare"}
FIRST_PREDICTED_POS = 3        # predictions at positions 0-2 have too little context (DESIGN.md)
CLASS_FILTERS = {"rare": RARE, "common": COMMON, "all": None}   # token_class -> class code (None: every included)


def class_masks(classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Returns {token_class: boolean mask} over `classes`; 'all' = every prediction not EXCLUDED."""
    return {name: (classes != EXCLUDED) if code is None else (classes == code) for name, code in CLASS_FILTERS.items()}


def mean_and_stderr(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Returns (mean, standard error, n) over the rows of `values` [M, ...] selected by `mask` [M] (a class's positions).

    The standard error is NaN with fewer than two rows, the mean NaN with none.
    """
    picked = values[mask]
    n = picked.shape[0]
    mean = picked.mean(0)
    stderr = picked.std(0, correction=1) / np.sqrt(n) if n > 1 else torch.full_like(mean, float("nan"))
    return mean, stderr, n


@dataclass
class EvalData:
    corpus_row: pl.DataFrame        # one row of `corpora`
    frequencies: pl.DataFrame       # token_frequencies rows
    input_ids: torch.Tensor         # [S, L] evaluated sequences
    classes: torch.Tensor           # [S, L] class of the prediction made at (seq, pos): RARE, COMMON or EXCLUDED
    sample_flat: torch.Tensor       # [n_samples] flat positions (seq * L + pos) kept in activation_samples
    vocab: list                     # token string of every id the tokenizer knows (index = token_id)

    def eval_tokens(self) -> pl.DataFrame:
        """Returns eval_tokens rows (without run_id)."""
        S, L = self.input_ids.shape
        codes = self.classes.reshape(-1).numpy()
        names = np.array([CLASS_NAMES.get(int(c)) for c in codes], dtype=object)
        return pl.DataFrame({
            "seq": np.repeat(np.arange(S, dtype=np.int32), L),
            "pos": np.tile(np.arange(L, dtype=np.int32), S),
            "token_id": self.input_ids.reshape(-1).numpy().astype(np.int32),
            "target_class": pl.Series(names.tolist(), dtype=pl.Utf8),
        })

    def sample_positions(self) -> pl.DataFrame:
        """Returns activation_sample_positions rows (without run_id)."""
        L = self.input_ids.shape[1]
        flat = self.sample_flat.numpy()
        return pl.DataFrame({"sample_idx": np.arange(len(flat), dtype=np.int32),
                             "seq": (flat // L).astype(np.int32), "pos": (flat % L).astype(np.int32)})


def token_rarity(frequencies: pl.DataFrame, rare_threshold: float) -> pl.DataFrame:
    """Returns (token_id, token_class) of every counted type from the `token_classes` view, the one definition of rarity."""
    con = duckdb.connect()
    sql.create_tables(con)
    con.register("_freq", frequencies.to_arrow())
    con.execute("insert into token_frequencies select corpus_id, token_id, token, count from _freq")
    con.execute("insert into runs (run_id, corpus_id, rare_threshold) select 'ingest', corpus_id, ? from _freq limit 1",
                [rare_threshold])
    sql.apply_views(con, names=["token_classes"])
    return warehouse.frame(con, "select token_id, token_class from token_classes")


def prepare(config: IngestConfig, corpus_spec: str, tokenizer, model_vocab: int) -> EvalData:
    """Returns the run's evaluation data: tokenized corpus, frequencies, eval batch, classes."""
    documents, content_hash = load_documents(corpus_spec, config.max_documents)
    eos = tokenizer.eos_token_id
    special = set(tokenizer.all_special_ids)
    stream = []
    for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)  # documents joined by end-of-text, as Pythia's training data
    stream = np.asarray(stream, dtype=np.int64)
    if stream.size and stream.max() >= model_vocab:
        raise RtnError(f"the tokenizer produces id {stream.max()} but the model's vocabulary has {model_vocab} entries")
    n_seq = min(config.tokens, stream.size) // config.seq_len
    if n_seq == 0:
        raise RtnError(f"corpus {corpus_spec} has {stream.size} tokens, fewer than one sequence of {config.seq_len}")

    ids, counts = np.unique(stream, return_counts=True)
    keep = np.array([i not in special for i in ids], dtype=bool)
    tok_hash = tokenizer_hash(tokenizer)
    corpus_id = f"{_short_name(corpus_spec)}-{content_hash[:8]}-{tok_hash[:6]}"
    frequencies = pl.DataFrame({
        "corpus_id": corpus_id,
        "token_id": ids[keep].astype(np.int32),
        "token": tokenizer.convert_ids_to_tokens(ids[keep].tolist()),
        "count": counts[keep].astype(np.int64),
    })
    corpus_row = pl.DataFrame({"corpus_id": [corpus_id], "source": [corpus_spec], "tokenizer": [tok_hash],
                               "documents": [len(documents)], "tokens": [int(stream.size)],
                               "content_hash": [content_hash]})

    input_ids = torch.from_numpy(stream[: n_seq * config.seq_len].reshape(n_seq, config.seq_len))
    classes = _classes(input_ids, frequencies, special, config)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return EvalData(corpus_row, frequencies, input_ids, classes, _sample(classes, config), vocab)


def _short_name(spec: str) -> str:
    name = spec.rstrip("/").split("/")[-1].split(":")[0]
    return name.rsplit(".", 1)[0] or "corpus"


def _classes(input_ids: torch.Tensor, frequencies: pl.DataFrame, special: set, config: IngestConfig) -> torch.Tensor:
    """Returns [S, L] classes of the prediction at each position (EXCLUDED where none counts)."""
    rarity = token_rarity(frequencies, config.rare_threshold)
    lookup = np.full(int(max(input_ids.max().item(), rarity["token_id"].max())) + 1, EXCLUDED, dtype=np.int64)
    lookup[rarity["token_id"].to_numpy()] = np.where(rarity["token_class"].to_numpy() == "rare", RARE, COMMON)
    S, L = input_ids.shape
    classes = torch.full((S, L), EXCLUDED, dtype=torch.long)
    by = input_ids[:, 1:] if config.class_by == "target" else input_ids[:, :-1]   # token whose class counts
    classes[:, :-1] = torch.from_numpy(lookup[by.numpy()])   # special tokens are not in the lookup: EXCLUDED
    target_special = torch.isin(input_ids[:, 1:], torch.tensor(sorted(special) or [-1]))
    classes[:, :-1][target_special] = EXCLUDED               # never score predicting a special token
    classes[:, :FIRST_PREDICTED_POS] = EXCLUDED
    return classes


def _sample(classes: torch.Tensor, config: IngestConfig) -> torch.Tensor:
    """Returns sorted flat positions: up to half rare predictions, the rest common, seeded."""
    rng = np.random.default_rng(config.seed)
    flat = classes.reshape(-1).numpy()
    rare, common = np.flatnonzero(flat == RARE), np.flatnonzero(flat == COMMON)
    n_rare = min(rare.size, config.n_samples // 2)
    n_common = min(common.size, config.n_samples - n_rare)
    picked = np.concatenate([rng.choice(rare, n_rare, replace=False), rng.choice(common, n_common, replace=False)])
    return torch.from_numpy(np.sort(picked))
