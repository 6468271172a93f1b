"""Pythia-layout GPT-NeoX models built from a config: the demo trains one, the benchmark times random ones.

    from rtn.shapes import SHAPES, pythia_config, random_model
    model = random_model(SHAPES["70m"], torch.device("cpu"))
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    d_model: int     # residual width
    n_layers: int    # transformer blocks
    n_heads: int     # attention heads per block
    d_mlp: int       # MLP neurons per block: the neurons ablated
    vocab: int       # unembedding rows


SHAPES = {
    "tiny": Shape(64, 2, 4, 96, 1009),           # for the tests: seconds on a CPU, sizes off every block size
    "demo": Shape(64, 2, 4, 256, 1009),          # the demo model's layer: its random-weights null family
    "70m": Shape(512, 6, 8, 2048, 50304),        # Pythia-70M
    "410m": Shape(1024, 24, 16, 4096, 50304),    # Pythia-410M
    "1.4b": Shape(2048, 24, 16, 8192, 50304),    # Pythia-1.4B
}


def pythia_config(shape: Shape, max_positions: int, rotary_fraction: float = 0.25, initializer_range: float = 0.02,
                  bos_token_id: int = 0, eos_token_id: int = 0, pad_token_id: int | None = None):
    """Returns the GPTNeoXConfig of a Pythia-layout model (parallel residual, partial rotary, untied unembedding)."""
    from transformers import GPTNeoXConfig  # transformers imports torch: only when a model is built
    return GPTNeoXConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        intermediate_size=shape.d_mlp,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": rotary_fraction},
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def random_model(shape: Shape, device, seed: int = 0):
    """Returns a random Pythia-layout GPT-NeoX of `shape` on `device`, in eval mode.

    Weights are N(0, 1/d_model): logits then spread by about one nat, like a trained model's,
    so ablation effects are large enough for the agreement check to mean something.
    """
    import torch
    from transformers import GPTNeoXForCausalLM
    config = pythia_config(shape, max_positions=2048, initializer_range=shape.d_model ** -0.5)
    torch.manual_seed(seed)
    with torch.device(device):   # initialise where it will run: a 1.4b model is slow to fill on a CPU
        model = GPTNeoXForCausalLM(config)
    return model.eval()
