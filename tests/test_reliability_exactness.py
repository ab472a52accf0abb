"""Exactness beyond test_core: merge/unmerge on low-precision bases, the merged weights'
values, lossless adapter round trips (file to file), and selection that is identical
from run to run whatever else the process did with its random generators.

(test_core already covers fp32 merge/unmerge per architecture, save/load logits and
disable_adapter; test_select covers the random scorer's seed.)
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, make_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from neft import NeftConfig, NeftModel, NeuronSet, get_neft_model
from neft.cli import main
from neft.core.layers import NeuronDeltaLayer


def trained(dtype: torch.dtype = torch.float32, delta_dtype: str | None = "float32",
            mode: str = "compact") -> NeftModel:
    """A llama with a few rows and columns per MLP, trained a few AdamW steps."""
    model = make_model("llama", dtype=dtype)
    neurons = NeuronSet.from_mapping({
        "model.layers.0.mlp.up_proj": {"rows": [1, 5, 9]},
        "model.layers.1.mlp.down_proj": {"cols": [0, 7, 23]},
        "model.layers.1.mlp.gate_proj": {"rows": [2], "cols": [3, 4]},  # a row AND columns
    }, model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons, delta_dtype=delta_dtype, mode=mode))
    params = [p for p in neft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    neft.train()
    for step in range(3):
        ids = make_batch(seed=step)
        neft(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return neft.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=make_batch(seed=42)).logits.float()


def base_weights(neft: NeftModel) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer.", "."): v.clone()
            for k, v in neft.base_model.state_dict().items() if "neft_" not in k}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_then_unmerge_restores_every_bit_in_any_dtype(dtype) -> None:
    base = {k: v.clone() for k, v in make_model("llama", dtype=dtype).state_dict().items()}
    neft = trained(dtype)
    unmerged = logits(neft)
    for _ in range(2):  # twice: a second merge must not add the deltas again
        neft.merge_adapter()
        merged = logits(neft)
        neft.unmerge_adapter()
        after = base_weights(neft)
        assert after.keys() == base.keys()
        for name, value in base.items():
            assert torch.equal(after[name], value), name
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(merged, unmerged, **tolerance)
    assert not torch.allclose(logits(neft.unload()), unmerged)  # the deltas did something


def test_merged_weights_are_base_plus_deltas_exactly() -> None:
    neft = trained()
    base = {k: v.clone() for k, v in make_model("llama").state_dict().items()}
    layers = dict(neft.neft_layers())
    deltas = {path: [d.clone() for d in layer.get_deltas()] for path, layer in layers.items()}
    merged = neft.merge_and_unload().state_dict()
    assert not any(isinstance(m, NeuronDeltaLayer) for m in neft.base_model.modules())
    for path, layer in layers.items():
        rows, cols = layer.neft_rows, layer.neft_cols
        delta_rows, delta_cols = deltas[path]
        weight, before = merged[f"{path}.weight"], base[f"{path}.weight"]
        expected = before.clone()
        expected[:, cols] = before[:, cols] + delta_cols
        expected[rows] = before[rows] + delta_rows
        if rows.numel() and cols.numel():  # entries in both get both deltas
            expected[rows[:, None], cols] = (before[:, cols] + delta_cols)[rows] + (
                delta_rows[:, cols])
        assert torch.equal(weight, expected), path
    untouched = {k for k in base if k.rsplit(".", 1)[0] not in layers}
    assert untouched and all(torch.equal(merged[k], base[k]) for k in untouched)


@pytest.mark.parametrize("delta_dtype", ["float32", None])
def test_adapter_round_trip_is_lossless(delta_dtype, tmp_path) -> None:
    neft = trained(torch.bfloat16, delta_dtype=delta_dtype)
    neft.save_pretrained(tmp_path / "a")
    loaded = NeftModel.from_pretrained(make_model("llama", dtype=torch.bfloat16), tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")
    first = load_file(tmp_path / "a" / "adapter_model.safetensors")
    second = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype and torch.equal(first[key], second[key])
    wanted = torch.float32 if delta_dtype else torch.bfloat16
    assert {t.dtype for k, t in first.items() if "::delta_" in k} == {wanted}
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "b" / "adapter_model.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()
    assert torch.equal(logits(loaded), logits(neft))


def test_merge_command_writes_the_merged_weights_bit_for_bit(tiny_model_dir, toy_data_dir,
                                                             tmp_path) -> None:
    from neft.config import from_dict
    from neft.train import TrainConfig, train

    adapter = tmp_path / "adapter"
    train(from_dict(TrainConfig, dict(
        model=tiny_model_dir, train_file=f"{toy_data_dir}/train.jsonl", output_dir=str(adapter),
        method="random", num_neurons=6, max_steps=2, max_length=64, learning_rate=1e-2,
        per_device_train_batch_size=4)))
    assert main(["merge", "--adapter", str(adapter), "--output_dir", str(tmp_path / "m")]) == 0
    written = load_file(tmp_path / "m" / "model.safetensors")
    in_memory = NeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          adapter).merge_and_unload().state_dict()
    assert written.keys() <= in_memory.keys()
    assert all(torch.equal(written[k], in_memory[k]) for k in written)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    changed = {k for k in written if not torch.equal(written[k], base[k])}
    assert changed == {f"{m}.weight" for m in NeuronSet.load(adapter / "adapter_model.safetensors"
                                                              ).modules()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


SCORERS = [("random", []), ("magnitude", []), ("gradient", ["--data", "{data}"]),
           ("probe", ["--data", "{data}", "--steps", "2"]),
           ("fast-probe", ["--data", "{data}", "--steps", "2"])]


@pytest.mark.parametrize("scorer, extra", SCORERS, ids=[s for s, _ in SCORERS])
def test_selection_is_identical_across_runs(scorer, extra, tiny_model_dir, toy_data_dir,
                                            tmp_path) -> None:
    def select(name: str, seed: int = 5) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        argv = ["select", "--model", tiny_model_dir, "--scorer", scorer, "--neurons", "10",
                "--seed", str(seed), "--max_length", "64", "--output", str(out), "--quiet",
                *[a.format(data=toy_data_dir) for a in extra]]
        assert main(argv) == 0
        return load_file(out)

    first = select("a.safetensors")
    torch.manual_seed(12345)  # whatever else the process did with the global generators
    torch.rand(100)
    second = select("b.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert sum(t.numel() for t in first.values()) == 10
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "b.safetensors"), "pt") as b:
        assert a.metadata()["shapes"] == b.metadata()["shapes"]
    if scorer == "random":
        other = select("c.safetensors", seed=6)
        assert any(not torch.equal(first[k], other.get(k, torch.empty(0))) for k in first)


@pytest.mark.parametrize("axes", [{"rows": [3, 5]}, {"cols": [1, 2]}, {"rows": [3], "cols": [4]}],
                         ids=["rows", "cols", "both"])
def test_tied_lm_head_never_writes_into_the_shared_embedding(axes, tmp_path) -> None:
    """GPT-2 (like SmolLM2) ties lm_head to the input embedding. The fast path would write
    W0 + D into that one tensor, so the embedding changed too and two forwards differed;
    merge must also give what the adapter computes, saved and loaded again."""
    model = make_model("gpt2", dtype=torch.float32)
    assert model.lm_head.weight is model.transformer.wte.weight
    embedding = model.transformer.wte.weight.detach().clone()
    neft = get_neft_model(model, NeftConfig(neurons={"lm_head": axes}))
    for _, layer in neft.neft_layers():
        for delta in layer.get_deltas():
            delta.normal_()
    first = logits(neft)
    assert torch.equal(logits(neft), first)  # the second forward is the first
    assert torch.equal(model.transformer.wte.weight, embedding)
    neft.save_pretrained(tmp_path / "adapter")
    neft.merge_adapter()
    torch.testing.assert_close(logits(neft), first)
    neft.unmerge_adapter()
    assert model.lm_head.base_layer.weight is model.transformer.wte.weight  # tied again
    assert torch.equal(model.transformer.wte.weight, embedding)
    merged = neft.merge_and_unload()
    torch.testing.assert_close(logits(merged), first)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded), first)
    loaded = NeftModel.from_pretrained(make_model("gpt2", dtype=torch.float32),
                                       tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded), first)


def test_a_verified_pass_rewrites_nothing_when_the_weight_already_holds_w0_plus_d() -> None:
    """Grad-enabled passes check that the base weight holds W0 + D and write only when it
    does not; a module with a selected row and selected columns (their shared entries get
    both deltas) is no exception, so steady passes leave the weight alone."""
    neft = trained()
    layer = neft.base_model.get_submodule("model.layers.1.mlp.gate_proj")  # a row and columns
    ids = make_batch(seed=7)
    neft(input_ids=ids, labels=ids).loss.backward()  # writes W0 + D for the current deltas
    version = layer.base_layer.weight._version
    for _ in range(2):
        neft(input_ids=ids, labels=ids).loss.backward()
    assert layer.base_layer.weight._version == version
