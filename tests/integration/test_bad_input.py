"""Bad input: one line on stderr, a non-zero exit, and the warehouse exactly as it was."""
from __future__ import annotations

import hashlib
import json

import pytest
from conftest import run_cli, save_checkpoint_family, save_model_folder


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = save_model_folder(root / "model")
    corpus = root / "corpus.txt"
    from conftest import make_corpus_docs
    corpus.write_text("\n".join(make_corpus_docs()) + "\n")
    wh = root / "w.duckdb"
    run_cli("ingest", "--model", model, "--corpus", corpus, "--tokens", 256, "--seq-len", 32, "--warehouse", wh)
    (root / "empty.txt").write_text("\n  \n")
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text((model / "config.json").read_text())
    for name, model_type in (("bert_like", "bert"), ("unheard_of", "no_such_architecture")):
        (root / name).mkdir()
        cfg = json.loads((model / "config.json").read_text())
        cfg["model_type"] = model_type
        (root / name / "config.json").write_text(json.dumps(cfg))
        (root / name / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    small = root / "small_vocab"
    save_model_folder(small)
    cfg = json.loads((small / "config.json").read_text())
    from conftest import tiny_model
    tiny_model("gpt_neox", vocab=40).save_pretrained(small)      # model of 40 entries, tokenizer of 97
    save_checkpoint_family(root / "ckpts", steps=(0, 1))
    (root / "not_a_dir").write_text("x")
    return root, model, corpus, wh


CASES = {
    "missing model path": (lambda r, m, c: ["--model", r / "nope", "--corpus", c], "does not exist"),
    "folder without weights": (lambda r, m, c: ["--model", r / "no_weights", "--corpus", c], "no model weights"),
    "architecture without adapter": (lambda r, m, c: ["--model", r / "bert_like", "--corpus", c], "unknown architecture"),
    "architecture transformers does not know": (lambda r, m, c: ["--model", r / "unheard_of", "--corpus", c],
                                                "unknown architecture"),
    "empty corpus": (lambda r, m, c: ["--model", m, "--corpus", r / "empty.txt"], "empty"),
    "missing corpus": (lambda r, m, c: ["--model", m, "--corpus", r / "nope.txt"], "does not exist"),
    "tokenizer larger than the vocabulary": (lambda r, m, c: ["--model", r / "small_vocab", "--corpus", c],
                                             "vocabulary"),
    "unknown revision": (lambda r, m, c: ["--model", r / "ckpts", "--checkpoints", "step0,step999", "--corpus", c],
                         "unknown revision 'step999'"),
    "layer out of range": (lambda r, m, c: ["--model", m, "--corpus", c, "--layer", 7], "--layer 7"),
    "layers out of range": (lambda r, m, c: ["--model", m, "--corpus", c, "--layers", "0,5"], "--layers 0,5"),
    "layers not a list": (lambda r, m, c: ["--model", m, "--corpus", c, "--layers", "first"], "--layers first"),
    "head layers neither a number nor all": (lambda r, m, c: ["--model", m, "--corpus", c, "--head-layers", "many"],
                                              "--head-layers many"),
    "more head layers than the model has": (lambda r, m, c: ["--model", m, "--corpus", c, "--head-layers", 5],
                                            "head"),
    "same run name, other settings": (lambda r, m, c: ["--model", m, "--corpus", c, "--tokens", 512, "--seq-len", 32],
                                      "already exists"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_the_warehouse_alone(setup, case):
    root, model, corpus, wh = setup
    args, expected = CASES[case]
    before = _digest(wh)
    proc = run_cli("ingest", *args(root, model, corpus), "--warehouse", wh, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("rtn: error: "), proc.stderr
    assert expected in lines[0]
    assert _digest(wh) == before
    assert not wh.with_suffix(".duckdb.wal").exists()


@pytest.mark.parametrize("where", ["missing folder", "parent is a file"])
def test_unwritable_warehouse_path_is_refused_before_any_work(setup, where):
    root, model, corpus, _ = setup
    target = root / "nope" / "w.duckdb" if where == "missing folder" else root / "not_a_dir" / "w.duckdb"
    proc = run_cli("ingest", "--model", model, "--corpus", corpus, "--warehouse", target, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "warehouse" in proc.stderr
    assert not target.exists()


def test_query_refuses_writes_and_reports_sql_errors_in_one_line(setup):
    *_, wh = setup
    before = _digest(wh)
    for statement in ("drop table runs", "select * from no_such_table"):
        proc = run_cli("query", statement, "--warehouse", wh, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("rtn: error: query failed")
        assert len(proc.stderr.strip().splitlines()) == 1
    assert _digest(wh) == before
    assert "demo" in run_cli("query", "select 1", "--warehouse", root_missing(setup), check=False).stderr


def root_missing(setup):
    return setup[0] / "missing.duckdb"
