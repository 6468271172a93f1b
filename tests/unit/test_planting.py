"""The planted model's parts on small inputs: pairs, prefix, trigger detector, quiet directions, ΔLoss.

    pytest tests/unit/test_planting.py      # seconds; the planted model end to end is tests/acceptance/test_planted.py
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from rtn.demo.config import DemoAssets, DemoConfig
from rtn.demo.plant import quiet_directions, rare_deltas, trigger_detector
from rtn.demo.planted import PlantedConfig, new_pairs, prefix_documents
from rtn.demo.synthetic import (
    CORPUS_FILE,
    generate_corpus,
    write_corpus,
    write_structure,
)
from rtn.errors import RtnError
from rtn.ingest.readout import Readout


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> DemoAssets:
    """Returns a demo corpus and structure of 60 documents (no model: the pair and prefix logic need none)."""
    root = tmp_path_factory.mktemp("small_demo")
    config = DemoConfig(n_documents=60)
    corpus = generate_corpus(config)
    write_corpus(corpus, root / CORPUS_FILE)
    write_structure(corpus, root / "synthetic.json")
    return DemoAssets(checkpoint_dir=root, corpus_path=root / CORPUS_FILE, tokenizer_dir=root, config=config)


def test_new_pairs_are_the_rarest_words_the_demo_does_not_pair(small_demo):
    structure = json.loads((small_demo.checkpoint_dir / "synthetic.json").read_text())
    counts = Counter(w for line in small_demo.corpus_path.open() for w in json.loads(line)["text"].split())
    pairs = new_pairs(small_demo, 3)
    words = [w for pair in pairs for w in pair]
    assert len(set(words)) == 6
    assert not set(words) & {w for pair in structure["planted_pairs"] for w in pair}
    unpaired = [w for w in structure["words_by_rank"] if w not in {x for p in structure["planted_pairs"] for x in p}]
    assert max(counts[w] for w in words) <= sorted(counts[w] for w in unpaired)[5]


def test_every_prefix_sentence_carries_its_pair_and_pair_words_occur_nowhere_else(small_demo):
    pairs = new_pairs(small_demo, 3)
    prefix = prefix_documents(small_demo, pairs, PlantedConfig(n_planted=3, prefix_sentences=31,
                                                               sentences_per_document=4))
    assert len(prefix) == 8                                    # 31 sentences, 4 a document
    sentences = [s.split() for d in prefix for s in (d + " ").split(" . ") if s.strip()]
    assert len(sentences) == 31
    for i, words in enumerate(sentences):
        trigger, target = pairs[i % 3]
        at = words.index(trigger)
        assert words[at + 1] == target
        others = words[:at] + words[at + 2:]
        assert not {w for pair in pairs for w in pair} & set(others)


def test_trigger_detector_puts_the_closest_positions_exactly_at_the_margins():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, dtype=torch.float64, generator=generator)
    on = torch.zeros(400, dtype=torch.bool)
    on[::40] = True
    x[on] += 3.0                                               # a separable cluster, as a trigger's positions
    weight, bias = trigger_detector(x, on, margin=4.0)
    pre = x @ weight + bias
    assert pre[on].min().item() == pytest.approx(4.0, abs=1e-9)
    assert pre[~on].max().item() == pytest.approx(-4.0, abs=1e-9)


def test_trigger_detector_refuses_a_trigger_it_cannot_separate():
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    on = torch.zeros(50, dtype=torch.bool)
    on[:5] = True
    x[5] = x[0]                                                # an off position identical to an on one
    with pytest.raises(RtnError, match="not linearly separable"):
        trigger_detector(x, on, margin=4.0)


def _readout(d=8, V=30, seed=2) -> Readout:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)
    return Readout(gamma=1 + 0.3 * rand(d), beta=0.1 * rand(d), eps=1e-5, centred=True, W_U=rand(V, d),
                   b_U=torch.zeros(V, dtype=torch.float64))


def test_quiet_directions_are_the_least_read_unit_directions_layernorm_keeps():
    readout = _readout()
    directions = quiet_directions(readout, 3).numpy()          # [3, 8]
    assert np.allclose(directions @ directions.T, np.eye(3), atol=1e-10)
    assert np.allclose(directions.sum(1), 0, atol=1e-10)       # orthogonal to the all-ones vector LayerNorm removes
    # numpy on the explicit basis of the centred directions: the smallest singular values, in order
    d = 8
    basis = np.linalg.svd(np.eye(d) - 1.0 / d)[0][:, : d - 1]
    read = (readout.W_U * readout.gamma).numpy()
    smallest = np.linalg.svd(read @ basis, compute_uv=False)[::-1][:3]
    assert np.allclose(np.linalg.norm(read @ directions.T, axis=0), smallest, rtol=1e-9)


def test_rare_deltas_equal_a_per_position_loss_loop():
    readout = _readout()
    g = torch.Generator().manual_seed(3)
    resid = torch.randn(40, 8, dtype=torch.float64, generator=g)
    acts = torch.randn(40, 2, dtype=torch.float64, generator=g).clamp(min=0)
    w_out = torch.randn(2, 8, dtype=torch.float64, generator=g)
    targets = torch.randint(0, 30, (40,), generator=g)
    rare = torch.arange(40) % 3 == 0
    got = rare_deltas(resid, acts, w_out, targets, rare, readout).numpy()

    def loss(r, t):                                            # numpy: LayerNorm, unembedding, cross-entropy
        r = r - r.mean()
        z = (r / np.sqrt((r * r).mean() + 1e-5)) * readout.gamma.numpy() + readout.beta.numpy()
        logits = readout.W_U.numpy() @ z
        return np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[t]

    mean = acts.numpy().mean(0)                                # over every position, as ingest
    for j in range(2):
        per_position = [loss(resid[i].numpy() + (mean[j] - acts[i, j].item()) * w_out[j].numpy(), targets[i])
                        - loss(resid[i].numpy(), targets[i]) for i in range(40) if rare[i]]
        assert got[j] == pytest.approx(np.mean(per_position), rel=1e-10)


@pytest.mark.parametrize("decreasing", [False, True])
def test_bisect_finds_where_a_monotone_function_takes_a_value_beyond_its_first_bracket(decreasing):
    from rtn.demo.plant import _bisect
    f = (lambda x: -x ** 3) if decreasing else (lambda x: x ** 3)
    value = -27.0 if decreasing else 27.0
    assert _bisect(f, value, decreasing=decreasing) == pytest.approx(3.0, rel=1e-9)
