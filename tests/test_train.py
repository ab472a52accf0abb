"""`neft train` on a tiny saved model: every method trains exactly what it should,
outputs are complete, interrupted runs resume to the same adapter, runs never mix."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from neft import NeftError, NeftModel
from neft.cli import main as cli_main
from neft.config import from_dict
from neft.train import TrainConfig, train


def config(tiny_model_dir: str, toy_data_dir: str, output_dir, **options) -> TrainConfig:
    values = dict(model=tiny_model_dir, train_file=toy_data_dir, output_dir=str(output_dir),
                  max_steps=4, eval_steps=2, logging_steps=1, per_device_train_batch_size=4,
                  per_device_eval_batch_size=4, learning_rate=1e-2, num_neurons=6,
                  match_lora=None, scorer="random", max_length=64)
    values.update(options)
    return from_dict(TrainConfig, values)


def base_state(tiny_model_dir: str) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()


@pytest.mark.parametrize("method", ["neft", "random"])
def test_neft_methods_write_an_adapter_that_trains_only_its_neurons(
        method, tiny_model_dir, toy_data_dir, tmp_path) -> None:
    summary = train(config(tiny_model_dir, toy_data_dir, tmp_path, method=method))
    assert summary["global_step"] == 4 and summary["trainable_parameters"] == 6 * 16
    assert summary["best_eval_loss"] is not None
    for name in ("adapter_config.json", "adapter_model.safetensors", "training_log.json",
                 "loss_curve.png", "neft_run.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert [h["step"] for h in log if "eval_loss" in h] == [2, 4]
    base = base_state(tiny_model_dir)
    model = NeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      tmp_path)
    merged = model.merge_and_unload().state_dict()
    changed = {k for k in merged if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith(("up_proj.weight", "down_proj.weight")) for k in changed)
    changed_values = sum(int((merged[k] != base[k]).sum()) for k in changed)
    assert changed_values == 6 * 16


def test_baselines_train_what_they_should(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    base = base_state(tiny_model_dir)
    inout = train(config(tiny_model_dir, toy_data_dir, tmp_path / "inout", method="ft-inout"))
    assert inout["trainable_parameters"] == 2 * 2 * 24 * 16
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "inout").state_dict()
    changed = {k for k in tuned if not torch.equal(tuned[k], base[k])}
    assert changed == {f"model.layers.{i}.mlp.{m}.weight" for i in (0, 1)
                       for m in ("up_proj", "down_proj")}

    full = train(config(tiny_model_dir, toy_data_dir, tmp_path / "full", method="full"))
    assert full["trainable_parameters"] == sum(v.numel() for v in base.values())

    lora = train(config(tiny_model_dir, toy_data_dir, tmp_path / "lora", method="lora",
                        lora_r=2))
    weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert lora["trainable_parameters"] == sum(t.numel() for t in weights.values())
    assert all("lm_head" not in k for k in weights)


class KillAt(TrainerCallback):
    """Sends this process SIGTERM at a given step, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_and_resume_ends_identical(tiny_model_dir, toy_data_dir, tmp_path,
                                                       monkeypatch) -> None:
    options = dict(method="random", eval_file=None, train_split=None, eval_steps=None,
                   save_steps=2, max_steps=5, per_device_train_batch_size=2)
    straight = tmp_path / "straight"
    train(config(tiny_model_dir, f"{toy_data_dir}/train.jsonl", straight, **options))

    import neft.train

    original = neft.train.NeftTrainer.__init__

    def with_kill(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillAt(3)]
        original(self, *args, **kwargs)

    monkeypatch.setattr(neft.train.NeftTrainer, "__init__", with_kill)
    broken = tmp_path / "broken"
    summary = train(config(tiny_model_dir, f"{toy_data_dir}/train.jsonl", broken, **options))
    assert summary["interrupted"] and summary["global_step"] == 4
    assert (broken / "checkpoint-4").is_dir()
    assert not (broken / "adapter_model.safetensors").exists()
    monkeypatch.setattr(neft.train.NeftTrainer, "__init__", original)

    with pytest.raises(NeftError, match="already holds a run"):
        train(config(tiny_model_dir, f"{toy_data_dir}/train.jsonl", broken, **options))
    with pytest.raises(NeftError, match="option learning_rate differs"):
        train(config(tiny_model_dir, f"{toy_data_dir}/train.jsonl", broken, resume=True,
                     **{**options, "learning_rate": 1e-3}))
    resumed = train(config(tiny_model_dir, f"{toy_data_dir}//train.jsonl", f"{broken}/",
                           resume=True, **options))  # the same paths, typed otherwise
    assert resumed["global_step"] == 5
    expected = load_file(straight / "adapter_model.safetensors")
    actual = load_file(broken / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_cli_flags_yaml_and_bad_input(tiny_model_dir, toy_data_dir, tmp_path, capsys) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"model: {tiny_model_dir}\ntrain_file: {toy_data_dir}\n"
                         "method: random\nnum_neurons: 4\nmatch_lora: null\nmax_steps: 2\n"
                         "eval_steps: 2\nmax_length: 64\n")
    out = tmp_path / "cli"
    assert cli_main(["train", "--config", str(yaml_file), "--output_dir", str(out),
                     "--per_device_train_batch_size", "2"]) == 0
    run = json.loads((out / "neft_run.json").read_text())
    assert run["per_device_train_batch_size"] == 2 and run["num_neurons"] == 4
    assert run["result"]["global_step"] == 2

    yaml_file.write_text("learning_rte: 0.1\n")
    assert cli_main(["train", "--config", str(yaml_file)]) == 2
    assert "unknown option 'learning_rte'; did you mean 'learning_rate'?" in capsys.readouterr().err
    assert cli_main(["train", "--train_file", toy_data_dir, "--method", "dora"]) == 2
    assert "method 'dora' is not known" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli_main(["train", "--model", tiny_model_dir, "--train_file", toy_data_dir,
                     "--output_dir", str(tmp_path / "other")]) == 2
    assert "holds no neft run" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_merge_command_writes_a_plain_model_with_adapter_logits(tiny_model_dir, toy_data_dir,
                                                                 tmp_path, capsys) -> None:
    adapter = tmp_path / "adapter"
    train(config(tiny_model_dir, toy_data_dir, adapter, method="random", max_steps=2))
    merged_dir = tmp_path / "merged"
    assert cli_main(["merge", "--adapter", str(adapter), "--output_dir", str(merged_dir)]) == 0
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    wrapped = NeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        adapter)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, wrapped(input_ids=ids).logits)
    assert cli_main(["merge", "--adapter", str(adapter), "--output_dir", str(merged_dir)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_torch_compile_reaches_the_trainer(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    """`--torch_compile` is Trainer's; the layers compile without per-step recompiles
    (test_core)."""
    from neft.train.trainer import training_arguments

    args = training_arguments(config(tiny_model_dir, toy_data_dir, tmp_path,
                                     torch_compile=True), has_eval=False)
    assert args.torch_compile and args.torch_compile_backend == "inductor"
