"""Tiny models built from configs, shared by the tests."""
from __future__ import annotations

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM)

VOCAB = 97        # odd on purpose: nothing may assume a multiple of a block size


def _exact_rms_norm(self, x):
    # HF's RMSNorm computes in float32 even in a float64 model, which would cap the float64
    # oracle at ~1e-7; the reference keeps the input's precision.
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def tiny_model(family: str, dtype=torch.float32, seed: int = 0, vocab: int = VOCAB):
    """Returns a random tiny causal LM of a family, in eval mode."""
    torch.manual_seed(seed)
    if family == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=72, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, initializer_range=0.2)
        model = GPTNeoXForCausalLM(config)
    elif family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_inner=72, n_positions=64,
                            bos_token_id=0, eos_token_id=0, initializer_range=0.2)
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, intermediate_size=72, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=0.2)
        model = LlamaForCausalLM(config)
        for module in model.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.forward = _exact_rms_norm.__get__(module)
    else:
        raise ValueError(family)
    # Large init (0.2) makes ablation effects big enough to compare. Random init leaves LayerNorm at (1, 0) and biases at 0: perturb them so the test sees them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.to(dtype).eval()


@pytest.fixture(params=["gpt_neox", "gpt2", "llama"])
def family(request):
    return request.param


WORDS = [f"w{i}" for i in range(VOCAB - 2)]


def make_corpus_docs(n_docs: int = 60, seed: int = 0) -> list[str]:
    """Returns Zipf-ish documents over WORDS: a few types common, most rare."""
    import numpy as np
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1) ** 1.1
    weights /= weights.sum()
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)), p=weights)) for _ in range(n_docs)]


def make_tokenizer(vocab: int = VOCAB):
    """Returns a word-level fast tokenizer whose ids fit a model of `vocab` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    table = {"<|endoftext|>": 0, "<|pad|>": 1, **{w: i + 2 for i, w in enumerate(WORDS[: vocab - 2])}}
    tok = Tokenizer(models.WordLevel(table, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="<|pad|>")


def save_model_folder(folder, family: str = "gpt_neox", seed: int = 0, tokenizer_vocab: int = VOCAB):
    """Writes a save_pretrained model with its tokenizer to `folder`; returns the folder."""
    model = tiny_model(family, seed=seed)
    model.save_pretrained(folder)
    make_tokenizer(tokenizer_vocab).save_pretrained(folder)
    return folder


@pytest.fixture
def corpus_txt(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(make_corpus_docs()) + "\n")
    return path


def save_checkpoint_family(root, family: str = "gpt_neox", steps=(0, 1, 2, 4)):
    """Writes a folder of checkpoint folders step0, step1, ... (different weights); returns root."""
    import json
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        folder = save_model_folder(root / f"step{step}", family, seed=step)
        (folder / "rtn_checkpoint.json").write_text(json.dumps({"step": step, "tokens_seen": step * 1024}))
    return root


def run_cli(*args, check=True):
    """Runs `rtn ARGS` in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "rtn.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"rtn {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def table_contents(path, ignore=("ingested_at", "created_at", "stage_seconds")):
    """Returns {table: sorted rows as tuples} of every base table, without wall-clock columns."""
    import duckdb
    con = duckdb.connect(str(path), read_only=True)
    out = {}
    tables = [r[0] for r in con.execute(
        "select table_name from information_schema.tables where table_type = 'BASE TABLE' order by 1").fetchall()]
    for table in tables:
        cols = [r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = ? order by ordinal_position",
            [table]).fetchall() if r[0] not in ignore]
        rows = con.execute(f"select {', '.join(cols)} from {table}").fetchall()
        out[table] = sorted((tuple("NaN" if v != v else v for v in row) for row in rows), key=repr)  # NaN != NaN
    con.close()
    return out
