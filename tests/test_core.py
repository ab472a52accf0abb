"""The engine: compact neuron deltas train exactly the selected neurons, save/load/merge
exactly, and agree with the paper's gradient-masking reference."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from conftest import DEVICE, DTYPE, TOL, make_batch, make_model

from neft import NeftConfig, NeftError, NeftModel, NeuronSet, find_neuron_groups, get_neft_model
from neft.core.layers import NeuronDeltaLayer


def pick_neurons(model: torch.nn.Module, per_group: int = 3, seed: int = 0) -> NeuronSet:
    """A few neurons from every preset group of the model (rows and columns)."""
    generator = torch.Generator().manual_seed(seed)
    mapping: dict[str, dict[str, list[int]]] = {}
    for group in find_neuron_groups(model):
        picked = torch.randperm(group.count, generator=generator)[:per_group] + group.start
        mapping.setdefault(group.module, {})[group.axis] = picked.tolist()
    return NeuronSet.from_mapping(mapping, model)


def train_steps(model: torch.nn.Module, steps: int = 3, lr: float = 1e-2,
                optimizer: str = "adamw") -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=0.1) if optimizer == "adamw"
           else torch.optim.SGD(params, lr=lr))
    model.train()
    for step in range(steps):
        ids = make_batch(seed=step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def logits(model: torch.nn.Module, seed: int = 99) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=make_batch(seed=seed)).logits


def selected_mask(neurons: NeuronSet, module: str, shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool, device=DEVICE)
    mask[neurons.get(module, "rows")] = True
    mask[:, neurons.get(module, "cols")] = True
    return mask


def logical(weight: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return weight.t() if type(module).__name__ == "Conv1D" else weight


def test_presets_find_in_rows_and_out_columns(arch: str) -> None:
    model = make_model(arch)
    groups = find_neuron_groups(model)
    assert [g.kind for g in groups] == ["up", "down"] * 2
    assert {g.layer for g in groups} == {0, 1}
    for group in groups:
        module = model.get_submodule(group.module)
        assert group.axis == ("rows" if group.kind == "up" else "cols")
        assert group.count == (64 if arch == "gpt2" else 24)
        if arch == "phi3" and group.kind == "up":
            assert group.start == group.count  # fused [gate; up]: up is the second half
        assert module is not None


def test_gate_rows_are_optional(caplog) -> None:
    groups = find_neuron_groups(make_model("llama"), include_gate=True)
    assert sorted({g.kind for g in groups}) == ["down", "gate", "up"]
    phi = find_neuron_groups(make_model("phi3"), include_gate=True)
    gate = [g for g in phi if g.kind == "gate"][0]
    assert (gate.module.endswith("gate_up_proj"), gate.start, gate.count) == (True, 0, 24)
    with caplog.at_level(logging.WARNING, logger="neft"):  # said, not silently ignored
        gpt2 = find_neuron_groups(make_model("gpt2"), include_gate=True)
    assert {g.kind for g in gpt2} == {"up", "down"}
    assert "include_gate: the MLP of GPT2LMHeadModel has no gate projection" in caplog.text


def test_unknown_architecture_says_how_to_name_modules() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(NeftError, match="target_modules="):
        find_neuron_groups(model)
    groups = find_neuron_groups(model, target_modules={"0": "rows", "2": "cols"})
    assert [(g.module, g.axis, g.count, g.neuron_params) for g in groups] == [
        ("0", "rows", 8, 4), ("2", "cols", 8, 4)]
    # both axes of one module; a module two patterns match counts once
    groups = find_neuron_groups(model, target_modules={"0": "rows+cols", r"\d": "rows"})
    assert [(g.module, g.axis) for g in groups] == [("0", "rows"), ("0", "cols"), ("2", "rows")]
    with pytest.raises(NeftError, match=r"'cols' \(input units\) or 'rows\+cols'"):
        find_neuron_groups(model, target_modules={"0": "both"})


def test_a_multimodal_model_offers_its_language_models_neurons_only() -> None:
    """Gemma 3 (4B and up) loads as Gemma3ForConditionalGeneration: its vision tower's MLPs
    never move in text training, so they are not candidates; the default selection runs
    on the composite config (special tokens on its text_config)."""
    import transformers

    from neft import select_neurons

    config = transformers.Gemma3Config(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=24,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=8, max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        mm_tokens_per_image=4, image_token_index=60, boi_token_index=61, eoi_token_index=62)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    groups = find_neuron_groups(model)
    assert [g.module for g in groups] == [f"model.language_model.layers.{i}.mlp.{m}"
                                          for i in (0, 1) for m in ("up_proj", "down_proj")]
    chosen = select_neurons(model, "random", neurons=20, progress=False)
    assert chosen.num_neurons() == 20 and set(chosen.modules()) <= {g.module for g in groups}

def test_routed_experts_are_named_as_left_out_and_a_wrapped_model_is_refused(caplog) -> None:
    import transformers

    config = transformers.Qwen2MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
        shared_expert_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    moe = transformers.AutoModelForCausalLM.from_config(config)
    with caplog.at_level(logging.WARNING, logger="neft"):
        groups = find_neuron_groups(moe)
    assert groups and all("shared_expert" in g.module for g in groups)
    assert "2 mixture-of-experts blocks" in caplog.text and "routed experts" in caplog.text
    from neft import select_neurons  # the default rule reads the shared expert's flat input

    data = [{"input_ids": row, "labels": row} for row in make_batch(batch=8).tolist()]
    assert select_neurons(moe, "random", neurons=8, data=data, progress=False
                          ).metadata["avoid_measured_on"] == "the task data"
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    with pytest.raises(NeftError, match="is a NeftModel already: select neurons on its base"):
        find_neuron_groups(neft)


def test_gradients_reach_exactly_the_selected_neurons(arch: str) -> None:
    model = make_model(arch)
    neurons = pick_neurons(model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons))
    ids = make_batch()
    neft(input_ids=ids, labels=ids).loss.backward()
    trainable = {n: p for n, p in neft.named_parameters() if p.requires_grad}
    assert all("neft_delta" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == neurons.num_parameters()
    assert all(p.grad is None for n, p in neft.named_parameters() if "neft_delta" not in n)
    for _, layer in neft.neft_layers():
        assert layer.base_layer.weight.grad is None
        for delta in (layer.neft_delta_rows, layer.neft_delta_cols):
            assert delta.requires_grad == bool(delta.numel())  # empty axes stay frozen
            if delta.numel():
                assert delta.grad.shape == delta.shape and delta.grad.abs().sum() > 0


def test_only_selected_weights_change_by_even_one_bit(arch: str) -> None:
    model = make_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    neurons = pick_neurons(model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons))
    train_steps(neft, optimizer="adamw")  # weight decay must not leak into frozen weights
    merged = neft.merge_and_unload()
    for name, value in merged.state_dict().items():
        module_path = name.rsplit(".", 1)[0]
        if module_path in neurons.modules() and name.endswith("weight"):
            module = merged.get_submodule(module_path)
            mask = selected_mask(neurons, module_path, tuple(logical(value, module).shape))
            diff = logical(value != before[name], module)
            trained = diff[mask].all() if DTYPE == torch.float32 else diff[mask].any()
            assert trained, f"{name}: a selected weight did not train"
            assert not diff[~mask].any(), f"{name}: an unselected weight changed"
        else:
            assert torch.equal(value, before[name]), f"{name} changed"


def test_save_load_gives_identical_logits(arch: str, tmp_path) -> None:
    neft = get_neft_model(make_model(arch), NeftConfig(neurons=pick_neurons(make_model(arch))))
    train_steps(neft)
    expected = logits(neft)
    neft.save_pretrained(tmp_path)
    loaded = NeftModel.from_pretrained(make_model(arch), tmp_path)
    assert torch.equal(logits(loaded), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = NeftModel.from_pretrained(make_model(arch), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())


def test_merge_matches_adapter_and_unmerge_restores_bits(arch: str) -> None:
    model = make_model(arch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    train_steps(neft)
    adapter_logits = logits(neft)
    neft.merge_adapter()
    torch.testing.assert_close(logits(neft), adapter_logits, **TOL)
    neft.unmerge_adapter()
    for name, value in neft.base_model.state_dict().items():
        if "neft_delta" not in name:
            assert torch.equal(value, base[name.replace(".base_layer.", ".")]), name
    merged = neft.merge_and_unload()
    assert not any(isinstance(m, NeuronDeltaLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged), adapter_logits, **TOL)


def test_disable_adapter_gives_base_logits(arch: str) -> None:
    base_logits = logits(make_model(arch))
    neft = get_neft_model(make_model(arch), NeftConfig(neurons=pick_neurons(make_model(arch))))
    train_steps(neft)
    assert not torch.allclose(logits(neft), base_logits)
    for merged in (False, True):
        if merged:
            neft.merge_adapter()
        with neft.disable_adapter():
            torch.testing.assert_close(logits(neft), base_logits, **TOL)
    torch.testing.assert_close(logits(neft), logits(neft.merge_and_unload()), **TOL)


@pytest.mark.parametrize("arch_name", ["llama", "gpt2", "phi3"])
def test_mask_mode_equals_compact_mode_for_sgd(arch_name: str) -> None:
    neurons = pick_neurons(make_model(arch_name))
    results = []
    for mode in ("compact", "mask"):
        neft = get_neft_model(make_model(arch_name), NeftConfig(neurons=neurons, mode=mode))
        train_steps(neft, steps=4, lr=0.5, optimizer="sgd")
        results.append(neft.merge_and_unload().state_dict())
    compact, mask = results
    for name in compact:
        torch.testing.assert_close(compact[name], mask[name], **TOL)
    assert any(not torch.equal(compact[n], make_model(arch_name).state_dict()[n])
               for n in compact)


def test_mask_mode_keeps_dense_gradients_but_masks_them() -> None:
    model = make_model("llama")
    neurons = pick_neurons(model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons, mode="mask"))
    ids = make_batch()
    neft(input_ids=ids, labels=ids).loss.backward()
    for path, layer in neft.neft_layers():
        grad = layer.base_layer.weight.grad
        assert grad is not None and grad.shape == layer.base_layer.weight.shape
        mask = selected_mask(neurons, path, tuple(grad.shape))
        assert not grad[~mask].any() and grad[mask].abs().sum() > 0
    trainable, _ = neft.get_nb_trainable_parameters()
    assert trainable == neurons.num_parameters()


def test_a_mask_mode_adapter_saves_as_deltas_and_turns_off(tmp_path, caplog) -> None:
    """The paper's mode trains whole weights in place, yet its adapter is the same compact
    file: loaded in compact mode it gives the same logits; disabled, the base's."""
    base_logits = logits(make_model("llama"))
    neurons = pick_neurons(make_model("llama"))
    neft = get_neft_model(make_model("llama"), NeftConfig(neurons=neurons, mode="mask"))
    train_steps(neft, optimizer="sgd")
    expected = logits(neft)
    with caplog.at_level(logging.WARNING, logger="neft"):
        with neft.disable_adapter():
            torch.testing.assert_close(logits(neft), base_logits, **TOL)
        torch.testing.assert_close(logits(neft), expected, **TOL)
        with pytest.raises(NeftError, match="cannot unmerge"):
            neft.unmerge_adapter()
        neft.save_pretrained(tmp_path)
    assert not caplog.records
    loaded = NeftModel.from_pretrained(make_model("llama"), tmp_path)
    torch.testing.assert_close(logits(loaded), expected, **TOL)
    # AdamW's weight decay moves the masked-off weights too: saying so, not hiding it
    train_steps(neft, optimizer="adamw")
    with caplog.at_level(logging.WARNING, logger="neft"):
        neft.save_pretrained(tmp_path / "decayed")
    assert "weight_decay=0" in caplog.text


def test_mask_mode_survives_copies_and_counts_a_frozen_load_as_untrainable(tmp_path) -> None:
    import copy
    import pickle

    neurons = pick_neurons(make_model("llama"))
    neft = get_neft_model(make_model("llama"), NeftConfig(neurons=neurons, mode="mask"))
    for clone in (copy.deepcopy(neft), pickle.loads(pickle.dumps(neft))):
        ids = make_batch()
        clone(input_ids=ids, labels=ids).loss.backward()
        for path, layer in clone.neft_layers():
            grad = layer.base_layer.weight.grad
            assert not grad[~selected_mask(neurons, path, tuple(grad.shape))].any()
    neft.save_pretrained(tmp_path)
    frozen = NeftModel.from_pretrained(make_model("llama"), tmp_path)
    assert frozen.get_nb_trainable_parameters()[0] == 0
    tied = make_model("gpt2")  # lm_head shares the embedding's weight
    with pytest.raises(NeftError, match="lm_head shares its weight .* mask mode would train"):
        get_neft_model(tied, NeftConfig(neurons={"lm_head": {"rows": [1]}}, mode="mask"))


def test_optimizer_state_is_the_selected_neurons_only() -> None:
    model = make_model("llama")
    neurons = pick_neurons(model, per_group=5)
    neft = get_neft_model(model, NeftConfig(neurons=neurons))
    params = [p for p in neft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params)
    ids = make_batch()
    neft(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    state_values = sum(t.numel() for s in opt.state.values() for t in s.values() if t.dim())
    assert state_values == 2 * neurons.num_parameters() == 2 * 4 * 5 * 16


def test_a_cast_after_a_forward_pass_still_saves_and_unloads() -> None:
    """The base weight holds W0 + D between passes, its original slices aside: a cast of
    the model casts those too (state_dict, unload and unmerge give the cast base)."""
    base = make_model("llama")
    expected = {k: v.to(torch.bfloat16) for k, v in base.state_dict().items()}
    neft = get_neft_model(make_model("llama"), NeftConfig(neurons=pick_neurons(base)))
    train_steps(neft)
    logits(neft)
    neft.to(torch.bfloat16)
    assert neft.state_dict()  # no dtype clash
    unloaded = neft.unload().state_dict()
    for name, tensor in expected.items():
        assert torch.equal(unloaded[name], tensor), name


@pytest.mark.parametrize("then", ["eval", "no_grad", "generate"])
def test_deltas_changed_through_data_are_seen_by_the_next_pass(then: str) -> None:
    """An update through ``.data`` (a hand-written SGD step) bumps no version counter; the
    first pass after ``model.eval()``, any NeftModel pass without gradients (an evaluation
    loop that never calls eval()) and generate() still see it."""
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    logits(neft)
    for param in neft.parameters():
        if param.requires_grad:
            param.data.normal_()
    if then == "eval":
        neft.eval()
    elif then == "generate":
        neft.generate(make_batch(), max_new_tokens=1, do_sample=False)
    # after generate(), read through the wrapped model: its pass checks nothing itself
    stale_free = logits(neft.base_model if then == "generate" else neft)
    for _, layer in neft.neft_layers():
        layer.sync_weight = False  # the fallback path adds x D^T itself, nothing cached
    torch.testing.assert_close(stale_free, logits(neft), **TOL)


def test_an_unloaded_model_has_no_adapter_to_save(tmp_path) -> None:
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    neft.merge_and_unload()
    with pytest.raises(NeftError, match="unloaded .* holds no deltas"):
        neft.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_base_with_fp32_deltas(dtype: torch.dtype) -> None:
    model = make_model("llama", dtype=dtype)
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    for _, layer in neft.neft_layers():
        assert layer.neft_delta_rows.dtype == torch.float32
        assert layer.base_layer.weight.dtype == dtype
    ids = make_batch()
    out = neft(input_ids=ids, labels=ids)
    assert out.logits.dtype == dtype
    out.loss.backward()
    assert all(p.grad is not None for p in neft.parameters() if p.requires_grad)


def test_delta_dtype_can_follow_the_base() -> None:
    model = make_model("llama", dtype=torch.bfloat16)
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model), delta_dtype=None))
    assert {layer.neft_delta_cols.dtype for _, layer in neft.neft_layers()} == {torch.bfloat16}


def test_autocast_and_gradient_checkpointing_reach_the_deltas() -> None:
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    neft.gradient_checkpointing_enable()
    neft.train()
    ids = make_batch()
    for context in (contextlib.nullcontext(), torch.autocast(DEVICE.type, dtype=torch.bfloat16)):
        with context:
            loss = neft(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad for p in neft.parameters() if p.requires_grad]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        neft.zero_grad()



def test_torch_compile_trains_the_same_deltas_without_recompiling() -> None:
    """Compiled training takes one graph, not one per optimizer step (the fast path's
    version stamps would be guarded on), and learns what eager training learns, also
    after an eager pass has written W0 + D into the base weight."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    base = make_model("llama")
    neurons = pick_neurons(base)
    eager = get_neft_model(base, NeftConfig(neurons=neurons))
    compiled = get_neft_model(make_model("llama"), NeftConfig(neurons=neurons))
    logits(compiled)  # eager: the base weight now holds W0 + D
    counter = CompileCounterWithBackend("aot_eager")
    compiled.forward = torch.compile(compiled.forward, backend=counter)
    train_steps(eager)
    train_steps(compiled)
    assert counter.frame_count == 2  # the first pass puts W0 back (once), then one graph
    torch.testing.assert_close(logits(compiled), logits(eager))
    for (_, a), (_, b) in zip(eager.neft_layers(), compiled.neft_layers(), strict=True):
        torch.testing.assert_close(a.neft_delta_rows, b.neft_delta_rows)
        torch.testing.assert_close(a.neft_delta_cols, b.neft_delta_cols)
    compiled.forward = type(compiled).forward.__get__(compiled)
    torch.testing.assert_close(logits(compiled), logits(eager))  # eager again: W0 + D synced

def test_works_inside_transformers_trainer(tmp_path) -> None:
    from transformers import Trainer, TrainingArguments

    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    rows = [{"input_ids": ids, "labels": ids, "unused": 1}
            for ids in make_batch(batch=8).tolist()]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-2,
                             per_device_train_batch_size=4, report_to=[], save_strategy="no",
                             logging_steps=1, use_cpu=DEVICE.type == "cpu")
    trainer = Trainer(model=neft, args=args, train_dataset=rows,
                      data_collator=lambda b: {k: torch.tensor([r[k] for r in b], device=DEVICE)
                                               for k in ("input_ids", "labels")})
    trainer.train()
    assert len([h for h in trainer.state.log_history if "loss" in h]) == 3
    assert any(layer.neft_delta_rows.abs().sum() > 0 for _, layer in neft.neft_layers())
    trainer.save_model(str(tmp_path / "whole"))  # a plain Trainer saves the wrapper whole
    with pytest.raises(NeftError, match="plain transformers Trainer saves a NeftModel whole"):
        NeftModel.from_pretrained(make_model("llama"), tmp_path / "whole")


def test_neuron_set_algebra_and_files(tmp_path) -> None:
    model = make_model("llama")
    a = NeuronSet.from_mapping({"model.layers.0.mlp.up_proj": {"rows": [3, 17, 3]},
                                "model.layers.0.mlp.down_proj": {"cols": [5]}}, model)
    b = NeuronSet.from_mapping({"model.layers.0.mlp.up_proj": {"rows": [17, 20]}}, model)
    assert a.to_mapping() == {"model.layers.0.mlp.up_proj": {"rows": [3, 17]},
                              "model.layers.0.mlp.down_proj": {"cols": [5]}}
    assert (a.num_neurons(), a.num_parameters()) == (3, 2 * 16 + 16)
    assert (a | b).to_mapping()["model.layers.0.mlp.up_proj"]["rows"] == [3, 17, 20]
    assert (a & b).to_mapping() == {"model.layers.0.mlp.up_proj": {"rows": [17]}}
    assert a.overlap(b) == pytest.approx(1 / 3) and a.jaccard(b) == pytest.approx(1 / 4)
    a.metadata["scorer"] = "hand"
    a.save(tmp_path / "a.safetensors")
    loaded = NeuronSet.load(tmp_path / "a.safetensors")
    assert loaded == a and loaded.metadata == {"scorer": "hand"}
    assert loaded.shapes == a.shapes
    assert list(tmp_path.iterdir()) == [tmp_path / "a.safetensors"]  # no temp files left
    numpy_rows = NeuronSet({"model.layers.0.mlp.up_proj": {"rows": torch.tensor([4, 2]).numpy()}})
    assert numpy_rows.to_mapping() == {"model.layers.0.mlp.up_proj": {"rows": [2, 4]}}


def test_sets_of_different_models_do_not_combine() -> None:
    """Their indices mean other neurons: refused by fingerprint or shape, and a combined
    set keeps the fingerprint that guards loading it onto another model."""
    from neft import select_neurons

    small = make_model("llama")
    a = select_neurons(small, "magnitude", neurons=4, progress=False)
    b = select_neurons(small, "random", neurons=4, progress=False)
    assert (a | b).metadata["base_fingerprint"] == a.metadata["base_fingerprint"]
    other = make_model("phi3")
    c = select_neurons(other, "magnitude", neurons=4, progress=False)
    for combine in (a.union, a.intersection, a.overlap):
        with pytest.raises(NeftError, match="neuron sets made on different models"):
            combine(c)
    shaped = NeuronSet({"model.layers.0.mlp.up_proj": {"rows": [1]}},
                       shapes={"model.layers.0.mlp.up_proj": (7, 5)})
    with pytest.raises(NeftError, match=r"up_proj is \[24, 16\] in one and \[7, 5\]"):
        a | shaped
    with pytest.raises(NeftError, match="no option 'step'; did you mean 'steps'"):
        select_neurons(small, "magnitude", neurons=4, step=3)


def test_bad_neurons_give_clear_errors(tmp_path) -> None:
    model = make_model("llama")
    cases = [
        ({"model.layers.0.mlp.up_prj": {"rows": [1]}}, "does not have.*did you mean"),
        ({"model.layers.0.mlp.up_proj": {"rows": [24]}}, "index 24 but the layer has only 24"),
        ({"model.layers.0.mlp.up_proj": {"diag": [1]}}, "axis 'diag'"),
        ({"model.layers.0.mlp.up_proj": {"rows": [-1]}}, "negative"),
        ({"model.layers.0.mlp.act_fn": {"rows": [1]}}, "not a linear layer"),
        ({}, "empty"),
        ({"model.layers.0.mlp.up_proj": {"rows": [1.7]}}, r"whole numbers .*not 1\.7"),
        ({"model.layers.0.mlp.up_proj": {"rows": [True]}}, "whole numbers .*not True"),
        ({"model.layers.0.mlp.up_proj": {"rows": [[1, 2], [3, 4]]}}, "whole numbers"),
        ({"model.layers.0.mlp.up_proj": {"rows": torch.tensor([[1, 2]])}}, "flat list"),
        ({"model.layers.0.mlp.up_proj": {"rows": torch.tensor([1.5])}}, "integer tensor"),
        ({"model.layers.0.mlp.up_proj": {"rows": 3}}, "list of neuron indices, not 3"),
        ({"model.layers.0.mlp.up_proj": {"rows": "3"}}, "list of neuron indices, not '3'"),
        ({"model.layers.0.mlp.up_proj": [3]}, "must map an axis to indices"),
    ]
    for mapping, message in cases:
        with pytest.raises(NeftError, match=message):
            get_neft_model(make_model("llama"), NeftConfig(neurons=mapping))
    with pytest.raises(NeftError, match="mode"):
        NeftConfig(neurons={}, mode="dense")
    with pytest.raises(NeftError, match="takes a NeftConfig, not dict"):
        get_neft_model(make_model("llama"), {"neurons": {}})
    broken = tmp_path / "broken.safetensors"
    pick_neurons(model).save(broken)
    broken.write_bytes(broken.read_bytes()[:-7])
    with pytest.raises(NeftError, match="truncated or corrupted"):
        NeuronSet.load(broken)


def test_adapter_for_another_base_model_is_refused(tmp_path) -> None:
    neft = get_neft_model(make_model("llama"), NeftConfig(neurons=pick_neurons(make_model())))
    neft.save_pretrained(tmp_path)
    with pytest.raises(NeftError, match="another base model"):
        NeftModel.from_pretrained(make_model("gpt2"), tmp_path)
    with pytest.raises(NeftError, match="does not exist"):
        NeftModel.from_pretrained(make_model("llama"), tmp_path / "missing")


def test_adapter_file_holds_only_indices_and_deltas(tmp_path) -> None:
    model = make_model("llama")
    neurons = pick_neurons(model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons))
    neft.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "adapter_model.safetensors")
    deltas = sum(t.numel() for k, t in tensors.items() if "::delta_" in k)
    indices = sum(t.numel() for k, t in tensors.items() if k.endswith(("::rows", "::cols")))
    assert deltas == neurons.num_parameters() and indices == neurons.num_neurons()
    assert NeuronSet.load(tmp_path / "adapter_model.safetensors") == neurons
