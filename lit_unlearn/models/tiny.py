"""The tiny Llama-style default model: a few million parameters, trains on a laptop CPU."""
from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 344,
    max_position_embeddings: int = 256,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> LlamaConfig:
    """A Llama config small enough to memorise the builtin data in minutes on two CPU cores."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (deterministic for a given seed)."""
    import torch

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides))
