"""`rtn ingest` on local model folders and corpora; the tables it writes."""
from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest
import torch
from conftest import make_corpus_docs, make_tokenizer, save_checkpoint_family, save_model_folder, table_contents

from rtn.ingest import adapters
from rtn.ingest.capture import hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import ingest


def _config(model, corpus, **kw):
    return IngestConfig(model=str(model), corpus=str(corpus), tokens=512, seq_len=32, n_samples=64,
                        **{"checkpoints": "final", **kw})


def _write_corpus(path, kind: str):
    docs = make_corpus_docs(80)
    if kind == "txt":
        path.write_text("\n".join(docs) + "\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    else:
        pl.DataFrame({"text": docs}).write_parquet(path)
    return path


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_ingest_local_folder_and_corpus_kinds(tmp_path, family, kind):
    model = save_model_folder(tmp_path / "model", family)
    corpus = _write_corpus(tmp_path / f"corpus.{kind}", kind)
    wh = tmp_path / "w.duckdb"
    ingest(_config(model, corpus), wh, log=lambda *_: None)
    con = duckdb.connect(str(wh), read_only=True)
    n_mlp = 72
    assert con.execute("select count(*) from ablation_deltas").fetchone()[0] == 3 * n_mlp
    assert con.execute("select family from runs").fetchone()[0] == family
    assert con.execute("select documents from corpora").fetchone()[0] == 80


def test_ingest_folder_of_checkpoint_folders_every_step(tmp_path, corpus_txt):
    root = save_checkpoint_family(tmp_path / "ckpts")
    wh = tmp_path / "w.duckdb"
    ingest(_config("tiny-run", corpus_txt, checkpoints=str(root), run="tiny"), wh, log=lambda *_: None)
    con = duckdb.connect(str(wh), read_only=True)
    steps = con.execute("select step, tokens_seen, status from checkpoints order by step").fetchall()
    assert steps == [(0, 0, "done"), (1, 1024, "done"), (2, 2048, "done"), (4, 4096, "done")]
    per_step = con.execute("select step, count(*) from ablation_deltas group by step order by step").fetchall()
    assert per_step == [(s, 3 * 72) for s in (0, 1, 2, 4)]


def test_runs_config_holds_the_full_configuration(tmp_path, corpus_txt):
    model = save_model_folder(tmp_path / "model")
    config = _config(model, corpus_txt, rare_threshold=0.3, run="cfg")
    wh = tmp_path / "w.duckdb"
    ingest(config, wh, log=lambda *_: None)
    stored = json.loads(duckdb.connect(str(wh), read_only=True).execute("select config from runs").fetchone()[0])
    assert stored == json.loads(config.to_json())
    assert IngestConfig(**stored) == config


def test_eval_tokens_recompute_stored_delta_loss(tmp_path, corpus_txt):
    """Anyone can rebuild the eval batch from eval_tokens and re-derive a ΔLoss with a plain hook."""
    model_dir = save_model_folder(tmp_path / "model")
    wh = tmp_path / "w.duckdb"
    ingest(_config(model_dir, corpus_txt), wh, log=lambda *_: None)
    con = duckdb.connect(str(wh), read_only=True)
    rows = con.sql("select seq, pos, token_id, target_class from eval_tokens order by seq, pos").pl()
    n_seq, seq_len = rows["seq"].max() + 1, rows["pos"].max() + 1
    ids = torch.tensor(rows["token_id"].to_numpy()).long().reshape(n_seq, seq_len)
    classes = rows["target_class"].to_list()
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    adapter = adapters.adapter_for(model)
    layer = con.execute("select layer from runs").fetchone()[0]
    mean_act = dict(con.execute("select neuron, mean_act from neuron_stats").fetchall())
    neuron = 11

    def ablate(_m, inputs):
        x = inputs[0].clone()
        x[..., neuron] = mean_act[neuron]
        return (x,)

    def losses():
        logits = model(ids, use_cache=False).logits
        per = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                ids[:, 1:].reshape(-1), reduction="none").reshape(n_seq, seq_len - 1)
        return torch.cat([per, torch.zeros(n_seq, 1, dtype=per.dtype)], 1).reshape(-1)

    with torch.no_grad():
        clean = losses()
        with hooked(adapters.mlp_out_module(model, adapter, layer), ablate):
            ablated = losses()
    delta = (ablated - clean).numpy()
    for token_class in ("rare", "common", "all"):
        picked = [d for d, c in zip(delta, classes) if c is not None and (token_class == "all" or c == token_class)]
        stored, n = con.execute("select delta_loss, n from ablation_deltas where neuron = ? and token_class = ?",
                                [neuron, token_class]).fetchone()
        assert n == len(picked)
        # float32 activations, float64 arithmetic in both: agreement to float32 resolution of the activations
        assert abs(stored - sum(picked) / len(picked)) < 1e-6


def test_rerunning_the_same_ingest_changes_nothing(tmp_path, corpus_txt):
    model = save_model_folder(tmp_path / "model")
    wh = tmp_path / "w.duckdb"
    ingest(_config(model, corpus_txt), wh, log=lambda *_: None)
    before = table_contents(wh)
    messages = []
    ingest(_config(model, corpus_txt), wh, log=messages.append)
    assert table_contents(wh) == before
    assert "nothing to do" in messages[-1]


def test_neuron_token_effects_are_the_top_logit_effects_of_each_neuron(tmp_path, corpus_txt):
    """Checked against numpy on the saved weights: W_U (gamma * (w_out[i] - mean)) for LayerNorm."""
    import numpy as np
    from transformers import AutoModelForCausalLM
    model_dir = save_model_folder(tmp_path / "model")
    wh = tmp_path / "w.duckdb"
    ingest(_config(model_dir, corpus_txt), wh, log=lambda *_: None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    w_out = model.gpt_neox.layers[-1].mlp.dense_4h_to_h.weight.detach().numpy().T        # [n, d]
    gamma = model.gpt_neox.final_layer_norm.weight.detach().numpy()
    W_U = model.get_output_embeddings().weight.detach().numpy()                         # [V, d]
    effects = ((w_out - w_out.mean(1, keepdims=True)) * gamma) @ W_U.T                  # [n, V]
    con = duckdb.connect(str(wh), read_only=True)
    assert con.execute("select count(*) from neuron_token_effects").fetchone()[0] == 72 * 2 * 10
    for neuron in (0, 33, 71):
        for direction, order in (("boost", -1), ("suppress", 1)):
            stored = con.execute("select token_id, logit_effect, token from neuron_token_effects where neuron = ? "
                                 "and direction = ? order by rank", [neuron, direction]).fetchall()
            expected = np.argsort(order * effects[neuron], kind="stable")[:10]
            assert [row[0] for row in stored] == expected.tolist()
            assert np.allclose([row[1] for row in stored], effects[neuron, expected], atol=1e-5)
            assert [row[2] for row in stored] == make_tokenizer().convert_ids_to_tokens(expected.tolist())


def test_ingest_in_a_batch_log_prints_one_line_per_stage_per_checkpoint(tmp_path, corpus_txt):
    from conftest import run_cli
    root = save_checkpoint_family(tmp_path / "ckpts", steps=(0, 8))
    wh = tmp_path / "w.duckdb"
    proc = run_cli("ingest", "--model", root, "--checkpoints", "all", "--corpus", corpus_txt, "--run", "tiny",
                   "--tokens", 256, "--seq-len", 32, "--warehouse", wh)       # stderr is a pipe, not a terminal
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ingest tiny step ")]
    con = duckdb.connect(str(wh), read_only=True)
    for step, stages in con.execute("select step, stage_seconds from checkpoints order by step").fetchall():
        stages = json.loads(stages)
        printed = [line.split(": ", 1)[1].rsplit(" ", 2) for line in lines if line.startswith(f"ingest tiny step {step}:")]
        assert [stage for stage, _, _ in printed] == list(stages)       # every stage once, in the order it ran
        for stage, seconds, _ in printed:
            assert float(seconds) == pytest.approx(stages[stage], abs=0.051)
    assert len(lines) == 2 * len(stages) and {"load", "forward", "heads", "write"} <= set(stages)
