"""The embedded default: synthetic corpus, tokenizer, cached tiny GPT-NeoX checkpoints.

Fast tests build a tiny DemoConfig (a few seconds); the full default build is marked slow.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtn.demo.config import DemoConfig, cache_key
from rtn.demo.synthetic import DONE_FILE, ensure_demo, generate_corpus
from rtn.demo.train import CHECKPOINT_INFO_FILE, checkpoint_steps

TINY = DemoConfig(n_types=200, n_documents=300, n_planted_pairs=4, pair_rate=0.1, d_model=32, n_heads=2,
                  d_mlp=64, batch_size=8, train_steps=40, warmup_steps=5, n_even_checkpoints=2,
                  eval_sequences=8)


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    return ensure_demo(tmp_path_factory.mktemp("cache"), TINY)


@pytest.fixture(scope="module")
def default_corpus():
    return generate_corpus(DemoConfig())  # generation alone is cheap (< 1 s)


def _counts(documents: list[str]) -> Counter:
    return Counter(word for document in documents for word in document.split())


def _step_folders(root: Path) -> dict[int, Path]:
    return {int(p.name[4:]): p for p in root.glob("step*")}


def test_corpus_is_deterministic_for_a_seed():
    assert generate_corpus(TINY).documents == generate_corpus(TINY).documents
    assert generate_corpus(TINY).documents != generate_corpus(replace(TINY, seed=1)).documents


def test_word_counts_fall_with_rank_like_zipf(default_corpus):
    counts = _counts(default_corpus.documents)
    by_rank = np.array([counts[word] for word in default_corpus.words], dtype=float)
    planted = {word for pair in default_corpus.planted_pairs for word in pair}
    base = np.array([word not in planted for word in default_corpus.words])
    decile_means = [chunk.mean() for chunk in np.array_split(by_rank[base], 10)]
    assert all(a > b for a, b in zip(decile_means, decile_means[1:]))
    assert by_rank.max() > 100 * np.median(by_rank)
    # Zipf with exponent 1: log count against log rank has slope close to -1
    slope = np.polyfit(np.log(np.arange(1, base.sum() + 1)), np.log(np.maximum(by_rank[base], 1)), 1)[0]
    assert -1.3 < slope < -0.7


def test_planted_targets_follow_their_triggers_and_stay_rare(default_corpus):
    config = DemoConfig()
    counts = _counts(default_corpus.documents)
    median = np.median(list(counts.values()))
    following = Counter()
    for document in default_corpus.documents:
        words = document.split()
        following.update(zip(words, words[1:]))
    for trigger, target in default_corpus.planted_pairs:
        assert counts[target] < median
        assert following[trigger, target] / counts[trigger] == pytest.approx(config.pair_follow_prob, abs=0.12)


def test_rare_words_repeat_within_documents():
    def repeated_share(config: DemoConfig) -> float:
        corpus = generate_corpus(config)
        rare = set(corpus.rare_words)
        repeats = total = 0
        for document in corpus.documents:
            seen = set()
            for word in document.split():
                if word in rare:
                    repeats += word in seen
                    total += 1
                    seen.add(word)
        return repeats / total

    bursty = replace(TINY, n_documents=600)
    assert repeated_share(bursty) > 2 * repeated_share(replace(bursty, repeat_rate=0.0))


def test_tokenizer_round_trips_through_auto_tokenizer(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.tokenizer_dir)
    documents = [json.loads(line)["text"] for line in tiny_assets.corpus_path.read_text().splitlines()]
    assert len(documents) == TINY.n_documents
    for document in documents[:20]:
        ids = tokenizer(document)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == document
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert len(tokenizer) == len(_counts(documents)) + 3  # every word and "." plus three special tokens


def test_checkpoint_steps_are_log_spaced_then_even():
    assert checkpoint_steps(800, 4) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 200, 400, 600, 800]
    assert checkpoint_steps(40, 2) == [0, 1, 2, 4, 8, 16, 20, 40]
    default = checkpoint_steps(DemoConfig().train_steps, DemoConfig().n_even_checkpoints)
    assert len(default) >= 8 and default[0] == 0 and default[-1] == DemoConfig().train_steps


def test_every_checkpoint_loads_and_records_tokens_seen(tiny_assets):
    folders = _step_folders(tiny_assets.checkpoint_dir)
    assert sorted(folders) == checkpoint_steps(TINY.train_steps, TINY.n_even_checkpoints)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.tokenizer_dir)
    for step, folder in folders.items():
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model).__name__ == "GPTNeoXForCausalLM"
        assert model.config.vocab_size == len(tokenizer) and model.config.use_parallel_residual
        info = json.loads((folder / CHECKPOINT_INFO_FILE).read_text())
        assert info["step"] == step and info["tokens_seen"] == step * TINY.batch_size * TINY.seq_len
        assert AutoTokenizer.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()


def test_loss_decreases_during_training(tiny_assets):
    folders = _step_folders(tiny_assets.checkpoint_dir)
    eval_loss = {step: json.loads((f / CHECKPOINT_INFO_FILE).read_text())["eval_loss"] for step, f in folders.items()}
    assert eval_loss[TINY.train_steps] < eval_loss[0] - 1.0
    train_loss = json.loads((tiny_assets.checkpoint_dir / "training.json").read_text())["train_loss"]
    assert len(train_loss) == TINY.train_steps
    assert np.mean(train_loss[-5:]) < np.mean(train_loss[:5]) - 1.0


def test_warm_cache_returns_fast_and_rebuilds_nothing(tiny_assets):
    before = {p: p.stat().st_mtime_ns for p in tiny_assets.checkpoint_dir.rglob("*")}
    started = time.perf_counter()
    again = ensure_demo(tiny_assets.checkpoint_dir.parent, TINY)
    assert time.perf_counter() - started < 1.0
    assert again == tiny_assets
    assert {p: p.stat().st_mtime_ns for p in again.checkpoint_dir.rglob("*")} == before


def test_changed_config_gets_its_own_cache_folder():
    assert cache_key(TINY) == cache_key(replace(TINY))
    assert cache_key(TINY) != cache_key(replace(TINY, train_steps=41))
    assert cache_key(TINY) != cache_key(replace(TINY, seed=1))


def test_incomplete_cache_is_rebuilt_with_identical_weights(tiny_assets, tmp_path):
    cache = tmp_path / "cache"
    root = ensure_demo(cache, TINY).checkpoint_dir
    (root / DONE_FILE).unlink()  # as if the build had died before its last write
    (root / "step0" / "model.safetensors").write_bytes(b"half-written")
    abandoned = cache / f".{root.name}.tmp-999999999"  # staging folder of a process that is gone
    abandoned.mkdir()
    rebuilt = ensure_demo(cache, TINY).checkpoint_dir
    assert (rebuilt / DONE_FILE).exists() and not abandoned.exists()
    assert [p.name for p in cache.iterdir()] == [root.name]
    last = f"step{TINY.train_steps}/model.safetensors"
    for name in ("step0/model.safetensors", last):  # same seed, same machine: same bytes
        assert (rebuilt / name).read_bytes() == (tiny_assets.checkpoint_dir / name).read_bytes()


def test_build_restores_the_callers_torch_thread_count(tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ensure_demo(tmp_path, replace(TINY, train_steps=2, n_even_checkpoints=1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
