"""What determines the demo's corpus, tokenizer and checkpoints, and where the built demo is cached.

Shared by the corpus generator (rtn/demo/synthetic.py) and the trainer (rtn/demo/train.py), so
neither imports the other's module to learn the config.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_FORMAT = 1  # bump when code changes what a given config builds, so old caches are not reused


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo corpus, tokenizer and checkpoints (hashed into the cache key)."""

    seed: int = 0  # seeds the corpus, the model initialisation and the batch order
    # corpus
    n_types: int = 1000  # word types; few enough that tokens × neurons × vocab stays cheap on CPU
    zipf_exponent: float = 1.0  # p(rank r) ∝ 1 / r^s; natural language is close to 1
    n_documents: int = 5000  # ≈ 80 tokens each, ≈ 0.4 M tokens: the rarest types still occur ~10 times
    min_sentences: int = 3  # sentences per document, drawn uniformly in [min, max]
    max_sentences: int = 12
    min_sentence_words: int = 5  # words per sentence before its ".", drawn uniformly in [min, max]
    max_sentence_words: int = 15
    n_word_classes: int = 8  # grammar classes (like parts of speech); 1 = words drawn independently
    class_successors: int = 3  # classes that may follow each class: fewer = more predictable next word
    n_planted_pairs: int = 16  # (trigger → target) pairs of rare words
    pair_rate: float = 0.025  # chance a sentence holds a planted pair; keeps each target below the median count
    pair_follow_prob: float = 0.9  # P(target | trigger): high, so the target is predictable from context
    repeat_rate: float = 0.02  # chance a position repeats a rare word from earlier in its document
    # model (GPT-NeoX, Pythia's layout)
    d_model: int = 64  # residual width
    n_layers: int = 2  # transformer blocks; the last MLP is the one rtn studies
    n_heads: int = 4  # attention heads per layer
    d_mlp: int = 256  # MLP neurons per layer (4 × d_model, as Pythia)
    max_positions: int = 128  # longest sequence the model accepts; must be ≥ seq_len
    rotary_fraction: float = 0.25  # share of each head's dimensions that get rotary embeddings, as Pythia
    # training
    seq_len: int = 64  # tokens per training sequence (documents joined by <|endoftext|>, then chunked)
    batch_size: int = 32  # sequences per step; tokens_seen = step × batch_size × seq_len
    train_steps: int = 800  # optimizer updates: planted pairs are learned (P ≈ 0.8) within ~1.5 min
    lr: float = 3e-3  # peak AdamW learning rate; tiny models tolerate a high one
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 10 % of lr (Pythia's shape)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global gradient norm, guards the high learning rate
    n_even_checkpoints: int = 4  # evenly spaced checkpoints up to train_steps, after the log-spaced 0, 1, 2, 4, …
    eval_sequences: int = 64  # held-out sequences scored at every checkpoint (eval_loss)


@dataclass(frozen=True)
class DemoAssets:
    """Where a built demo lives."""

    checkpoint_dir: Path  # holds step0/, step1/, … (each a save_pretrained folder)
    corpus_path: Path  # the corpus the model was trained on, jsonl with a "text" field
    tokenizer_dir: Path  # AutoTokenizer.from_pretrained(tokenizer_dir) loads the tokenizer
    config: DemoConfig  # the config that built them



def default_cache_dir() -> Path:
    """Returns $RTN_CACHE, or ~/.cache/rtn when it is unset."""
    return Path(os.environ.get("RTN_CACHE") or Path.home() / ".cache" / "rtn").expanduser()


def cache_key(config: DemoConfig) -> str:
    """Returns the name of the config's cache folder: a short hash of the config and CACHE_FORMAT."""
    payload = json.dumps({"cache_format": CACHE_FORMAT, **asdict(config)}, sort_keys=True)
    return "demo-" + hashlib.sha256(payload.encode()).hexdigest()[:12]
