"""ingest/hashing.py: the hashes see every weight, and nothing but the weights."""
from __future__ import annotations

import torch
from conftest import tiny_model

from rtn.ingest import adapters
from rtn.ingest.hashing import weight_hashes


def test_equal_weights_hash_alike_and_any_changed_weight_changes_the_whole_hash(family):
    model, same, other = tiny_model(family, seed=0), tiny_model(family, seed=0), tiny_model(family, seed=1)
    assert weight_hashes(model, 1) == weight_hashes(same, 1)
    assert weight_hashes(model, 1)[1] != weight_hashes(other, 1)[1]
    layer_hash, whole_hash = weight_hashes(model, 1)
    with torch.no_grad():
        next(iter(model.state_dict().values())).view(-1)[0] += 1e-6   # one float, outside the studied last block
    assert weight_hashes(model, 1) == (layer_hash, weight_hashes(model, 1)[1]) != (layer_hash, whole_hash)


def test_the_studied_layer_hash_covers_its_block_only(family):
    model, donor = tiny_model(family, seed=0), tiny_model(family, seed=1)
    adapter = adapters.adapter_for(model)
    adapters.blocks(model, adapter)[1].load_state_dict(adapters.blocks(donor, adapter)[1].state_dict())
    assert weight_hashes(model, 1)[0] == weight_hashes(donor, 1)[0]       # same last block
    assert weight_hashes(model, 0)[0] != weight_hashes(donor, 0)[0]       # different first block
    assert weight_hashes(model, 1)[1] != weight_hashes(donor, 1)[1]
