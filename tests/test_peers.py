"""PEFT's peers (lora-mlp, SHiRA, Super-Tuning) as baselines at neft's trainable count,
through the one set-up that `neft train` (so `neft compare`) and `neft bench` share."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_model
from test_bench import resolve, skeleton, spec
from test_train import config

from neft.errors import NeftError
from neft.experiments.bench import measure, random_neurons
from neft.train import train
from neft.train.peers import PEERS, apply_peer, peer_config, target_modules


@pytest.mark.parametrize("method", PEERS)
def test_peers_train_their_targets_at_the_budget(method: str) -> None:
    model = make_model("llama")
    budget = 16 * 30  # 30 neurons of 16 values
    mlp_only = method.endswith("-mlp")
    per_rank = sum(o + i for o, i in target_modules(model, mlp_only).values())
    wrapped = apply_peer(model, method, budget, seed=0)
    trainable = {n: p.numel() for n, p in wrapped.named_parameters() if p.requires_grad}
    if mlp_only:
        assert all(".up_proj." in n or ".down_proj." in n for n in trainable)
    else:
        assert any("self_attn" in n for n in trainable)
        assert not any("lm_head" in n for n in trainable)
    # LoRA and SHiRA to the nearest rank (r x (in + out) per module), Super-Tuning closer
    slack = per_rank / 2 if not method.startswith("supertuning") else 0.01 * budget + 16
    assert abs(sum(trainable.values()) - budget) <= slack
    ids = torch.randint(3, 60, (2, 8))
    wrapped(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in wrapped.parameters() if p.requires_grad)


def test_peer_bad_input() -> None:
    with pytest.raises(NeftError, match="not one of PEFT's peers"):
        peer_config("dora", make_model("llama"), 100)
    with pytest.raises(NeftError, match="every entry of its target modules"):
        peer_config("supertuning-mlp", make_model("llama"), 10**7)
    with pytest.raises(NeftError, match="shira cannot be applied to this model: .*Conv1D"):
        apply_peer(make_model("gpt2"), "shira", 100)


def test_bench_peers_at_neft_count() -> None:
    neurons, rank = resolve("lora-r8", skeleton("tiny-random"))
    neft = measure(spec("neft", neurons, rank))
    for mode in ("lora-mlp", "shira-mlp", "supertuning"):
        run = measure(spec(mode, neurons, rank))
        assert run["mode"] == mode and run["optimizer_state_bytes"] > 0 and run["adapter_bytes"]
        assert abs(run["trainable"] - neft["trainable"]) <= 0.1 * neft["trainable"], mode
    target = random_neurons(skeleton("tiny-random"), neurons, 0)
    assert target.num_parameters() == neft["trainable"]


def test_train_supertuning_mlp(tiny_model_dir, toy_data_dir, tmp_path, monkeypatch) -> None:
    """`neft train --method supertuning-mlp` at neft's count; the adapter is peft's, and
    names its base as an absolute path however the base was typed."""
    monkeypatch.chdir(os.path.dirname(tiny_model_dir))
    summary = train(config(os.path.basename(tiny_model_dir), toy_data_dir, tmp_path,
                           method="supertuning-mlp", max_steps=2, eval_steps=2))
    assert summary["global_step"] == 2
    assert abs(summary["trainable_parameters"] - 6 * 16) <= 2
    assert (tmp_path / "adapter_model.safetensors").is_file()
    recorded = json.loads((tmp_path / "adapter_config.json").read_text())
    assert recorded["base_model_name_or_path"] == os.path.abspath(tiny_model_dir)
