"""Tiny models built from configs and warehouses built from them, shared by the tests.

Tests are sorted by cost into folders, and marked by folder (pytest -m unit|integration|acceptance):
    tests/unit         seconds: SQL on hand-written rows, tiny models from configs, no model ingest
    tests/integration  ingests tiny models, runs the CLI, the app (AppTest) and analyses
    tests/acceptance   the demo end to end, the wheel in a fresh venv, a real browser, a real model
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import rtn_wheel
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 97        # odd on purpose: nothing may assume a multiple of a block size


def _exact_rms_norm(self, x):
    # HF's RMSNorm computes in float32 even in a float64 model, which would cap the float64
    # oracle at ~1e-7; the reference keeps the input's precision.
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def tiny_model(family: str, dtype=torch.float32, seed: int = 0, vocab: int = VOCAB, n_layers: int = 2):
    """Returns a random tiny causal LM of a family with `n_layers` blocks, in eval mode."""
    torch.manual_seed(seed)
    if family == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                               intermediate_size=72, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, initializer_range=0.2)
        model = GPTNeoXForCausalLM(config)
    elif family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4, n_inner=72, n_positions=64,
                            bos_token_id=0, eos_token_id=0, initializer_range=0.2)
        model = GPT2LMHeadModel(config)
    elif family == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
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


def run_cli(*args, check=True, cwd=None, preexec_fn=None, env: dict | None = None):
    """Runs `rtn ARGS` in a subprocess (in folder `cwd`, calling `preexec_fn` first there, with `env` added to the
    environment); returns the CompletedProcess."""
    import os
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "rtn.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=preexec_fn, env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"rtn {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def done_checkpoints(path) -> int:
    """Returns how many checkpoints a warehouse marks done (0 while it is missing or a writer holds its lock)."""
    import duckdb
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return 0
    try:
        return con.execute("select count(*) from checkpoints where status = 'done'").fetchone()[0]
    except duckdb.Error:
        return 0
    finally:
        con.close()


def kill_cli_at_line(args, path, marker: str, timeout: float = 300) -> int:
    """Starts `rtn ARGS`, SIGKILLs it as soon as it prints a stderr line holding `marker` (or after `timeout`, or once
    it ended); returns how many checkpoints the warehouse at `path` marks done then.

    A line the process prints right after a commit lets the kill land between two commits: polling the warehouse
    instead misses commits that follow each other while the writer holds the file."""
    import signal
    import subprocess
    import sys
    import threading
    proc = subprocess.Popen([sys.executable, "-m", "rtn.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stderr:
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        proc.stderr.close()
    return done_checkpoints(path)


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


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(config, items):
    """Marks every test with its folder's tier."""
    for item in items:
        tier = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


FILLED_RUN = "tiny"
_FILLED: dict[str, Path] = {}


def build_filled_warehouse(root: Path) -> Path:
    """Returns a warehouse of one tiny run (steps 0 and 8) with every table, view and analysis filled (built once)."""
    if "path" not in _FILLED:
        from rtn.analyses import run_analyses
        from rtn.ingest.config import IngestConfig
        from rtn.ingest.pipeline import ingest
        ckpts = save_checkpoint_family(root / "ckpts", steps=(0, 8))
        corpus = root / "corpus.txt"
        corpus.write_text("\n".join(make_corpus_docs(120)) + "\n")
        path = root / "filled.duckdb"
        config = IngestConfig(model=str(ckpts), checkpoints="all", corpus=str(corpus), run=FILLED_RUN, tokens=512,
                              seq_len=32, n_samples=96, head_layers=1)
        ingest(config, path, log=lambda *_: None)
        run_analyses(path, FILLED_RUN, log=lambda *_: None)
        _FILLED.update(path=path, corpus=corpus)
    return _FILLED["path"]


def filled_corpus() -> Path:
    """Returns the corpus the filled warehouse was built from (after build_filled_warehouse)."""
    return _FILLED["corpus"]


@pytest.fixture(scope="session")
def filled_warehouse(tmp_path_factory) -> Path:
    return build_filled_warehouse(tmp_path_factory.mktemp("filled_warehouse"))


# ---- acceptance: rtn installed from its wheel into a fresh venv ----------------------------------

@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> Path:
    """Returns a fresh venv with torch (the CPU file) and rtn's wheel installed, not editable."""
    root = tmp_path_factory.mktemp("wheel")
    isolation = ["--no-build-isolation"] if rtn_wheel.has_setuptools() else []   # else pip fetches setuptools itself
    rtn_wheel.run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, str(rtn_wheel.REPO), "-w", root / "dist")
    wheel = next((root / "dist").glob("rtn-*.whl"))
    venv = root / "venv"
    rtn_wheel.run(sys.executable, "-m", "venv", venv)
    rtn_wheel.run(venv / "bin" / "pip", "install", "-q", "torch==2.13.0", timeout=1800)
    rtn_wheel.run(venv / "bin" / "pip", "install", "-q", wheel, timeout=1800)
    return venv


@pytest.fixture(scope="session")
def demo_warehouse(wheel_venv, tmp_path_factory) -> Path:
    """Returns the demo warehouse built by the wheel's `rtn demo` in a folder of shadowing modules (the trained
    model comes from the cache, $RTN_CACHE or ~/.cache/rtn; a cold cache trains it first)."""
    folder = tmp_path_factory.mktemp("demo")
    for shadow in rtn_wheel.SHADOWS:
        (folder / shadow).parent.mkdir(parents=True, exist_ok=True)
        (folder / shadow).write_text("raise RuntimeError(\"the user's module was imported instead of rtn's\")\n")
    demo = rtn_wheel.run(wheel_venv / "bin" / "rtn", "demo", "--warehouse", "demo.duckdb", cwd=folder, timeout=1800)
    (folder / "demo.out").write_text(demo.stdout)
    return folder / "demo.duckdb"
