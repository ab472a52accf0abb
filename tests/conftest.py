"""Tiny random-initialised models of several architectures (no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

VOCAB = 64


def _configs() -> dict[str, transformers.PretrainedConfig]:
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama": transformers.LlamaConfig(hidden_size=16, intermediate_size=24,
                                          num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=2, **common),
        "gpt2": transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                        **common),
        "gpt_neox": transformers.GPTNeoXConfig(hidden_size=16, intermediate_size=24,
                                               num_hidden_layers=2, num_attention_heads=2,
                                               **common),
        "opt": transformers.OPTConfig(hidden_size=16, ffn_dim=24, num_hidden_layers=2,
                                      num_attention_heads=2, word_embed_proj_dim=16,
                                      max_position_embeddings=32, **common),
        "phi3": transformers.Phi3Config(hidden_size=16, intermediate_size=24,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, **common),
    }


ARCHITECTURES = tuple(_configs())


def make_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_configs()[arch])
    return model.to(dtype).eval()


def make_batch(seed: int = 0, batch: int = 2, length: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param
