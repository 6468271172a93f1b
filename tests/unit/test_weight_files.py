"""Weight files are checked by headers and sizes: intact ones pass, truncated, grown or foreign ones are named."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from rtn.errors import RtnError
from rtn.ingest.weight_files import check_folder

TENSORS = {"w": torch.arange(600, dtype=torch.float32).reshape(20, 30), "b": torch.ones(30)}


def _cut(path, by: int) -> None:
    path.write_bytes(path.read_bytes()[:-by])


def test_intact_safetensors_shards_and_torch_files_pass(tmp_path):
    save_file(TENSORS, tmp_path / "model.safetensors")
    save_file(TENSORS, tmp_path / "model-00001-of-00001.safetensors")
    torch.save(TENSORS, tmp_path / "pytorch_model.bin")
    check_folder(tmp_path)


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda p: _cut(p, 1), "its header describes"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "its header describes"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "cannot hold its header"),
    (lambda p: p.write_bytes(b"\x10" + b"\0" * 7 + b"not json here!!!" + b"\0" * 64), "not safetensors JSON"),
])
def test_damaged_safetensors_are_named(tmp_path, damage, expected):
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, path)
    damage(path)
    with pytest.raises(RtnError, match=f"model.safetensors is truncated or corrupt \\(.*{expected}"):
        check_folder(tmp_path)


def test_a_truncated_torch_zip_and_a_missing_shard_are_named(tmp_path):
    torch.save(TENSORS, tmp_path / "pytorch_model.bin")
    _cut(tmp_path / "pytorch_model.bin", 200)
    with pytest.raises(RtnError, match="pytorch_model.bin is truncated or corrupt"):
        check_folder(tmp_path)
    shards = tmp_path / "sharded"
    shards.mkdir()
    save_file(TENSORS, shards / "model-00001-of-00002.safetensors")
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(RtnError, match="model-00002-of-00002.safetensors is missing"):
        check_folder(shards)


def test_the_legacy_pickle_format_has_nothing_to_check_but_must_not_be_empty(tmp_path):
    torch.save(TENSORS, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    check_folder(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(RtnError, match="it is empty"):
        check_folder(tmp_path)
