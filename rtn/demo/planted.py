"""The planted model: the trained demo checkpoint with k rare-token specialists put in by hand.

    from rtn.demo.planted import ensure_planted
    planted = ensure_planted()          # cold: ~1 min on 2 CPU cores after the demo is cached; warm: at once
    planted.checkpoint_dir / "step800"  # loads with from_pretrained; planted.json says what was planted

It is the end-to-end check that ablation, ranking, the regime verdict and the groups find
what was put there (issue 13), shipped as the demo's `planted` run. Construction:
* Pairs. k new (trigger → target) pairs of rare words, the rarest types the demo corpus does
  not already pair, so the trained model has never seen them follow each other and predicts
  each target at ≈ 8 nats. (A specialist for one of the demo's own pairs could add little:
  the trained model already predicts those targets at 0.1–0.4 nats.) The run's corpus is the
  demo corpus behind a prefix of documents in which every sentence carries one new pair; the
  prefix covers the evaluated tokens; in the demo documents that follow, the new pair words
  are deleted, so they occur only in their pairs (as the demo's own pair words do) and stay
  rare over the whole corpus.
* Input. Specialist j replaces one of the k neurons that move the final residual least, and
  fires only where the current token is trigger j: its input weights are the linear
  discriminant of the layer's input at those positions, scaled so every trigger position has
  pre-activation ≥ +fire_margin and every other position ≤ −fire_margin (GELU ≈ 0 there).
  Triggers are rare, so the neuron's mean, the value mean ablation substitutes, stays small:
  keyed on frequent contexts, a specialist's ablation would move every position.
* Output. Along a direction of the final residual that the unembedding reads least (its
  smallest singular directions, one per specialist), with its target's unembedding row given a
  component that reads it (rows biorthogonal, so no target reads another's specialist). So
  the push raises its target's logit and little else. Along W_U[target] a push lowered
  p(target) (rare rows move together: issue 13's first attempt); along the trained model's
  own gradient of log p(target) it needed ~100× the residual, and its mean, all that mean
  ablation adds where the specialist is silent, broke common predictions (ΔLoss 8.7, tried).
* Scale. The push is one median residual norm. The target's row then gets two parts: a gain
  along its specialist's direction, so that where the specialist fires it predicts the target
  at a mean loss of on_loss (saturated: the trained neurons' small moves there then change
  little), and a drop along the final norm's mean output, lowering the target's logit by a few
  nats everywhere: the targets occur only after their triggers, so this costs nothing
  elsewhere, and the specialist alone carries its target's evidence. The drop is chosen by
  bisection so the specialist's mean ablation raises rare-target loss by a designed margin
  (rare_delta, then × delta_ratio per specialist), computed exactly as ingest does (float64).
  Why so large: by the papers' definition a plateau stands above the power law of the other
  neurons extrapolated back to the top ranks, and on this trained curve that line (slope ≈
  −1.6 over ranks 6–150) reaches ≈ 1.2 at rank 1, 40× its own top neuron. Without the drop a
  specialist could cost at most its target's ≈ 8 nats at 68 of 954 rare predictions (≤ 0.58;
  measured at 0.50: lift 0.61 under a threshold of 0.89); unsaturated with a drop, the trained
  neurons' effects at the pair positions grew with it (next neuron 0.05).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rtn.demo.config import DemoAssets, cache_key, default_cache_dir
from rtn.demo.synthetic import (
    CORPUS_FILE,
    SENTENCE_END,
    build_atomically,
    ensure_demo,
    grammatical_words,
    zipf_probabilities,
)
from rtn.errors import RtnError

PLANTED_FORMAT = 1  # bump when code changes what a given config builds
PLANTED_FILE = "planted.json"


@dataclass(frozen=True)
class PlantedConfig:
    """Everything that determines the planted model besides the demo it starts from (hashed into the cache key)."""

    base_step: int = 800  # the demo checkpoint the specialists go into: the trained model
    n_planted: int = 5  # specialists: 2 % of the demo's 256 neurons (the papers' plateau ≈ 1.7 %); fewer pairs = more positions each
    rare_delta: float = 1.2  # designed rare-target ΔLoss of specialist 0: ≈ 40× the trained model's top neuron (0.028)
    delta_ratio: float = 0.97  # each next specialist's margin is this times the previous one's: a head, not a tie
    prefix_sentences: int = 400  # sentences of the prefix, each with one new pair: ≈ 4600 tokens, covers the evaluated ones
    sentences_per_document: int = 10  # prefix sentences per document
    on_loss: float = 0.05  # mean loss of a specialist's own pair predictions: saturated (p ≈ 0.95)
    push: float = 1.0  # a specialist's mean push where it fires, in units of the median centred residual norm
    fire_margin: float = 4.0  # |pre-activation| at the closest positions on either side of the trigger boundary
    tokens: int = 4096  # evaluated positions, as the demo's ingest (rtn.demo.demo_config)
    seq_len: int = 64  # evaluated sequence length, as the demo's ingest
    seed: int = 13  # seeds the prefix's sentences and the pairs' slots


@dataclass(frozen=True)
class PlantedAssets:
    """Where a built planted model lives."""

    checkpoint_dir: Path  # holds step{base_step}/ (save_pretrained, with the demo's tokenizer)
    corpus_path: Path  # prefix documents, then the demo corpus
    design: dict  # planted.json: config, pairs, neurons, designed and measured margins


def ensure_planted(demo: DemoAssets | None = None, config: PlantedConfig = PlantedConfig(),
                   cache_dir: Path | None = None) -> PlantedAssets:
    """Returns the planted model's checkpoint, corpus and design, building them first unless cached."""
    demo = demo or ensure_demo(cache_dir)
    root = Path(cache_dir or default_cache_dir()).expanduser() / planted_key(demo, config)
    build_atomically(root, lambda staging: build_planted(staging, demo, config))
    return PlantedAssets(checkpoint_dir=root, corpus_path=root / CORPUS_FILE,
                         design=json.loads((root / PLANTED_FILE).read_text()))


def planted_key(demo: DemoAssets, config: PlantedConfig) -> str:
    """Returns the cache folder name: a short hash of the demo's key, the config and PLANTED_FORMAT."""
    payload = json.dumps({"format": PLANTED_FORMAT, "demo": cache_key(demo.config), **asdict(config)}, sort_keys=True)
    return "planted-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def new_pairs(demo: DemoAssets, k: int) -> list[tuple[str, str]]:
    """Returns k (trigger, target) pairs of the rarest demo words outside its planted pairs, rarest first."""
    structure = json.loads((demo.checkpoint_dir / "synthetic.json").read_text())
    paired = {word for pair in structure["planted_pairs"] for word in pair}
    counts = Counter(word for line in demo.corpus_path.open(encoding="utf-8")
                     for word in json.loads(line)["text"].split())
    words = structure["words_by_rank"]
    free = sorted((w for w in words if w not in paired), key=lambda w: (counts[w], words.index(w)))
    return list(zip(free[:k], free[k: 2 * k]))


def prefix_documents(demo: DemoAssets, pairs: list[tuple[str, str]], config: PlantedConfig) -> list[str]:
    """Returns documents of the demo's grammar in which sentence i carries pair i mod k at a random slot."""
    rng = np.random.default_rng(config.seed)
    structure = json.loads((demo.checkpoint_dir / "synthetic.json").read_text())
    words = structure["words_by_rank"]
    reserved = [words.index(w) for pair in structure["planted_pairs"] + pairs for w in pair]
    base_p = zipf_probabilities(len(words), demo.config.zipf_exponent)
    base_p[reserved] = 0.0  # pair words occur only in their pairs, as in the demo corpus
    base_p /= base_p.sum()
    lengths = rng.integers(demo.config.min_sentence_words, demo.config.max_sentence_words + 1,
                           size=config.prefix_sentences)                           # [n_sentences]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens = grammatical_words(demo.config, rng, base_p, lengths)   # [n_words] word ranks
    slots = (rng.random(lengths.size) * (lengths - 1)).astype(np.int64)            # leaves room for the target
    sentences = []
    for i, (a, b) in enumerate(itertools.pairwise(starts)):
        sentence = [words[r] for r in tokens[a:b]]
        sentence[slots[i]: slots[i] + 2] = pairs[i % len(pairs)]
        sentences.append(" ".join(sentence) + " " + SENTENCE_END)
    per = config.sentences_per_document
    return [" ".join(sentences[i: i + per]) for i in range(0, len(sentences), per)]


def build_planted(out_dir: Path, demo: DemoAssets, config: PlantedConfig) -> None:
    """Writes corpus.jsonl, step{base_step}/ and planted.json for `config` into `out_dir` (no caching)."""
    # torch loads only when a build is needed
    from rtn.demo.plant import plant_specialists

    pairs = new_pairs(demo, config.n_planted)
    prefix = prefix_documents(demo, pairs, config)
    if sum(len(d.split()) + 1 for d in prefix) < config.tokens:
        raise RtnError(f"the planted prefix has fewer than {config.tokens} tokens; raise prefix_sentences")
    paired = {word for pair in pairs for word in pair}
    rest = (" ".join(w for w in json.loads(line)["text"].split() if w not in paired)
            for line in demo.corpus_path.open(encoding="utf-8"))
    with open(out_dir / CORPUS_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": document}) + "\n" for document in [*prefix, *rest])
    design = plant_specialists(out_dir, demo, config, pairs)
    (out_dir / PLANTED_FILE).write_text(json.dumps(design, indent=1), encoding="utf-8")
