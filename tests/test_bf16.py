"""bfloat16 compute on the CPU: training under autocast keeps float32 deltas that move only
the selected neurons; evaluation under autocast stays within bf16's rounding of float32,
and drift of the base against itself is still exactly 0."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file

from neft.config import from_dict
from neft.data import load_records
from neft.evaluate import evaluate_model
from neft.experiments.compare.front import FrontMeasure
from neft.train import TrainConfig, train

TEXTS = ["the red file is open and shared with the remote host", "a new hidden file"]


def test_neft_trains_under_bf16_autocast_on_the_cpu(tiny_model_dir, toy_data_dir, tmp_path):
    config = from_dict(TrainConfig, dict(
        model=tiny_model_dir, train_file=toy_data_dir, output_dir=str(tmp_path), max_steps=3,
        eval_steps=3, logging_steps=1, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, learning_rate=1e-2, num_neurons=6, match_lora=None,
        scorer="random", max_length=64, bf16="true"))
    summary = train(config)
    assert summary["global_step"] == 3 and summary["best_eval_loss"] is not None
    deltas = [t for t in load_file(tmp_path / "adapter_model.safetensors").values()
              if t.is_floating_point()]
    assert deltas and all(t.dtype == torch.float32 for t in deltas)
    assert all(t.abs().sum() > 0 for t in deltas)


def test_bf16_evaluation_is_close_to_float32_and_base_drift_stays_zero(tiny_model_dir,
                                                                       toy_data_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = load_records(toy_data_dir, split="test", task="translation")
    scores = {}
    for bf16 in (False, True):
        result = evaluate_model(base, tokenizer, records, metrics="loss,drift", max_length=64,
                                base_model=base, drift_sets={"toy": TEXTS}, progress=False,
                                bf16=bf16)
        assert result["settings"]["bf16"] is bf16
        assert result["scores"]["drift_toy"] == 0.0
        scores[bf16] = result["scores"]["loss"]
    assert scores[True] != scores[False]  # it did compute in bf16
    assert scores[True] == pytest.approx(scores[False], rel=2e-2)
    assert next(base.parameters()).dtype == torch.float32


def test_front_points_compute_in_bf16_when_asked(tiny_model_dir, toy_data_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = load_records(toy_data_dir, split="test", task="translation")
    prompt = {"task": "translation", "template": "auto", "source_lang": "en",
              "target_lang": "de"}
    points = [FrontMeasure(tokenizer, records, prompt, 64, base, {"toy": TEXTS},
                           bf16=bf16)(base) for bf16 in (False, True)]
    assert points[0]["test_loss"] != points[1]["test_loss"]
    assert points[1]["test_loss"] == pytest.approx(points[0]["test_loss"], rel=2e-2)
    assert points[1]["drift"]["toy"]["kl"] == 0.0
