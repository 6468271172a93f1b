"""Every checkpoint records hashes of its weights; checkpoints that repeat another step's weights are flagged."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
from conftest import make_tokenizer, run_cli, save_checkpoint_family, save_model_folder, tiny_model
from safetensors.torch import load_file


def _mark_step(folder, step: int) -> None:
    (folder / "rtn_checkpoint.json").write_text(json.dumps({"step": step, "tokens_seen": step * 1024}))


def save_family_with_duplicates(root):
    """Writes step0..step3: step1 serves step0's weights (as Pythia's step1 branch does); step3 is step2's model
    with step0's last block, so only its studied layer repeats."""
    save_checkpoint_family(root, steps=(0, 2))
    _mark_step(save_model_folder(root / "step1", seed=0), 1)
    model, donor = tiny_model("gpt_neox", seed=2), tiny_model("gpt_neox", seed=0)
    model.gpt_neox.layers[1].load_state_dict(donor.gpt_neox.layers[1].state_dict())
    model.save_pretrained(root / "step3")
    make_tokenizer().save_pretrained(root / "step3")
    _mark_step(root / "step3", 3)
    return root


def file_hashes(folder) -> tuple[str, str]:
    """Returns (layer, whole) hashes recomputed from the safetensors file: the slow path beside ingest/hashing.py."""
    tensors = load_file(str(folder / "model.safetensors"))
    digests = {name: hashlib.sha256(f"{t.dtype}\0{tuple(t.shape)}\0".encode() + t.float().numpy().tobytes()).digest()
               for name, t in tensors.items()}
    layer = [digest for name, digest in digests.items() if name.startswith("gpt_neox.layers.1.")]
    return (hashlib.sha256(b"".join(sorted(layer))).hexdigest(),
            hashlib.sha256(b"".join(sorted(digests.values()))).hexdigest())


def test_checkpoints_with_repeated_weights_are_flagged_warned_and_shown(tmp_path, corpus_txt, monkeypatch):
    root = save_family_with_duplicates(tmp_path / "ckpts")
    path = tmp_path / "w.duckdb"
    out = run_cli("ingest", "--model", root, "--checkpoints", "all", "--corpus", corpus_txt, "--tokens", 256,
                  "--seq-len", 32, "--run", "r", "--head-layers", 0, "--no-spectra", "--warehouse", path).stdout
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        ("warning: run r step 1 has the same weights as step 0: the checkpoint may not be what its name claims "
        "(see the duplicate_checkpoints view)"),
        ("warning: run r step 3 has the same studied layer's weights as step 0: the checkpoint may not be what its "
        "name claims (see the duplicate_checkpoints view)")]
    con = duckdb.connect(str(path), read_only=True)
    stored = {step: (layer, whole) for step, layer, whole in con.execute(
        "select step, layer_sha256, weights_sha256 from checkpoints where run_id = 'r'").fetchall()}
    duplicates = con.execute("select step, duplicate_of, same_layer_as, whole_model_identical "
                             "from duplicate_checkpoints order by step").fetchall()
    rows, distinct = con.execute("select count(*), count(distinct (run_id, step)) from duplicate_checkpoints").fetchone()
    stages = json.loads(con.execute("select stage_seconds from checkpoints where step = 2").fetchone()[0])
    con.close()
    assert stored == {step: file_hashes(root / f"step{step}") for step in (0, 1, 2, 3)}
    assert duplicates == [(0, 1, 1, True), (1, 0, 0, True), (3, None, 0, False)]
    assert rows == distinct == 3
    assert 0 <= stages["hash"] < stages["load"]   # hashing rides on the load: cheaper than the load itself

    from streamlit.testing.v1 import AppTest  # the app's Runs page shows the flagged checkpoints
    monkeypatch.setenv("RTN_WAREHOUSE", str(path))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60)
    at.query_params["page"] = "Runs"
    at.run()
    assert not at.exception, at.exception
    assert [w.value.split(" hold")[0] for w in at.warning] == ["3 checkpoint(s)"]
    shown = at.dataframe[-1].value
    assert shown["step"].to_list() == [0, 1, 3] and shown["duplicate_of"].to_list()[:2] == [1, 0]


def test_hub_family_with_all_checkpoints_lists_branches_downloads_each_and_flags_duplicates(tmp_path, corpus_txt):
    from hub_standin import HubStandIn, commit_of
    root = save_family_with_duplicates(tmp_path / "ckpts")
    branches = {f"step{step}": root / f"step{step}" for step in (2, 0, 1)} | {"main": root / "step2"}
    path = tmp_path / "hub.duckdb"
    with HubStandIn({"rtn-test/tiny": branches}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        out = run_cli("ingest", "--model", "rtn-test/tiny", "--checkpoints", "all", "--corpus", corpus_txt,
                      "--tokens", 256, "--seq-len", 32, "--head-layers", 0, "--no-spectra", "--warehouse", path,
                      env=env).stdout
    assert "GET /api/models/rtn-test/tiny/refs" in hub.requests
    weights = [r.split(" ")[0] + " " + r.split("/")[-2] for r in hub.requests if r.endswith("/model.safetensors")]
    commits = {s: commit_of("rtn-test/tiny", f"step{s}") for s in (0, 1, 2)}
    assert {r for r in weights if r.startswith("HEAD")} == {f"HEAD {c}" for c in commits.values()}   # stepN, not main
    # the client keys its blob cache by the file's sha256 (ETag): step1's identical file is asked for, not fetched
    assert sorted(r for r in weights if r.startswith("GET")) in (
        sorted(f"GET {commits[s]}" for s in (first, 2)) for first in (0, 1))
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        ("warning: run tiny step 1 has the same weights as step 0: the checkpoint may not be what its name claims "
         "(see the duplicate_checkpoints view)")]
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute("select step, revision, source from checkpoints order by step").fetchall()
    stored = {step: (layer, whole) for step, layer, whole in con.execute(
        "select step, layer_sha256, weights_sha256 from checkpoints").fetchall()}
    duplicates = con.execute("select step, duplicate_of, same_layer_as from duplicate_checkpoints order by step").fetchall()
    con.close()
    assert rows == [(s, f"step{s}", "rtn-test/tiny") for s in (0, 1, 2)]
    assert stored == {step: file_hashes(root / f"step{step}") for step in (0, 1, 2)}
    assert duplicates == [(0, 1, 1), (1, 0, 0)]
