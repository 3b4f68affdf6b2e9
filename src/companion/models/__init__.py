"""Models: a tiny GPT with a KV cache, and batched samplers over its sequences."""

from .gpt import GPT, GPTConfig, KVCache, pick_device

__all__ = ["GPT", "GPTConfig", "KVCache", "pick_device"]
