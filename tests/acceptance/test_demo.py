"""The embedded demo as `rtn demo` builds it: the default model learns what the corpus plants.

    pytest tests/acceptance/test_demo.py      # trains the default demo model unless it is cached (~1.5 min)
"""
from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtn.demo.synthetic import ensure_demo
from rtn.demo.train import CHECKPOINT_INFO_FILE


def test_default_demo_learns_the_planted_pairs():
    # rtn's cache, as `rtn demo` uses it: the demo warehouse fixture and test_planted read the same model, so a cold
    # cache (CI's) trains it once for all three, with this code
    assets = ensure_demo()
    root = assets.checkpoint_dir
    last = root / f"step{assets.config.train_steps}"
    first_loss = json.loads((root / "step0" / CHECKPOINT_INFO_FILE).read_text())["eval_loss"]
    final_loss = json.loads((last / CHECKPOINT_INFO_FILE).read_text())["eval_loss"]
    assert final_loss < first_loss - 2.0
    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(last).eval()
    structure = json.loads((root / "synthetic.json").read_text())
    pairs, prefix = structure["planted_pairs"], " ".join(structure["words_by_rank"][:3]) + " . "
    contexts = tokenizer([prefix + trigger for trigger, _ in pairs], return_tensors="pt")["input_ids"]
    targets = torch.tensor(tokenizer.convert_tokens_to_ids([target for _, target in pairs]))
    with torch.no_grad():
        probs = model(contexts).logits[:, -1].softmax(-1)[torch.arange(len(pairs)), targets]  # [n_pairs]
    assert probs.mean() > 0.5
