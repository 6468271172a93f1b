"""The embedded offline default: a seeded synthetic corpus, its tokenizer, and the cached demo model.

    from rtn.demo.synthetic import ensure_demo
    assets = ensure_demo()           # cold: ~1–1.5 min on 2 CPU cores; warm: returns at once
    assets.checkpoint_dir / "step0"  # every checkpoint folder loads with from_pretrained

Words are pronounceable pseudo-words, drawn with probability ∝ 1 / rank^s (Zipf) through a
small class grammar (like parts of speech), so the next word depends on context. Two kinds of
structure make some rare tokens predictable from context, so a model has a reason to grow
neurons that boost them:
* planted pairs: a trigger word is followed by its target word with high probability. Both
  words occur only through the pair, so the target's count stays below the median type count
  (rare) while P(target | trigger) is high — a common trigger could not do that, since the
  target's count would then be about the trigger's.
* burstiness: a position sometimes repeats a rare word seen earlier in the same document, as
  names do in real text, so attention can predict a rare token from the document so far.

The cache (`$RTN_CACHE`, default ~/.cache/rtn) holds one folder per config:

    <cache>/demo-<key>/            key = short hash of DemoConfig: a changed config builds anew
        corpus.jsonl               one {"text": document} per line
        synthetic.json             the planted pairs and the words by Zipf rank
        tokenizer.json, ...        the tokenizer (save_pretrained)
        training.json              config, checkpoint steps, loss of every step
        step0/ step1/ step2/ …     model + tokenizer + rtn_checkpoint.json (see rtn/demo/train.py)
        done                       written last: a folder without it is never used

A build is written to a hidden staging folder and renamed into place, so an interrupted or
concurrent build never leaves a half-built cache behind.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from rtn.demo.config import DemoAssets, DemoConfig, cache_key, default_cache_dir

CORPUS_FILE = "corpus.jsonl"
DONE_FILE = "done"
EOS = "<|endoftext|>"  # separates documents; also the bos token, as in Pythia
PAD = "<|pad|>"
UNK = "<|unk|>"  # a WordLevel model needs one; never produced on the synthetic corpus
SPECIAL_TOKENS = [EOS, PAD, UNK]
SENTENCE_END = "."

# Syllable parts of pseudo-words; ASCII letters only so whitespace splitting is the whole tokenizer.
ONSETS = ["", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "sh", "ch", "th", "br", "kr", "st", "pl", "gr", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei", "ea"]
CODAS = ["", "", "", "n", "r", "s", "l", "k", "m"]


@dataclass
class SyntheticCorpus:
    """The generated documents and the structure planted in them."""

    documents: list[str]  # one string per document, words separated by single spaces
    words: list[str]  # every word type, index = Zipf rank (0 = most frequent base word)
    planted_pairs: list[tuple[str, str]]  # (trigger, target): target follows trigger w.p. pair_follow_prob
    rare_words: list[str]  # base words in the rare half of ranks, the ones that repeat in documents


def pseudo_words(n_types: int, rng: np.random.Generator) -> list[str]:
    """Returns `n_types` distinct pseudo-words, shortest first (frequent words are short, as in real languages)."""
    words: dict[str, None] = {}  # a dict keeps first-seen order, so the result depends only on rng
    while len(words) < n_types:
        n_syllables = int(rng.integers(1, 5))
        word = "".join(
            ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
            for _ in range(n_syllables)
        )
        if len(word) >= 2:  # one-letter words look like stray vowels
            words.setdefault(word)
    return sorted(words, key=len)  # stable sort: ties keep their rng order


def zipf_probabilities(n_types: int, exponent: float) -> np.ndarray:
    """Returns p [n_types] with p[rank] ∝ 1 / (rank + 1)^exponent, summing to 1."""
    weights = 1.0 / np.arange(1, n_types + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def grammatical_words(config: DemoConfig, rng: np.random.Generator, base_p: np.ndarray,
                      sentence_lengths: np.ndarray) -> np.ndarray:
    """Returns word ranks [sum(sentence_lengths)]: all sentences laid end to end, drawn by a class grammar.

    Word r belongs to class r mod n_word_classes, so each class keeps a Zipf shape. A sentence
    starts in a uniform class; each next class is one of `class_successors` classes, given by
    random permutations with equal weights: the chain is doubly stochastic, every position's
    class is uniform, and overall word counts stay Zipf while the next word depends on context.
    """
    n_classes = config.n_word_classes
    successors = np.stack([rng.permutation(n_classes) for _ in range(config.class_successors)], axis=1)  # [n_classes, k]
    n_sentences, longest = sentence_lengths.size, int(sentence_lengths.max())
    classes = np.empty((n_sentences, longest), dtype=np.int64)  # [n_sentences, longest]; padding unused
    classes[:, 0] = rng.integers(n_classes, size=n_sentences)
    for j in range(1, longest):
        classes[:, j] = successors[classes[:, j - 1], rng.integers(config.class_successors, size=n_sentences)]
    classes = classes[np.arange(longest) < sentence_lengths[:, None]]  # [n_words], sentence after sentence

    words = np.empty(classes.size, dtype=np.int64)  # [n_words]
    ranks = np.arange(config.n_types)
    for c in range(n_classes):
        at = np.flatnonzero(classes == c)
        members = ranks[ranks % n_classes == c]
        words[at] = rng.choice(members, size=at.size, p=base_p[members] / base_p[members].sum())
    return words


def generate_corpus(config: DemoConfig) -> SyntheticCorpus:
    """Returns the documents for `config`; the same config (seed included) gives the same corpus."""
    rng = np.random.default_rng(config.seed)
    words = pseudo_words(config.n_types, rng)
    rare_ranks = np.arange(config.n_types // 2, config.n_types)

    # Planted words come from the rare half and are taken out of the Zipf draw, so their counts
    # come only from the pairs and P(target | trigger) is exactly pair_follow_prob.
    planted = rng.choice(rare_ranks, size=2 * config.n_planted_pairs, replace=False)
    triggers, targets = planted[: config.n_planted_pairs], planted[config.n_planted_pairs:]
    base_p = zipf_probabilities(config.n_types, config.zipf_exponent)
    base_p[planted] = 0.0
    base_p /= base_p.sum()
    is_rare = np.zeros(config.n_types, dtype=bool)
    is_rare[rare_ranks] = True
    is_rare[planted] = False

    sentences_per_doc = rng.integers(config.min_sentences, config.max_sentences + 1, size=config.n_documents)
    sentence_lengths = rng.integers(config.min_sentence_words, config.max_sentence_words + 1,
                                    size=int(sentences_per_doc.sum()))  # [n_sentences]
    sentence_starts = np.concatenate([[0], np.cumsum(sentence_lengths)])  # [n_sentences + 1]
    tokens = grammatical_words(config, rng, base_p, sentence_lengths)  # [n_words] word ranks
    doc_sentence_starts = np.concatenate([[0], np.cumsum(sentences_per_doc)])  # [n_documents + 1]

    # Burstiness: a chosen position copies a rare word from earlier in its document.
    repeat_at = rng.random(tokens.size) < config.repeat_rate  # [n_words]
    for doc in range(config.n_documents):
        lo = sentence_starts[doc_sentence_starts[doc]]
        hi = sentence_starts[doc_sentence_starts[doc + 1]]
        rare_positions = lo + np.flatnonzero(is_rare[tokens[lo:hi]])
        for position in lo + np.flatnonzero(repeat_at[lo:hi]):
            n_earlier = np.searchsorted(rare_positions, position)
            if n_earlier:
                tokens[position] = tokens[rare_positions[rng.integers(n_earlier)]]

    # Pairs: some sentences get one trigger at a random slot, followed by its target w.p. pair_follow_prob.
    with_pair = np.flatnonzero(rng.random(sentence_lengths.size) < config.pair_rate)  # sentence indices
    pair = rng.integers(config.n_planted_pairs, size=with_pair.size)
    slot = (rng.random(with_pair.size) * (sentence_lengths[with_pair] - 1)).astype(np.int64)  # leaves room for the target
    trigger_at = sentence_starts[with_pair] + slot
    tokens[trigger_at] = triggers[pair]
    follows = rng.random(with_pair.size) < config.pair_follow_prob
    tokens[trigger_at[follows] + 1] = targets[pair[follows]]

    word_array = np.array(words, dtype=object)
    sentences = [" ".join(word_array[tokens[a:b]]) + " " + SENTENCE_END
                 for a, b in zip(sentence_starts[:-1], sentence_starts[1:])]
    documents = [" ".join(sentences[a:b]) for a, b in zip(doc_sentence_starts[:-1], doc_sentence_starts[1:])]
    return SyntheticCorpus(
        documents=documents,
        words=words,
        planted_pairs=[(words[t], words[g]) for t, g in zip(triggers, targets)],
        rare_words=[words[r] for r in np.flatnonzero(is_rare)],
    )


def write_corpus(corpus: SyntheticCorpus, path: Path) -> Path:
    """Returns `path` after writing one {"text": document} per line (the layout `datasets` reads as json)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": document}) + "\n" for document in corpus.documents)
    return path


def write_structure(corpus: SyntheticCorpus, path: Path) -> Path:
    """Returns `path` after writing the planted structure as JSON, for analyses that check it."""
    structure = {"planted_pairs": corpus.planted_pairs, "words_by_rank": corpus.words}
    path.write_text(json.dumps(structure, indent=1), encoding="utf-8")
    return path


def train_tokenizer(documents: list[str], out_dir: Path, model_max_length: int):
    """Returns a `PreTrainedTokenizerFast` trained on `documents` (one id per word), saved to `out_dir`.

    `AutoTokenizer.from_pretrained(out_dir)` loads it back. Ids are ordered by frequency after the
    special tokens, which the WordLevel trainer does by itself.
    """
    from transformers import PreTrainedTokenizerFast  # transformers imports torch; keep this module light

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words and "." are already space-separated
    n_types = len({word for document in documents for word in document.split()})
    trainer = trainers.WordLevelTrainer(vocab_size=n_types + len(SPECIAL_TOKENS), min_frequency=1,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(documents, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS,
                                      pad_token=PAD, unk_token=UNK, model_max_length=model_max_length)
    wrapped.save_pretrained(out_dir)
    return wrapped


def ensure_demo(cache_dir: Path | None = None, config: DemoConfig = DemoConfig()) -> DemoAssets:
    """Returns the demo's checkpoints, corpus and tokenizer, building them first unless already cached."""
    root = Path(cache_dir or default_cache_dir()).expanduser() / cache_key(config)
    build_atomically(root, lambda staging: build_demo(staging, config))
    return DemoAssets(checkpoint_dir=root, corpus_path=root / CORPUS_FILE, tokenizer_dir=root, config=config)


def build_demo(out_dir: Path, config: DemoConfig) -> None:
    """Writes corpus, tokenizer, checkpoints and training log for `config` into `out_dir` (no caching)."""
    from rtn.demo.train import train_checkpoints  # torch loads only when a build is needed

    corpus = generate_corpus(config)
    write_corpus(corpus, out_dir / CORPUS_FILE)
    write_structure(corpus, out_dir / "synthetic.json")
    tokenizer = train_tokenizer(corpus.documents, out_dir, model_max_length=config.max_positions)
    train_checkpoints(out_dir, config, tokenizer, corpus.documents)


def build_atomically(root: Path, build) -> None:
    """Runs `build(staging)` into a hidden staging folder renamed to `root`, unless `root` is already complete.

    The demo and the planted model (rtn/demo/planted.py) cache through this one function.
    """
    if (root / DONE_FILE).exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(root)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        build(staging)
        (staging / DONE_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")  # last: means complete
        if root.exists() and not (root / DONE_FILE).exists():
            shutil.rmtree(root)  # an incomplete folder (e.g. copied by hand); never trust it
        try:
            staging.rename(root)
        except OSError:
            if not (root / DONE_FILE).exists():  # otherwise a concurrent build won the race: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned_staging(root: Path) -> None:
    """Deletes staging folders of builds whose process is gone (killed mid-build)."""
    for staging in root.parent.glob(f".{root.name}.tmp-*"):
        pid = staging.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else
