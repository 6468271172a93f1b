"""Trains the demo's tiny GPT-NeoX with a plain torch loop, saving checkpoints at Pythia-like steps.

Called by `rtn.demo.synthetic.ensure_demo`, which caches the result; to build into a folder directly:

    from rtn.demo.config import DemoConfig
    from rtn.demo.synthetic import build_demo
    build_demo(Path("demo/"), DemoConfig(train_steps=40))

Each checkpoint folder `step{N}/` holds the model and tokenizer (save_pretrained) and
rtn_checkpoint.json: {"step": N, "tokens_seen": N × batch_size × seq_len, "eval_loss": …}.
Everything is seeded, so the same config gives the same weights on the same machine.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GPTNeoXForCausalLM
from transformers.utils import logging as transformers_logging

from rtn.demo.config import DemoConfig, cache_key
from rtn.shapes import Shape, pythia_config

CHECKPOINT_INFO_FILE = "rtn_checkpoint.json"


def checkpoint_steps(train_steps: int, n_even: int) -> list[int]:
    """Returns Pythia-style steps: 0, 1, 2, 4, … below the first even step, then n_even evenly spaced up to train_steps."""
    even = sorted({max(1, round(train_steps * k / n_even)) for k in range(1, n_even + 1)})
    powers = [2**i for i in range(train_steps.bit_length()) if 2**i < even[0]]
    return [0] + sorted(set(powers) | set(even))


def train_checkpoints(out_dir: Path, config: DemoConfig, tokenizer, documents: list[str]) -> list[float]:
    """Returns the training loss of every update; writes step*/ checkpoint folders and training.json to `out_dir`."""
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    # One thread: these matrices are too small to gain much from two (≈ 1.3×), and when other
    # processes share the cores, spinning OpenMP threads made steps up to 7× slower (measured).
    torch.set_num_threads(1)
    try:
        losses = _train(out_dir, config, tokenizer, documents)
    finally:
        torch.set_num_threads(previous_threads)  # callers (tests, ingest) keep their own setting
    log = {
        "cache_key": cache_key(config),
        "config": asdict(config),
        "checkpoint_steps": checkpoint_steps(config.train_steps, config.n_even_checkpoints),
        "train_loss": losses,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "training.json").write_text(json.dumps(log), encoding="utf-8")
    return losses


def token_sequences(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """Returns token ids [n_sequences, seq_len]: the documents joined by <|endoftext|> (led by one), cut into rows."""
    eos = tokenizer.eos_token_id
    stream = [eos]
    for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + [eos]
    n_sequences = len(stream) // seq_len  # the ragged tail is dropped
    return torch.tensor(stream[: n_sequences * seq_len], dtype=torch.long).view(n_sequences, seq_len)


def _model_config(config: DemoConfig, tokenizer):
    if config.max_positions < config.seq_len:
        raise ValueError(f"max_positions={config.max_positions} must be ≥ seq_len={config.seq_len}")
    shape = Shape(config.d_model, config.n_layers, config.n_heads, config.d_mlp, len(tokenizer))
    return pythia_config(shape, config.max_positions, config.rotary_fraction, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _lr_factor(step: int, config: DemoConfig) -> float:
    """Returns the multiplier of lr for update `step` (1-based): linear warm-up, cosine decay to 0.1."""
    if step <= config.warmup_steps:
        return step / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _train(out_dir: Path, config: DemoConfig, tokenizer, documents: list[str]) -> list[float]:
    """Returns the training loss of every update, saving a checkpoint folder at each checkpoint step."""
    sequences = token_sequences(tokenizer, documents, config.seq_len)  # [n_sequences, seq_len]
    eval_batch = sequences[-config.eval_sequences:]  # [eval_sequences, seq_len], never trained on
    train_rows = sequences[: -config.eval_sequences]  # [n_train, seq_len]
    if len(train_rows) < config.batch_size:
        raise ValueError(f"corpus gives {len(train_rows)} training sequences, fewer than batch_size; "
                         "raise n_documents")

    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint drowns training's
    torch.manual_seed(config.seed)
    model = GPTNeoXForCausalLM(_model_config(config, tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))
    batch_order = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train_rows), generator=batch_order)
    cursor = 0
    save_at = set(checkpoint_steps(config.train_steps, config.n_even_checkpoints))
    _save_checkpoint(out_dir, model, tokenizer, eval_batch, step=0, config=config)

    losses: list[float] = []
    progress = tqdm(range(1, config.train_steps + 1), desc="training demo model", unit="step")
    for step in progress:
        if cursor + config.batch_size > len(order):  # next epoch, reshuffled
            order, cursor = torch.randperm(len(train_rows), generator=batch_order), 0
        batch = train_rows[order[cursor: cursor + config.batch_size]]  # [batch_size, seq_len]
        cursor += config.batch_size
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
        if step % 25 == 0:
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
        if step in save_at:
            _save_checkpoint(out_dir, model, tokenizer, eval_batch, step=step, config=config)
    return losses


def _save_checkpoint(out_dir: Path, model, tokenizer, eval_batch: torch.Tensor, step: int,
                     config: DemoConfig) -> None:
    """Writes out_dir/step{step}/: model, tokenizer, and rtn_checkpoint.json with tokens seen and eval loss."""
    model.eval()
    with torch.no_grad():
        eval_loss = model(input_ids=eval_batch, labels=eval_batch).loss.item()
    model.train()
    folder = out_dir / f"step{step}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"step": step, "tokens_seen": step * config.batch_size * config.seq_len,
            "eval_loss": round(eval_loss, 5)}
    (folder / CHECKPOINT_INFO_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")
