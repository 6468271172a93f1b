"""--frequencies: imported unigram counts become the run's token_frequencies, and classes follow them."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import VOCAB, make_corpus_docs, run_cli, save_model_folder

from rtn import warehouse
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import ingest

SPECIAL = (0, 1)          # the test tokenizer's <|endoftext|> and <|pad|>: never a type of the corpus


def _counts():
    # reversed Zipf: the corpus's rarest words become the most frequent, so imported classes differ from the corpus's
    rng = np.random.default_rng(3)
    counts = np.arange(VOCAB, dtype=np.int64) ** 2 + rng.integers(0, 5, VOCAB)
    counts[5] = 0                                           # a type never seen in the imported corpus
    return counts


def _write(path, counts):
    ids = np.arange(counts.size)
    if path.suffix == ".npy":
        np.save(path, counts)
    elif path.suffix == ".csv":
        pl.DataFrame({"token_id": ids[::-1], "count": counts[::-1]}).write_csv(path)   # any row order
    else:
        pl.DataFrame({"token_id": ids, "count": counts, "note": "x"}).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def model_and_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("freq")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(make_corpus_docs(80)) + "\n")
    return save_model_folder(root / "model"), corpus, root


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_imported_counts_are_the_runs_token_frequencies_and_classes_follow_them(model_and_corpus, suffix):
    model, corpus, root = model_and_corpus
    counts = _counts()
    source = _write(root / f"counts{suffix}", counts)
    wh = root / f"w{suffix}.duckdb"
    config = IngestConfig(model=str(model), corpus=str(corpus), frequencies=str(source), tokens=256, seq_len=32,
                          n_samples=32, head_layers=0, spectra=False, min_rare=0)
    ingest(config, wh, log=lambda *_: None)
    with warehouse.reading(wh) as con:
        stored = warehouse.frame(con, "select f.token_id, f.count from token_frequencies as f join runs using (corpus_id) "
                                      "order by token_id")
        corpora = con.execute("select source, tokens from corpora join runs using (corpus_id)").fetchall()[0]
        tokens = warehouse.frame(con, "select seq, pos, token_id, target_class from eval_tokens order by seq, pos")
    kept = [i for i in range(VOCAB) if i not in SPECIAL]
    assert stored["token_id"].to_list() == kept
    assert stored["count"].to_list() == counts[kept].tolist()
    assert corpora == (str(source), int(counts.sum()))
    # independent rarity: a type is rare when the share of types with a strictly smaller count is below 0.5
    kept_counts = counts[kept]
    share_below = {i: (kept_counts < counts[i]).sum() / (len(kept) - 1) for i in kept}
    ids = tokens["token_id"].to_numpy().reshape(-1, 32)
    classes = tokens["target_class"].to_numpy().reshape(-1, 32)
    checked = 0
    for s in range(ids.shape[0]):
        for p in range(3, 31):
            target = int(ids[s, p + 1])
            if target in SPECIAL:
                assert classes[s, p] is None
                continue
            assert classes[s, p] == ("rare" if share_below[target] < 0.5 else "common")
            checked += 1
    assert checked > 100 and {"rare", "common"} <= set(classes[:, 3:31].ravel())


@pytest.mark.parametrize("content, expected", [
    ("token_id,n\n2,5\n", "needs columns token_id, count"),
    ("token_id,count\n2,5\n2,6\n", "token_id repeats"),
    ("token_id,count\n2,-1\n", "non-negative"),
    (f"token_id,count\n{VOCAB + 10},3\n", "outside the model's vocabulary"),
])
def test_bad_frequencies_file_is_one_line_and_writes_nothing(model_and_corpus, content, expected):
    model, corpus, root = model_and_corpus
    bad = root / "bad.csv"
    bad.write_text(content)
    wh = root / "bad.duckdb"
    proc = run_cli("ingest", "--model", model, "--corpus", corpus, "--frequencies", bad, "--tokens", 256,
                   "--seq-len", 32, "--warehouse", wh, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert not wh.exists()
