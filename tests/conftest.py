"""Tiny random-initialised models of several architectures (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

VOCAB = 64
# The core tests also run on a GPU and in low precision: scripts/gpu_check.sh sets these.
DEVICE = torch.device(os.environ.get("NEFT_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("NEFT_TEST_DTYPE", "float32"))
TOL = ({"rtol": 1e-5, "atol": 1e-5} if DTYPE == torch.float32
       else {"rtol": 5e-2, "atol": 5e-2})


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


def make_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype | None = None):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_configs()[arch])
    return model.to(device=DEVICE, dtype=dtype or DTYPE).eval()


def make_batch(seed: int = 0, batch: int = 2, length: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator).to(DEVICE)


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


# ----------------------------------------------------------------------------- saved tiny model

TRANSLATIONS = [(f"the {a} {b} file", f"die {a} {b} Datei") for a in ("red", "blue", "old", "new")
                for b in ("small", "large", "empty", "open", "shared", "local", "remote", "hidden")]


def make_bpe_tokenizer(vocab_size: int = 320):
    """A byte-level BPE trained in memory on the toy corpus: any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [text for pair in TRANSLATIONS for text in pair]
    corpus += ["Translate the following text from English to German."]
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama + tokenizer saved like a hub checkpoint, for `load_model(path)`."""
    tokenizer = make_bpe_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                      intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """train/dev/test JSONL of toy en->de translations."""
    import json

    path = tmp_path_factory.mktemp("toy-data")
    rows = [{"id": str(i), "src_lang": "en", "tgt_lang": "de", "source": s, "target": t}
            for i, (s, t) in enumerate(TRANSLATIONS)]
    splits = {"train": rows[:24], "dev": rows[24:28], "test": rows[28:]}
    for split, records in splits.items():
        with open(path / f"{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)
