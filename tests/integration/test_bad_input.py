"""Bad input: one line on stderr, a non-zero exit, and the warehouse exactly as it was."""
from __future__ import annotations

import hashlib
import json

import duckdb
import pytest
import torch
from conftest import run_cli, save_checkpoint_family, save_model_folder, table_contents


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
    _bad_sources(root, model)
    return root, model, corpus, wh


def _truncate(path, by: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:-by])


def _bad_sources(root, model) -> None:
    """Writes the broken models and corpora the cases below ingest (issue 15, points 4 to 6)."""
    from conftest import tiny_model
    save_model_folder(root / "truncated")
    _truncate(root / "truncated" / "model.safetensors")
    save_model_folder(root / "truncated_bin")
    torch.save(tiny_model("gpt_neox").state_dict(), root / "truncated_bin" / "pytorch_model.bin")
    (root / "truncated_bin" / "model.safetensors").unlink()
    _truncate(root / "truncated_bin" / "pytorch_model.bin", by=2000)
    save_checkpoint_family(root / "second_truncated", steps=(0, 1))
    _truncate(root / "second_truncated" / "step1" / "model.safetensors")
    save_checkpoint_family(root / "mixed", steps=(0,))
    save_checkpoint_family(root / "gpt2_ckpt", family="gpt2", steps=(1,))
    (root / "gpt2_ckpt" / "step1").rename(root / "mixed" / "step1")
    save_model_folder(root / "gpt2", family="gpt2")
    save_model_folder(root / "corrupt_config")
    (root / "corrupt_config" / "config.json").write_text('{"model_type": "gpt_neox", ')
    for name, field, value in (("config_of_strings", "hidden_size", "abc"), ("config_of_another_model", "hidden_size", 64)):
        save_model_folder(root / name)
        cfg = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**cfg, field: value}))
    save_checkpoint_family(root / "one_step_twice", steps=(1,))
    (root / "one_step_twice" / "step1").rename(root / "one_step_twice" / "run_a1")
    save_checkpoint_family(root / "one_step_twice", steps=(1,))
    (root / "one_step_twice" / "step1").rename(root / "one_step_twice" / "run_b1")
    for folder in (root / "one_step_twice").iterdir():
        (folder / "rtn_checkpoint.json").unlink()
    from conftest import make_corpus_docs
    docs = make_corpus_docs()
    (root / "missing_text.jsonl").write_text("\n".join([json.dumps({"text": docs[0]}), json.dumps({"content": docs[1]})]))
    (root / "numeric_text.jsonl").write_text("\n".join(json.dumps({"text": n}) for n in range(5)))


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
    # issue 15: tracebacks, half-written runs and misleading messages before
    "truncated safetensors": (lambda r, m, c: ["--model", r / "truncated", "--corpus", c, "--run", "new"],
                              "model.safetensors is truncated or corrupt (its header describes"),
    "truncated pytorch_model.bin": (lambda r, m, c: ["--model", r / "truncated_bin", "--corpus", c, "--run", "new"],
                                    "pytorch_model.bin is truncated or corrupt"),
    "second checkpoint truncated": (lambda r, m, c: ["--model", r / "second_truncated", "--checkpoints", "all",
                                                     "--corpus", c, "--run", "new"], "step1/model.safetensors is truncated"),
    "mixed architectures": (lambda r, m, c: ["--model", r / "mixed", "--checkpoints", "all", "--corpus", c,
                                             "--run", "new"], "unlike the run's first checkpoint"),
    "gpt2 seq-len beyond n_positions": (lambda r, m, c: ["--model", r / "gpt2", "--corpus", c, "--seq-len", 65,
                                                         "--tokens", 130], "--seq-len 65 is longer than the 64 positions"),
    "neox seq-len beyond max_position_embeddings": (lambda r, m, c: ["--model", m, "--corpus", c, "--seq-len", 65,
                                                                     "--tokens", 130, "--run", "new"],
                                                    "--seq-len 65 is longer than the 64 positions"),
    "negative samples": (lambda r, m, c: ["--model", m, "--corpus", c, "--samples", -1], "--samples -1 is not positive"),
    "no documents": (lambda r, m, c: ["--model", m, "--corpus", c, "--max-documents", 0, "--run", "new"],
                     "--max-documents 0 is not positive"),
    "corrupt config.json": (lambda r, m, c: ["--model", r / "corrupt_config", "--corpus", c], "config.json is corrupt"),
    "config.json with a string for a size": (lambda r, m, c: ["--model", r / "config_of_strings", "--corpus", c],
                                             "config.json is not a usable config"),
    "config.json of another model than the weights": (lambda r, m, c: ["--model", r / "config_of_another_model",
                                                                       "--corpus", c],
                                                      "the config and the weights do not belong together"),
    "jsonl row without text": (lambda r, m, c: ["--model", m, "--corpus", r / "missing_text.jsonl", "--run", "new"],
                               "document 2 has no 'text' field (it has content)"),
    "numeric text": (lambda r, m, c: ["--model", m, "--corpus", r / "numeric_text.jsonl", "--run", "new"],
                     "document 1's 'text' field is not a string (int 0)"),
    "two checkpoints of one step": (lambda r, m, c: ["--model", r / "one_step_twice", "--checkpoints", "all",
                                                     "--corpus", c, "--run", "new"], "both have step 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_the_warehouse_alone(setup, case):
    root, model, corpus, wh = setup
    args, expected = CASES[case]
    before = _digest(wh)
    # tiny models have 64 positions: sizes that fit come first, and a case's own flags win (argparse keeps the last)
    proc = run_cli("ingest", "--tokens", 256, "--seq-len", 32, *args(root, model, corpus), "--warehouse", wh, check=False)
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
    for statement, error in (("drop table runs", "query refused"), ("select * from no_such_table", "query failed")):
        proc = run_cli("query", statement, "--warehouse", wh, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"rtn: error: {error}")
        assert len(proc.stderr.strip().splitlines()) == 1
    assert _digest(wh) == before
    assert "demo" in run_cli("query", "select 1", "--warehouse", root_missing(setup), check=False).stderr


def root_missing(setup):
    return setup[0] / "missing.duckdb"


def test_analyze_of_a_missing_warehouse_creates_nothing(tmp_path):
    proc = run_cli("analyze", "--warehouse", tmp_path / "nope.duckdb", check=False)
    assert proc.returncode == 2
    expected = f"rtn: error: no warehouse at {tmp_path / 'nope.duckdb'}: run `rtn demo` or `rtn ingest` first"
    assert proc.stderr.strip().splitlines() == [expected]
    assert list(tmp_path.iterdir()) == []


def _files_of_at_most(n_bytes: int):
    """Returns a preexec_fn under which the process can write no file past `n_bytes` (EFBIG: a full disk's effect;
    Python ignores SIGXFSZ, so the write fails instead of killing it)."""
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


@pytest.mark.parametrize("command", ["ingest", "analyze"])
def test_a_full_disk_is_one_line_and_keeps_the_warehouse(setup, tmp_path, command):
    import shutil
    _, model, corpus, wh = setup
    path = tmp_path / "w.duckdb"
    shutil.copy(wh, path)
    before = table_contents(path)
    args = ["--model", model, "--corpus", corpus, "--tokens", 256, "--seq-len", 32, "--run", "more"] \
        if command == "ingest" else []
    digest = _digest(path)
    proc = run_cli(command, *args, "--warehouse", path, check=False, preexec_fn=_files_of_at_most(8192))
    errors = [line for line in proc.stderr.strip().splitlines() if not line.startswith("ingest more step")]
    assert proc.returncode == 2
    assert len(errors) == 1 and errors[0].startswith(f"rtn: error: writing warehouse {path} failed (disk full?)")
    assert _digest(path) == digest
    wal = path.with_suffix(".duckdb.wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert table_contents(path) == before


def test_a_run_resumes_from_another_folder_and_a_lone_folder_named_gpt2_is_not_step_2(setup, tmp_path):
    import os
    root, _, corpus, _ = setup
    path = tmp_path / "w.duckdb"
    run_cli("ingest", "--model", "gpt2", "--corpus", corpus.name, "--tokens", 256, "--seq-len", 32,
            "--warehouse", path, cwd=root)                            # paths as typed, relative to the folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli("ingest", "--model", os.path.relpath(root / "gpt2", elsewhere), "--corpus",
                   os.path.relpath(corpus, elsewhere), "--tokens", 256, "--seq-len", 32, "--warehouse", path,
                   cwd=elsewhere)
    assert "run gpt2: all 1 checkpoints already ingested; nothing to do" in proc.stdout
    con = duckdb.connect(str(path), read_only=True)
    model, config = con.execute("select model, config from runs where run_id = 'gpt2'").fetchone()
    assert model == str(root / "gpt2") and json.loads(config)["corpus"] == str(corpus)
    assert con.execute("select step, source from checkpoints").fetchall() == [(-1, str(root / "gpt2"))]
    con.close()
