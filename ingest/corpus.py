"""Tokenize a corpus once per run: token frequencies, the eval batch and its token classes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import torch

from rtn import sql, warehouse
from rtn.errors import RtnError
from rtn.ingest.config import IngestConfig
from rtn.ingest.sources import load_documents, tokenizer_hash

# RARE_CHOSEN: a rare-target prediction in a window chosen *for* its rare targets (--min-rare). It counts
# as rare; `all` and `common` take only windows in corpus order, so they stay a sample of the text as it is.
EXCLUDED, COMMON, RARE, RARE_CHOSEN = -1, 0, 1, 2
CLASS_NAMES = {COMMON: "common", RARE: "rare", RARE_CHOSEN: "rare"}
FIRST_PREDICTED_POS = 3        # predictions at positions 0-2 have too little context (DESIGN.md)
CLASS_FILTERS = {"rare": (RARE, RARE_CHOSEN), "common": (COMMON,), "all": (RARE, COMMON)}   # token_class -> codes
SELECTIONS = ("corpus_order", "rare_targets")   # eval_tokens.selection: how a sequence was chosen


def class_masks(classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Returns {token_class: boolean mask} over `classes`; 'all' = every included prediction of corpus-order windows."""
    return {name: torch.isin(classes, torch.tensor(codes, device=classes.device))
            for name, codes in CLASS_FILTERS.items()}


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
    classes: torch.Tensor           # [S, L] class of the prediction made at (seq, pos): RARE, RARE_CHOSEN, COMMON or EXCLUDED
    sample_flat: torch.Tensor       # [n_samples] flat positions (seq * L + pos) kept in activation_samples
    vocab: list                     # token string of every id the tokenizer knows (index = token_id)
    n_chosen: int = 0               # the last n_chosen sequences were chosen for their rare targets (--min-rare)

    def class_counts(self) -> dict[str, int]:
        """Returns {token_class: number of predictions} as the ablation counts them."""
        return {name: int(mask.sum()) for name, mask in class_masks(self.classes.reshape(-1)).items()}

    def eval_tokens(self) -> pl.DataFrame:
        """Returns eval_tokens rows (without run_id)."""
        S, L = self.input_ids.shape
        codes = self.classes.reshape(-1).numpy()
        names = np.array([CLASS_NAMES.get(int(c)) for c in codes], dtype=object)
        selection = np.where(np.arange(S) >= S - self.n_chosen, SELECTIONS[1], SELECTIONS[0])
        return pl.DataFrame({
            "seq": np.repeat(np.arange(S, dtype=np.int32), L),
            "pos": np.tile(np.arange(L, dtype=np.int32), S),
            "token_id": self.input_ids.reshape(-1).numpy().astype(np.int32),
            "target_class": pl.Series(names.tolist(), dtype=pl.Utf8),
            "selection": np.repeat(selection, L),
        })

    def sample_positions(self) -> pl.DataFrame:
        """Returns activation_sample_positions rows (without run_id)."""
        L = self.input_ids.shape[1]
        flat = self.sample_flat.numpy()
        return pl.DataFrame({"sample_idx": np.arange(len(flat), dtype=np.int32),
                             "seq": (flat // L).astype(np.int32), "pos": (flat % L).astype(np.int32)})


def token_rarity(frequencies: pl.DataFrame, config: IngestConfig) -> pl.DataFrame:
    """Returns (token_id, token_class) of every counted type from the `token_classes` view, the one definition of rarity.

    token_class is NULL for a type the rule excludes (after the --rare-ranks band, below the elbow).
    """
    con = duckdb.connect()
    sql.create_tables(con)
    con.register("_freq", frequencies.to_arrow())
    con.execute("insert into token_frequencies select corpus_id, token_id, token, count from _freq")
    rank_min, rank_max = config.rare_rank_band() or (None, None)
    con.execute("insert into runs (run_id, corpus_id, rare_threshold, rare_rank_min, rare_rank_max, exclude_below_elbow) "
                "select 'ingest', corpus_id, ?, ?, ?, ? from _freq limit 1",
                [config.rare_threshold, rank_min, rank_max, config.exclude_below_elbow])
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

    tok_hash = tokenizer_hash(tokenizer)
    if config.frequencies:      # imported unigram counts (the papers' pythia-unigrams.npy) define rarity instead
        ids, counts = read_frequencies(config.frequencies, model_vocab)
        source, content_hash, documents = config.frequencies, file_sha256(config.frequencies), None
    else:
        ids, counts = np.unique(stream, return_counts=True)
        source, documents = corpus_spec, len(documents)
    keep = np.array([i not in special for i in ids], dtype=bool)
    corpus_id = f"{_short_name(source)}-{content_hash[:8]}-{tok_hash[:6]}"
    frequencies = pl.DataFrame({
        "corpus_id": corpus_id,
        "token_id": ids[keep].astype(np.int32),
        "token": _token_strings(tokenizer, ids[keep]),
        "count": counts[keep].astype(np.int64),
    })
    corpus_row = pl.DataFrame({"corpus_id": [corpus_id], "source": [source], "tokenizer": [tok_hash],
                               "documents": [documents], "tokens": [int(counts.sum())],
                               "content_hash": [content_hash]})

    windows = torch.from_numpy(stream[: stream.size // config.seq_len * config.seq_len].reshape(-1, config.seq_len))
    all_classes = _classes(windows, frequencies, special, config)             # [W, L] every window of the corpus
    if int((all_classes[:n_seq] == RARE).sum()) < config.min_rare:
        # --tokens bounds the ablated positions: min_rare of them go to rare targets of chosen windows
        n_seq = max(1, (min(config.tokens, stream.size) - config.min_rare) // config.seq_len)
    chosen = _rare_windows(all_classes, n_seq, config.min_rare)
    input_ids = torch.cat([windows[:n_seq], windows[chosen]])
    classes = torch.cat([all_classes[:n_seq], _only_rare(all_classes[chosen])])
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return EvalData(corpus_row, frequencies, input_ids, classes, _sample(classes, config), vocab, len(chosen))


def _rare_windows(classes: torch.Tensor, n_seq: int, min_rare: int) -> torch.Tensor:
    """Returns indices of windows after the first n_seq, richest in rare targets first, that lift the rare count to min_rare.

    The papers' code picks contexts that hold rare tokens the same way; the forward pass covers
    whole windows, the ablation only their rare-target positions (ingest/extract.py keeps included ones).
    """
    missing = min_rare - int((classes[:n_seq] == RARE).sum())
    rest = (classes[n_seq:] == RARE).sum(1)                                   # [W - n_seq] rare targets per window
    if missing <= 0 or not rest.any():
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(-rest, stable=True)                               # ties: corpus order
    enough = int(torch.searchsorted(torch.cumsum(rest[order], 0), missing)) + 1
    picked = order[:enough][rest[order[:enough]] > 0]
    return torch.sort(picked).values + n_seq


def _only_rare(classes: torch.Tensor) -> torch.Tensor:
    """Returns chosen windows' classes: rare targets as RARE_CHOSEN, every other prediction EXCLUDED."""
    return torch.where(classes == RARE, RARE_CHOSEN, EXCLUDED)


def read_frequencies(path: str, model_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (token ids, counts) from a .npy of counts indexed by token id, or a .parquet/.csv with token_id, count."""
    suffix = Path(path).suffix
    try:
        if suffix == ".npy":
            counts = np.load(path, allow_pickle=False)
            if counts.ndim != 1:
                raise RtnError(f"--frequencies {path}: expected a 1-D array of counts per token id, got shape {counts.shape}")
            ids = np.arange(counts.size)
        elif suffix in (".parquet", ".csv"):
            table = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path)
            if not {"token_id", "count"} <= set(table.columns):
                raise RtnError(f"--frequencies {path}: needs columns token_id, count (it has {', '.join(table.columns)})")
            table = table.sort("token_id")
            ids, counts = table["token_id"].to_numpy(), table["count"].to_numpy()
            if np.unique(ids).size != ids.size:
                raise RtnError(f"--frequencies {path}: token_id repeats; give one count per token id")
        else:
            raise RtnError(f"--frequencies {path}: use a .npy, .parquet or .csv file")
    except (OSError, ValueError, pl.exceptions.PolarsError) as err:
        raise RtnError(f"--frequencies {path} cannot be read: {str(err).splitlines()[0]}") from err
    ids, counts = np.asarray(ids, dtype=np.int64), np.asarray(counts)
    if counts.size == 0 or not np.issubdtype(counts.dtype, np.number) or (counts < 0).any() or np.isnan(counts.astype(float)).any():
        raise RtnError(f"--frequencies {path}: counts must be non-negative numbers")
    if ids.min() < 0 or ids.max() >= model_vocab:
        raise RtnError(f"--frequencies {path}: token id {ids.max()} outside the model's vocabulary of {model_vocab}")
    return ids, counts.astype(np.int64)


def file_sha256(path: str) -> str:
    """Returns the sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _token_strings(tokenizer, ids: np.ndarray) -> list:
    # imported counts may cover padded vocabulary entries the tokenizer does not have
    known = ids < len(tokenizer)
    strings = np.full(ids.size, None, dtype=object)
    strings[known] = tokenizer.convert_ids_to_tokens(ids[known].tolist())
    return strings.tolist()


def _short_name(spec: str) -> str:
    name = spec.rstrip("/").split("/")[-1].split(":")[0]
    return name.rsplit(".", 1)[0] or "corpus"


def _classes(input_ids: torch.Tensor, frequencies: pl.DataFrame, special: set, config: IngestConfig) -> torch.Tensor:
    """Returns [S, L] classes of the prediction at each position (EXCLUDED where none counts)."""
    rarity = token_rarity(frequencies, config)
    lookup = np.full(int(max(input_ids.max().item(), rarity["token_id"].max())) + 1, EXCLUDED, dtype=np.int64)
    names = rarity["token_class"].to_numpy()
    lookup[rarity["token_id"].to_numpy()] = np.select([names == "rare", names == "common"], [RARE, COMMON], EXCLUDED)
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
    rare, common = np.flatnonzero((flat == RARE) | (flat == RARE_CHOSEN)), np.flatnonzero(flat == COMMON)
    n_rare = min(rare.size, config.n_samples // 2)
    n_common = min(common.size, config.n_samples - n_rare)
    picked = np.concatenate([rng.choice(rare, n_rare, replace=False), rng.choice(common, n_common, replace=False)])
    return torch.from_numpy(np.sort(picked))
