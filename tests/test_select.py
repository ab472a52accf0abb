"""Neuron selection: budgets, scorers, quotas, set operations and the `neft select` command."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from neft.cli import main
from neft.core.neuron_set import NeuronSet
from neft.core.neurons import count_parameters, find_neuron_groups, model_fingerprint
from neft.errors import NeftError
from neft.select import (
    intersect_sets,
    linear_shapes,
    lora_parameters,
    resolve_budget,
    score_neurons,
    select_neurons,
    transfer_set,
    union_sets,
)
from neft.select.budget import allocate

LLAMA_UP = "model.layers.1.mlp.up_proj"
LLAMA_DOWN = "model.layers.0.mlp.down_proj"
GPT2_FC = "transformer.h.1.mlp.c_fc"
GPT2_PROJ = "transformer.h.0.mlp.c_proj"
# (architecture, {module: (axis, changed indices)})
CHANGES = {
    "llama": {LLAMA_UP: ("rows", [3, 7, 20]), LLAMA_DOWN: ("cols", [0, 5])},
    "gpt2": {GPT2_FC: ("rows", [1, 60]), GPT2_PROJ: ("cols", [2, 33, 40])},
}


def tuned_copy(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """A 'fine-tuned' copy whose chosen neurons were changed by hand (Conv1D aware)."""
    tuned = make_model(arch)
    tuned.load_state_dict(model.state_dict())
    modules = dict(tuned.named_modules())
    with torch.no_grad():
        for module, (axis, idx) in CHANGES[arch].items():
            weight = modules[module].weight
            logical = weight.t() if arch == "gpt2" else weight  # Conv1D stores [in, out]
            if axis == "rows":
                logical[idx] += torch.randn_like(logical[idx])
            else:
                logical[:, idx] += torch.randn_like(logical[:, idx])
    return tuned


def expected(arch: str) -> dict[str, dict[str, list[int]]]:
    return {module: {axis: idx} for module, (axis, idx) in CHANGES[arch].items()}


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return make_model("llama")


def examples(count: int = 12, seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenized examples with the loss on the second half (what neft.data builds)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        ids = torch.randint(3, 64, (6 + i % 4,), generator=generator).tolist()
        half = len(ids) // 2
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": [-100] * half + ids[half:]})
    return out


# ----------------------------------------------------------------------------- cosine


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("from_file", [False, True])
def test_cosine_finds_the_changed_rows_and_columns(arch, from_file, tmp_path):
    model = make_model(arch)
    tuned = tuned_copy(model, arch)
    reference = tuned
    if from_file:
        tuned.save_pretrained(tmp_path, max_shard_size="20KB")  # sharded, with an index
        assert (tmp_path / "model.safetensors.index.json").exists()
        reference = tmp_path
    count = sum(len(idx) for _, idx in CHANGES[arch].values())
    chosen = select_neurons(model, "cosine", reference=reference, neurons=count, progress=False)
    assert chosen.to_mapping() == expected(arch)
    chosen.validate(model)  # fingerprint and shapes match the base


def test_layerwise_cosine_from_files_equals_whole_model(llama, tmp_path):
    tuned = tuned_copy(llama, "llama")
    with torch.no_grad():  # move everything a little so every score is informative
        for param in tuned.parameters():
            param.add_(1e-3 * torch.randn_like(param))
    tuned.save_pretrained(tmp_path, max_shard_size="20KB")
    in_memory = score_neurons(llama, "cosine", reference=tuned, progress=False).scores
    layerwise = score_neurons(llama, "cosine", reference=tmp_path, progress=False).scores
    assert all(torch.equal(a, b) for a, b in zip(in_memory, layerwise, strict=True))
    assert in_memory[0].dtype == torch.float64


def test_base_read_from_its_checkpoint_without_loading_it(llama, tmp_path):
    """Given by path, the base is built on the meta device and read matrix by matrix."""
    base_dir, tuned_dir = tmp_path / "base", tmp_path / "tuned"
    llama.save_pretrained(base_dir)
    tuned_copy(llama, "llama").save_pretrained(tuned_dir)
    by_path = select_neurons(str(base_dir), "cosine", reference=tuned_dir, neurons=5,
                             progress=False)
    assert by_path.to_mapping() == expected("llama")
    assert by_path.metadata["base_fingerprint"] == model_fingerprint(llama)


def test_mismatched_checkpoints_are_clear_errors(llama, tmp_path):
    other = make_model("gpt2")
    other.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(NeftError, match="no tensor for"):
        select_neurons(llama, "cosine", reference=tmp_path / "gpt2", neurons=2, progress=False)
    wide = make_model("llama")
    wide.model.layers[0].mlp.up_proj = torch.nn.Linear(16, 24, bias=False)
    wide.model.layers[0].mlp.up_proj.weight.data = torch.randn(24, 17)
    with pytest.raises(NeftError, match="different models"):
        select_neurons(llama, "cosine", reference=wide, neurons=2, progress=False)
    with pytest.raises(NeftError, match="no such checkpoint"):
        select_neurons(llama, "cosine", reference=tmp_path / "missing", neurons=2,
                       progress=False)
    with pytest.raises(NeftError, match="reference"):
        select_neurons(llama, "cosine", neurons=2, progress=False)


def test_reversed_selects_the_least_moved(llama):
    tuned = tuned_copy(llama, "llama")
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(1e-2 * torch.randn_like(param))
    pool = sum(g.count for g in find_neuron_groups(llama))
    most = select_neurons(llama, "cosine", reference=tuned, neurons=pool // 2, progress=False)
    least = select_neurons(llama, "reversed", reference=tuned, neurons=pool // 2,
                           progress=False)
    assert most.intersection(least).num_neurons() == 0
    assert most.union(least).num_neurons() == pool


# ----------------------------------------------------------------------------- budgets


def test_budgets_convert_exactly(llama):
    groups = find_neuron_groups(llama)  # llama tiny: 96 neurons of 16 parameters
    total = count_parameters(llama)
    assert resolve_budget(groups, total, neurons=10).parameters == 160
    assert resolve_budget(groups, total, params=160).neurons == 10
    by_percent = resolve_budget(groups, total, percent=10)
    assert by_percent.neurons == round(0.10 * total / 16)
    assert by_percent.percent == pytest.approx(100 * by_percent.parameters / total)
    lora = lora_parameters(linear_shapes(llama), 2)
    # r * (in + out) per linear layer but lm_head: q,k,v,o 16x16, gate/up/down 16<->24.
    assert lora == 2 * 2 * (4 * 32 + 3 * 40)
    assert resolve_budget(groups, total, lora_params=lora, lora_rank=2).neurons == lora // 16
    assert lora_parameters(linear_shapes(llama), 1, ["q_proj", "v_proj"]) == 2 * 2 * 32


def test_match_lora_equals_peft_trainable_parameters(llama):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules="all-linear")
    lora_model = peft.get_peft_model(make_model("llama"), config)
    trainable, _ = lora_model.get_nb_trainable_parameters()
    assert lora_parameters(linear_shapes(llama), 4) == trainable


@pytest.mark.parametrize("budget, message", [
    ({"neurons": 0}, "positive"), ({"neurons": -3}, "positive"), ({"percent": -1}, "positive"),
    ({"params": 0}, "positive"), ({"match_lora": 0}, "positive"),
    ({"neurons": 97}, "pool of 96"), ({"percent": 50}, "pool of 96"),
    ({"params": 7}, "less than one neuron"), ({}, "exactly one"),
    ({"neurons": 3, "percent": 1}, "exactly one"), ({"neurons": 2.5}, "whole"),
])
def test_bad_budgets_are_clear_errors(llama, budget, message):
    with pytest.raises(NeftError, match=message):
        select_neurons(llama, "random", progress=False, **budget)


def test_quota_is_checked_before_scoring(llama):
    with pytest.raises(NeftError, match="quota"):
        select_neurons(llama, "random", neurons=4, quota="head", progress=False)


# ----------------------------------------------------------------------------- ranking


def test_random_is_reproducible_with_a_seed(llama):
    first = select_neurons(llama, "random", neurons=20, seed=7, progress=False)
    again = select_neurons(llama, "random", neurons=20, seed=7, progress=False)
    other = select_neurons(llama, "random", neurons=20, seed=8, progress=False)
    assert first == again and first != other
    assert first.num_neurons() == 20 and first.metadata["seed"] == 7


@pytest.mark.parametrize("quota, key, counts", [
    ("layer", lambda m, a: m.split(".")[2], {"0": 11, "1": 10}),
    ("kind", lambda m, a: a, {"rows": 11, "cols": 10}),
    ("module", lambda m, a: m.split(".")[2] + a, {"0rows": 6, "0cols": 5, "1rows": 5,
                                                  "1cols": 5}),
])
def test_quota_modes_split_the_budget_by_pool_size(llama, quota, key, counts):
    chosen = select_neurons(llama, "random", neurons=21, quota=quota, progress=False)
    got: dict[str, int] = {}
    for module, axis, idx in chosen.items():
        got[key(module, axis)] = got.get(key(module, axis), 0) + int(idx.numel())
    assert got == counts
    assert chosen.metadata["quota"] == quota


def test_quota_keeps_the_best_within_each_layer(llama):
    """Layer 1 moved most: a global ranking takes only it, a per-layer quota both."""
    tuned = make_model("llama")
    tuned.load_state_dict(llama.state_dict())
    with torch.no_grad():
        tuned.model.layers[1].mlp.up_proj.weight[:8] += 1.0
        tuned.model.layers[0].mlp.up_proj.weight[9] += 1e-2
        tuned.model.layers[0].mlp.down_proj.weight[:, 1:4] += 1e-2
    overall = select_neurons(llama, "cosine", reference=tuned, neurons=8, progress=False)
    assert overall.to_mapping() == {LLAMA_UP: {"rows": list(range(8))}}
    per_layer = select_neurons(llama, "cosine", reference=tuned, neurons=8, quota="layer",
                               progress=False)
    assert set(per_layer.get(LLAMA_UP, "rows").tolist()) < set(range(8))
    assert per_layer.get("model.layers.0.mlp.up_proj", "rows").tolist() == [9]
    assert per_layer.get(LLAMA_DOWN, "cols").tolist() == [1, 2, 3]


def test_allocate_sums_to_the_total():
    counts = allocate(torch.tensor([24, 24, 48]), 10)
    assert counts.tolist() == [2, 3, 5] or counts.tolist() == [3, 2, 5]
    assert int(counts.sum()) == 10


def test_magnitude_selects_the_smallest_neurons(llama):
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, [4, 11]] *= 1e-3
        model.model.layers[1].mlp.up_proj.weight[[2]] *= 1e-3
    chosen = select_neurons(model, "magnitude", neurons=3, progress=False)
    assert chosen.to_mapping() == {LLAMA_DOWN: {"cols": [4, 11]}, LLAMA_UP: {"rows": [2]}}


# ----------------------------------------------------------------------------- data-driven


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_scorer_returns_a_valid_set(arch):
    model = make_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    chosen = select_neurons(model, "gradient", data=examples(), neurons=10, steps=3,
                            batch_size=4, progress=False)
    assert chosen.num_neurons() == 10
    chosen.validate(model)
    meta = chosen.metadata
    assert meta["scorer_settings"]["steps"] == 3 and meta["data_examples"] == 12
    assert len(meta["data_fingerprint"]) == 16 and meta["peak_rss_mb"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())
    again = select_neurons(model, "gradient", data=examples(), neurons=10, steps=3,
                           batch_size=4, progress=False)
    assert again == chosen


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_probe_equals_adam_on_the_candidate_matrices(arch):
    """The in-backward updates are AdamW's without momentum: the scores equal 1 - cos(before,
    after) of an ordinary AdamW loop over the candidate matrices; the model is put back."""
    from neft.select.datadriven import batches
    from neft.select.weights import by_module, cosine, logical_matrices, neuron_vectors

    model = make_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score_neurons(model, "fast-probe", data=examples(), steps=3, learning_rate=1e-3,
                           batch_size=4, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    settings = scores.metadata["scorer_settings"]
    assert (settings["steps"], settings["learning_rate"], settings["batch_size"]) == (3, 1e-3, 4)

    groups = find_neuron_groups(model)
    modules = list(by_module(groups))
    layers = dict(model.named_modules())
    start = dict(logical_matrices(model, model, modules))
    start = {m: w.clone() for m, w in start.items()}
    model.requires_grad_(False)
    weights = [layers[m].weight.requires_grad_(True) for m in modules]
    optimizer = torch.optim.AdamW(weights, lr=1e-3, betas=(0.0, 0.999), weight_decay=0.0)
    stream = batches(examples(), 4, 1234, 0, torch.device("cpu"))
    model.train()
    torch.manual_seed(1234)  # dropout, as the scorer seeds it
    for _ in range(3):
        model(**next(stream)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    end = dict(logical_matrices(model, model, modules))
    for group, got in zip(groups, scores.scores, strict=True):
        want = 1 - cosine(neuron_vectors(start[group.module], group),
                          neuron_vectors(end[group.module], group))
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-12), group.module
    assert max(float(s.max()) for s in scores.scores) > 0


def test_fast_probe_keeps_low_precision_updates_in_float32():
    """lr x 1 steps are below bf16's resolution of the weights: a float32 master copy takes
    them, so the neurons still turn; the bf16 model is put back bit for bit."""
    model = make_model("llama", dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score_neurons(model, "fast-probe", data=examples(), steps=2, learning_rate=1e-5,
                           batch_size=4, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    moved = torch.cat(scores.scores)
    assert bool((moved > 0).all()) and float(moved.max()) < 1e-4
    chosen = select_neurons(model, "fast-probe", data=examples(), neurons=10, steps=2,
                            learning_rate=1e-5, batch_size=4, progress=False)
    assert chosen.num_neurons() == 10 and chosen.metadata["scorer"] == "fast-probe"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_probe_puts_the_model_back_when_interrupted(arch):
    """Ctrl-C in the middle of the steps: the matrices already updated are restored from
    the parked copy, bit for bit, and no hook or gradient is left behind."""
    model = make_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = 0

    def interrupt(*_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first step has updated every candidate matrix
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        score_neurons(model, "fast-probe", data=examples(), steps=3, learning_rate=1e-2,
                      batch_size=4, progress=False)
    handle.remove()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model(**{"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])}
          ).loss.backward()  # no update hook fires any more
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("scorer", ["probe", "fast-probe"])
def test_probes_refuse_a_sharded_model(scorer):
    model = make_model("llama")
    model.model.layers[0].mlp.up_proj.weight.ds_id = 7  # as DeepSpeed ZeRO-3 marks its shards
    with pytest.raises(NeftError, match="sharded .*use scorer gradient"):
        score_neurons(model, scorer, data=examples(), steps=1, progress=False)


def test_probe_records_its_settings_and_restores_the_model():
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = select_neurons(model, "probe", data=examples(), neurons=10, steps=3,
                            learning_rate=1e-3, batch_size=2, progress=False)
    settings = chosen.metadata["scorer_settings"]
    assert (settings["steps"], settings["learning_rate"], settings["batch_size"]) == (3, 1e-3, 2)
    assert chosen.num_neurons() == 10
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reversed_ = select_neurons(model, "reversed", data=examples(), neurons=86, steps=3,
                               learning_rate=1e-3, batch_size=2, progress=False)
    assert chosen.intersection(reversed_).num_neurons() == 0


def test_data_fingerprint_follows_the_data(llama):
    one = select_neurons(llama, "gradient", data=examples(seed=0), neurons=4, steps=1,
                         progress=False)
    two = select_neurons(llama, "gradient", data=examples(seed=1), neurons=4, steps=1,
                         progress=False)
    assert one.metadata["data_fingerprint"] != two.metadata["data_fingerprint"]


def test_data_is_required_where_used_and_refused_where_not(llama):
    with pytest.raises(NeftError, match="needs task data"):
        select_neurons(llama, "gradient", neurons=4, progress=False)
    with pytest.raises(NeftError, match="uses no data"):
        select_neurons(llama, "random", neurons=4, data=examples(), avoid="none",
                       progress=False)
    # leaving out massive units (the default) measures them on the data it is given
    measured = select_neurons(llama, "random", neurons=4, data=examples(), progress=False)
    assert measured.metadata["avoid_measured_on"] == "the task data"
    with pytest.raises(NeftError, match="not known"):
        select_neurons(llama, "psychic", neurons=4, progress=False)


# ----------------------------------------------------------------------------- set operations


def test_union_intersection_and_files(llama, tmp_path):
    a = select_neurons(llama, "random", neurons=30, seed=1, progress=False)
    b = select_neurons(llama, "random", neurons=30, seed=2, progress=False)
    a.save(tmp_path / "a.safetensors")
    union = union_sets(tmp_path / "a.safetensors", b)
    both = intersect_sets(a, b)
    assert union.num_neurons() == 60 - both.num_neurons()
    assert union.metadata["base_fingerprint"] == model_fingerprint(llama)
    assert union.metadata["sources"][0]["path"].endswith("a.safetensors")
    union.validate(llama)
    loaded = NeuronSet.load(tmp_path / "a.safetensors")
    assert loaded == a and loaded.metadata["budget"]["neurons"] == 30


def test_sets_of_different_models_need_a_transfer(llama):
    a = select_neurons(llama, "random", neurons=5, progress=False)
    g = select_neurons(make_model("gpt2"), "random", neurons=5, progress=False)
    with pytest.raises(NeftError, match="different base models"):
        union_sets(a, g)


def test_transfer_rewrites_the_fingerprint_after_checking_shapes(llama):
    import transformers

    a = select_neurons(llama, "random", neurons=12, progress=False)
    config = transformers.MistralConfig(hidden_size=16, intermediate_size=24, vocab_size=64,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2)
    mistral = transformers.MistralForCausalLM(config)
    with pytest.raises(NeftError, match=r"another base model .*--transfer` \(its modules "
                       "have the same shapes here"):
        NeuronSet(a.to_mapping(), metadata=dict(a.metadata)).validate(mistral)
    moved = transfer_set(a, mistral)
    assert moved == a and moved.validate(mistral) is moved
    assert moved.metadata["transferred_from"] == model_fingerprint(llama)
    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, vocab_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(NeftError, match="shape"):
        transfer_set(a, wider)
    with pytest.raises(NeftError, match="its modules have other shapes here, so select"):
        a.validate(wider)  # no transfer hint where a transfer cannot work


# ----------------------------------------------------------------------------- CLI


def test_cli_selects_combines_and_reports_errors(llama, tmp_path, capsys):
    llama.save_pretrained(tmp_path / "base")
    out = tmp_path / "r.safetensors"
    assert main(["select", "--model", str(tmp_path / "base"), "--scorer", "random",
                 "--match-lora", "1", "--output", str(out), "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "31 neurons = 496 parameters" in report and "per layer:" in report
    assert NeuronSet.load(out).num_neurons() == 31
    assert main(["select", "--union", str(out), str(out), "--output",
                 str(tmp_path / "u.safetensors")]) == 0
    assert NeuronSet.load(tmp_path / "u.safetensors") == NeuronSet.load(out)
    assert main(["select", "--model", str(tmp_path / "base"), "--scorer", "random",
                 "--neurons", "500", "--output", str(out), "--overwrite"]) == 2
    assert "pool of 96" in capsys.readouterr().err
