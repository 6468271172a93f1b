"""A checkpoint's step comes from a stepN revision, its rtn_checkpoint.json, or its name inside a checkpoints folder;
never from a lone model folder's name (issue 15, point 7)."""
from __future__ import annotations

import json
import os

import pytest

from rtn.errors import RtnError
from rtn.ingest.sources import resolve_checkpoints


def _folder(path, meta: dict | None = None):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    if meta is not None:
        (path / "rtn_checkpoint.json").write_text(json.dumps(meta))
    return path


def test_a_lone_folder_is_step_minus_one_unless_it_says_or_is_named_stepN(tmp_path):
    assert [r.step for r in resolve_checkpoints(str(_folder(tmp_path / "gpt2")))] == [-1]
    assert [r.step for r in resolve_checkpoints(str(_folder(tmp_path / "pythia-70m")))] == [-1]
    assert [r.step for r in resolve_checkpoints(str(_folder(tmp_path / "step800")))] == [800]
    said = _folder(tmp_path / "final-model", {"step": 42, "tokens_seen": 7})
    assert [(r.step, r.tokens_seen) for r in resolve_checkpoints(str(said))] == [(42, 7)]


def test_children_of_a_checkpoints_folder_take_the_number_their_name_ends_with(tmp_path):
    for name in ("checkpoint-1000", "checkpoint-20", "step0"):
        _folder(tmp_path / "run" / name)
    refs = resolve_checkpoints(str(tmp_path / "run"), "all")
    assert [(r.revision, r.step) for r in refs] == [("step0", 0), ("checkpoint-20", 20), ("checkpoint-1000", 1000)]


def test_hub_revisions_have_steps_only_when_named_stepN():
    refs = resolve_checkpoints("EleutherAI/pythia-70m", "main,step1000")
    assert [(r.revision, r.step) for r in refs] == [("main", -1), ("step1000", 1000)]


def test_two_checkpoints_of_one_step_and_a_corrupt_rtn_checkpoint_json_are_refused(tmp_path):
    _folder(tmp_path / "run" / "a1")
    _folder(tmp_path / "run" / "b1")
    with pytest.raises(RtnError, match="checkpoints a1 and b1 both have step 1"):
        resolve_checkpoints(str(tmp_path / "run"), "all")
    broken = _folder(tmp_path / "broken")
    (broken / "rtn_checkpoint.json").write_text('{"step": "x"}')
    with pytest.raises(RtnError, match="rtn_checkpoint.json is corrupt"):
        resolve_checkpoints(str(broken))


def test_sources_are_stored_absolute(tmp_path, monkeypatch):
    _folder(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoints("model")[0].source == os.path.join(tmp_path, "model")
