"""neft.core.loading: model loading errors, the atomic embedded cache, and the real SmolLM2."""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neft.core import loading as neft_models
from neft.core.loading import (
    ensure_embedded_model,
    ensure_pad_token,
    load_model,
    model_name_for_metadata,
)
from neft.errors import NeftError


def tiny_tokenizer(pad: bool) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>",
                                   unk_token="[UNK]", pad_token="</s>" if pad else None)


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "a/b/c", "~/no-such"])
def test_missing_path_is_a_neft_error(path):
    with pytest.raises(NeftError, match=r"does not exist: pass an existing model directory"):
        load_model(path)


def test_folder_without_config_is_a_neft_error(tmp_path):
    with pytest.raises(NeftError, match="has no config.json"):
        load_model(str(tmp_path))


def test_load_local_model_sets_pad_token(tmp_path):
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path)
    tiny_tokenizer(pad=False).save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert tokenizer.pad_token == "</s>" and loaded.generation_config.pad_token_id == 1
    with pytest.raises(NeftError, match="unknown dtype 'float33'"):
        load_model(str(tmp_path), dtype="float33")



def test_a_folder_without_tokenizer_files_is_refused_not_trained_on(tmp_path, toy_data_dir):
    """transformers builds an empty tokenizer for a folder that has none: every example
    would tokenize to nothing, and a run 'succeed' with a loss of 0. Refused in one line,
    before any output."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from neft.cli import main

    model = Qwen2ForCausalLM(Qwen2Config(  # Qwen2's tokenizer class builds an empty one
        vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(NeftError, match="encodes text to nothing"):
        load_model(str(tmp_path / "model"))
    assert main(["train", "--model", str(tmp_path / "model"), "--train_file", toy_data_dir,
                 "--num_neurons", "2", "--max_steps", "1",
                 "--output_dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    # a tokenizer_config.json with special tokens but no vocabulary encodes nothing either
    (tmp_path / "model" / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", '
        '"pad_token": "<pad>", "unk_token": "<unk>"}')
    with pytest.raises(NeftError, match="encodes text to nothing"):
        load_model(str(tmp_path / "model"))


def test_ensure_pad_token_keeps_an_existing_one():
    tokenizer = tiny_tokenizer(pad=True)
    tokenizer.pad_token = "[UNK]"
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "[UNK]"


def test_metadata_name_is_machine_independent():
    assert "SmolLM2-135M-Instruct" in model_name_for_metadata("smollm2")
    assert model_name_for_metadata("gpt2") == "gpt2"


def test_embedded_cache_is_built_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("NEFT_CACHE", str(tmp_path))
    monkeypatch.setattr(neft_models, "embedded_gguf_path", lambda: "unused.gguf")
    builds = []

    def failing_build(out_dir: str) -> None:
        open(os.path.join(out_dir, "config.json"), "w").close()
        raise KeyboardInterrupt  # interrupted half way

    monkeypatch.setattr(neft_models, "_build_embedded", failing_build)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded_model()
    assert os.listdir(tmp_path) == []  # no half cache, no temp dir left

    def build(out_dir: str) -> None:
        builds.append(out_dir)
        for name in ("config.json", "model.safetensors"):
            open(os.path.join(out_dir, name), "w").close()

    monkeypatch.setattr(neft_models, "_build_embedded", build)
    path = ensure_embedded_model()
    assert path == os.path.join(str(tmp_path), "smollm2-135m-instruct")
    assert ensure_embedded_model() == path and len(builds) == 1
    assert os.listdir(tmp_path) == ["smollm2-135m-instruct"]
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]


@pytest.mark.integration
def test_embedded_smollm2_loads_plain_and_runs():
    model, tokenizer = load_model("smollm2-135m")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
            config.vocab_size) == (30, 576, 1536, 49152)
    assert config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert getattr(config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None  # so Trainer will train it
    assert model.dtype == torch.float32
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"
