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
