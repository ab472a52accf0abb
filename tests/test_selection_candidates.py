"""Issue 19's candidate scorers: the fast probe read as movement or as the norm-free turn,
SNIP (|w x mean gradient|) and drift-aware (task gain over general-text Fisher), each
equal to a direct computation; layer bands and quotas."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, make_model
from test_select import examples

from neft import NeftError
from neft.core.neurons import find_neuron_groups
from neft.select import format_summary, score_neurons, select_neurons
from neft.select.datadriven import batches
from neft.select.weights import by_module, logical_matrices, neuron_vectors


def test_normfree_is_the_fast_probe_turn_times_the_squared_norm():
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    turn = score_neurons(model, "fast-probe", data=examples(), steps=3, learning_rate=1e-3,
                         progress=False)
    normfree = score_neurons(model, "cosine-normfree", data=examples(), steps=3,
                             learning_rate=1e-3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    weights = dict(logical_matrices(model, model, list(by_module(turn.groups))))
    for group, cos, free in zip(turn.groups, turn.scores, normfree.scores, strict=True):
        norms = neuron_vectors(weights[group.module], group).double().pow(2).sum(dim=1)
        torch.testing.assert_close(free, cos * norms, rtol=1e-9, atol=0)
    assert normfree.metadata["scorer_settings"]["measure"] == "normfree"


def test_movement_is_the_distance_each_neuron_moved():
    model = make_model("gpt2")
    groups = find_neuron_groups(model)
    modules = list(by_module(groups))
    start = {m: w.clone() for m, w in logical_matrices(model, model, modules)}
    moved = score_neurons(model, "movement", data=examples(), steps=2, learning_rate=1e-3,
                          progress=False)
    kept = score_neurons(model, "fast-probe", data=examples(), steps=2, learning_rate=1e-3,
                         restore=False, progress=False)
    assert kept.scores  # the model now holds the probe's weights
    end = dict(logical_matrices(model, model, modules))
    for group, got in zip(groups, moved.scores, strict=True):
        expected = (neuron_vectors(end[group.module], group).double()
                    - neuron_vectors(start[group.module], group).double()).norm(dim=1)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
        assert (got > 0).all()


def test_snip_is_weight_times_mean_gradient():
    model = make_model("llama")
    scores = score_neurons(model, "snip", data=examples(), steps=3, batch_size=4,
                           progress=False)
    assert all(p.grad is None for p in model.parameters())
    stream = batches(examples(), 4, 1234, 0, torch.device("cpu"))
    model.train()
    torch.manual_seed(1234)
    for _ in range(3):
        model(**next(stream)).loss.backward()
    groups = scores.groups
    layers = dict(model.named_modules())
    for group, got in zip(groups, scores.scores, strict=True):
        weight = layers[group.module].weight
        w = neuron_vectors(weight.detach(), group).double()
        g = neuron_vectors(weight.grad, group).double() / 3
        torch.testing.assert_close(got, (w * g).abs().sum(dim=1), rtol=1e-5, atol=1e-12)
    model.zero_grad(set_to_none=True)
    model.eval()


def test_drift_aware_is_task_gain_over_the_fisher_of_the_models_own_text():
    from neft.select.datadriven import base_samples

    model = make_model("llama")
    scores = score_neurons(model, "drift-aware", data=examples(), steps=2, batch_size=4,
                           progress=False,
                           scorer_options={"general_steps": 2, "general_length": 6})
    assert all(p.grad is None for p in model.parameters())
    general = base_samples(model, 8, 6, 1234, 0)
    assert len(general) == 8 and all(len(e["input_ids"]) == 6 for e in general)
    assert general == base_samples(model, 8, 6, 1234, 0)  # seeded
    layers = dict(model.named_modules())
    weights = {g.module: layers[g.module].weight for g in scores.groups}

    def per_step_gradients(data):
        stream = batches(data, 4, 1234, 0, torch.device("cpu"))
        model.train()
        torch.manual_seed(1234)
        steps = []
        for _ in range(2):
            model(**next(stream)).loss.backward()
            steps.append({m: w.grad.clone() for m, w in weights.items()})
            model.zero_grad(set_to_none=True)
        model.eval()
        return steps

    task, text = per_step_gradients(examples()), per_step_gradients(general)
    gains = [(neuron_vectors(task[0][g.module] + task[1][g.module], g).double() / 2)
             .abs().sum(dim=1) for g in scores.groups]
    fisher = [sum(neuron_vectors(step[g.module], g).double().pow(2).sum(dim=1)
                  for step in text) / 2 for g in scores.groups]
    floor = 1e-3 * torch.cat(fisher).mean()
    for got, gain, curvature in zip(scores.scores, gains, fisher, strict=True):
        torch.testing.assert_close(got, gain / (curvature + floor), rtol=1e-4, atol=0)
    with pytest.raises(NeftError, match="general_length=1 must be a whole number of at least 2"):
        score_neurons(model, "drift-aware", data=examples(), progress=False,
                      scorer_options={"general_length": 1})


def test_candidates_select_exact_budgets_and_refuse_unknown_measures():
    model = make_model("llama")
    for scorer in ("movement", "cosine-normfree", "snip", "drift-aware"):
        chosen = select_neurons(model, scorer, data=examples(), neurons=7, steps=2,
                                progress=False)
        assert chosen.num_neurons() == 7 and chosen.metadata["scorer"] == scorer
    with pytest.raises(NeftError, match="measure"):
        score_neurons(model, "fast-probe", data=examples(), steps=1, progress=False,
                      scorer_options={"measure": "speed"})


def test_a_layer_band_keeps_the_budget_inside_it():
    model = make_model("llama")  # blocks 0 and 1
    upper = select_neurons(model, "magnitude", neurons=9, layers="upper:1", progress=False)
    assert upper.num_neurons() == 9 and upper.metadata["layers"] == "upper:1"
    assert all(".layers.1." in module for module in upper.modules())
    both = select_neurons(model, "magnitude", neurons=9, layers="0-1", progress=False)
    assert both.to_mapping() == select_neurons(model, "magnitude", neurons=9,
                                               progress=False).to_mapping()
    for bad, message in (("upper:3", "upper:N"), ("5", "not one of them"), ("x-y", "A-B")):
        with pytest.raises(NeftError, match=message):
            select_neurons(model, "magnitude", neurons=9, layers=bad, progress=False)
    with pytest.raises(NeftError, match="fewer than the budget"):
        select_neurons(model, "magnitude", neurons=60, layers="lower:1", progress=False)


@pytest.mark.parametrize("avoid", ["none", "massive"])
def test_a_band_too_small_for_the_budget_fails_before_the_scoring(monkeypatch, avoid):
    """A data scorer can run for an hour: the band is checked with the budget, first."""
    import dataclasses

    from neft.select.registry import SCORERS

    def never(_: object) -> None:
        raise AssertionError("scored before the band was checked")

    monkeypatch.setitem(SCORERS, "snip", dataclasses.replace(SCORERS["snip"], fn=never))
    with pytest.raises(NeftError, match="fewer than the budget"):
        select_neurons(make_model("llama"), "snip", neurons=60, layers="lower:1",
                       data=examples(), avoid=avoid, progress=False)


def test_train_sizes_a_lora_budget_on_its_lora_target_modules(toy_data_dir):
    """--match_lora with --lora_target_modules means in neft train what it means in neft
    select: the parameters of that LoRA, so a comparison's neft and LoRA cells match."""
    from neft.train import TrainConfig
    from neft.train.methods import budget_parameters, select_for_training

    model = make_model("llama")
    config = TrainConfig(method="random", match_lora=1, lora_target_modules="q_proj, v_proj",
                         select_avoid="none", train_file=toy_data_dir)
    trained = select_for_training(model, config, dataset=None)
    selected = select_neurons(model, "random", match_lora=1, avoid="none",
                              lora_target_modules=["q_proj", "v_proj"], progress=False)
    everywhere = select_neurons(model, "random", match_lora=1, avoid="none", progress=False)
    assert trained.num_neurons() == selected.num_neurons() < everywhere.num_neurons()
    assert budget_parameters(model, config) == trained.num_parameters()


def test_train_passes_its_layer_band_to_the_selection(toy_data_dir):
    from neft.train import TrainConfig
    from neft.train.methods import select_for_training

    config = TrainConfig(method="random", num_neurons=5, select_layers="upper:1",
                         select_avoid="none", train_file=toy_data_dir)
    chosen = select_for_training(make_model("llama"), config, dataset=None)
    assert chosen.num_neurons() == 5 and all(".layers.1." in m for m in chosen.modules())


def test_train_passes_its_quota_to_the_selection(toy_data_dir):
    from neft.train import TrainConfig
    from neft.train.methods import select_for_training

    model = make_model("llama")
    with torch.no_grad():  # one global magnitude ranking would take one layer only
        for weight in model.model.layers[1].mlp.parameters():
            weight.mul_(100)

    def per_layer(quota: str | None) -> list[int]:
        config = TrainConfig(method="neft", scorer="magnitude", num_neurons=8,
                             select_quota=quota, select_avoid="none", train_file=toy_data_dir)
        chosen = select_for_training(model, config, dataset=None)
        return [sum(int(i.numel()) for m, _, i in chosen.items() if f".layers.{n}." in m)
                for n in (0, 1)]

    assert per_layer(None) in ([8, 0], [0, 8])
    assert per_layer("layer") == [4, 4]  # equal pools, equal shares
    assert per_layer("none") == per_layer(None)  # none: one global ranking, as for avoid
    with pytest.raises(NeftError, match="quota 'layers' is not known"):
        TrainConfig(method="neft", select_quota="layers", train_file=toy_data_dir)
    with pytest.raises(NeftError, match="method lora selects none: drop --select_quota"):
        TrainConfig(method="lora", select_quota="layer", train_file=toy_data_dir)
    with pytest.raises(NeftError, match="--neurons gives one made earlier: drop --select_lay"):
        TrainConfig(method="neft", neurons="set.safetensors", select_layers="upper:1",
                    train_file=toy_data_dir)


def test_below_a_band_backward_stops_and_bench_draws_inside_it():
    from neft.experiments.bench import BenchConfig, plan, prepare

    model = make_model("llama")
    model, trainable = prepare(model, "neft", 9, 0, 0, layers="upper:1")
    moving = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == 9 * 16 and moving and all(".layers.1." in n for n in moving)
    reached = []
    for index, block in enumerate(model.model.layers):
        block.register_full_backward_hook(lambda *_, i=index: reached.append(i))
    ids = make_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    assert reached == [1]  # nothing below the band needs a gradient
    with pytest.raises(NeftError, match="fewer than the budget"):
        plan(BenchConfig(model="tiny-random", modes="neft", budgets="300", sweep="",
                         layers="upper:1"))


def test_avoid_massive_checks_the_budget_before_its_pass(monkeypatch):
    """A bad budget fails before the model is sampled and measured, not after."""
    import neft.select.scoring as scoring

    def never(*_: object) -> None:
        raise AssertionError("sampled before the budget was checked")

    monkeypatch.setattr(scoring, "model_text", never)
    with pytest.raises(NeftError, match="exceeds the candidate pool"):
        select_neurons(make_model("llama"), "random", neurons=10**6, avoid="massive",
                       progress=False)


@pytest.mark.parametrize(("scorer", "avoid", "band"), [
    ("random", "massive", None), ("snip", "none", None), ("snip", "massive", "lower:1")])
def test_a_bad_budget_fails_before_a_model_path_is_loaded(monkeypatch, tiny_model_dir,
                                                          toy_data_dir, scorer, avoid, band):
    """From a folder, the budget and band are read off a weightless model: a 7B model is
    not loaded for minutes to be told the budget was too large."""
    import neft.select.scoring as scoring

    def never(*_: object, **__: object) -> None:
        raise AssertionError("loaded before the budget was checked")

    monkeypatch.setattr(scoring, "load_model", never)
    data = toy_data_dir if scorer == "snip" else None
    budget = {"neurons": 60} if band else {"neurons": 10**6}
    with pytest.raises(NeftError, match="fewer than the budget" if band else "exceeds"):
        select_neurons(tiny_model_dir, scorer, **budget, layers=band, data=data, avoid=avoid,
                       progress=False)


def test_avoid_massive_leaves_out_a_planted_massive_unit(toy_data_dir):
    """A unit whose up_proj row is scaled 1000x dwarfs its layer's activations: with
    avoid=massive no selection trains it (its up row nor its down column), whatever the
    scorer ranks first, measured on task data or on the model's own samples; through neft
    train's option too."""
    from neft.train import TrainConfig
    from neft.train.methods import select_for_training

    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5].mul_(1000)
    up, down = "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"
    pool = sum(g.count for g in find_neuron_groups(model))
    for scorer, data in (("random", examples()), ("snip", examples())):
        chosen = select_neurons(model, scorer, neurons=pool - 2, data=data, avoid="massive",
                                progress=False)
        assert 5 not in chosen.get(up, "rows").tolist()
        assert 5 not in chosen.get(down, "cols").tolist()
        assert chosen.num_neurons() == pool - 2
        assert chosen.metadata["avoided"] == {down + "::cols": [5], up + "::rows": [5]}
        assert chosen.metadata["avoid"] == "massive:40"
    config = TrainConfig(method="random", num_neurons=pool - 2, select_avoid="massive:10",
                         train_file=toy_data_dir)
    trained = select_for_training(model, config, dataset=examples())
    assert 5 not in trained.get(down, "cols").tolist()
    for bad in ("huge", "massive:1", "massive:x"):
        with pytest.raises(NeftError, match="avoid"):
            select_neurons(model, "random", neurons=4, data=examples(), avoid=bad)
    assert chosen.metadata["avoid_measured_on"] == "the task data"
    # without data the model's own samples show the unit just as well
    dataless = select_neurons(model, "random", neurons=pool - 2, avoid="massive", progress=False)
    assert dataless.metadata["avoided"] == {down + "::cols": [5], up + "::rows": [5]}
    assert dataless.metadata["avoid_measured_on"] == "the model's own samples"
    assert ("left out (massive:40, on the model's own samples): 1 unit; layer 1: 5"
            in format_summary(dataless))
    with pytest.raises(NeftError, match="select_avoid shapes a neuron selection"):
        TrainConfig(method="lora", select_avoid="massive:30", train_file=toy_data_dir)
    # none leaves nothing out, in the API and in neft train's option
    plain = select_neurons(model, "random", neurons=pool - 2, avoid=None, progress=False)
    nothing = select_neurons(model, "random", neurons=pool - 2, avoid="none", progress=False)
    assert nothing.to_mapping() == plain.to_mapping() and "avoided" not in nothing.metadata
    assert TrainConfig(method="random", select_avoid="none",
                       train_file=toy_data_dir).select_avoid is None
    assert TrainConfig(method="lora", select_avoid="None",
                       train_file=toy_data_dir).select_avoid is None


def test_a_budget_that_needs_the_avoided_units_is_refused():
    """Left out means never chosen: a budget that only fits with them fails in one line,
    with one global ranking and within a quota's share."""
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5].mul_(1000)
    pool = sum(g.count for g in find_neuron_groups(model))
    for quota in (None, "layer"):
        with pytest.raises(NeftError, match="needs units that avoid leaves out"):
            select_neurons(model, "random", neurons=pool - 1, data=examples(), quota=quota,
                           avoid="massive", progress=False)


def test_avoid_massive_without_data_needs_no_tokenizer(tmp_path):
    """The data-free pass samples token ids from the model itself: a folder saved without
    a tokenizer works, and so does a model with fewer positions than the samples' length."""
    model = make_model("gpt2")
    assert model.config.n_positions < 64
    model.save_pretrained(tmp_path / "base")
    chosen = select_neurons(str(tmp_path / "base"), "random", neurons=4, avoid="massive",
                            progress=False)
    assert chosen.num_neurons() == 4
    assert chosen.metadata["avoid_measured_on"] == "the model's own samples"


def test_avoid_massive_measures_against_the_units_that_are_active():
    """With most units dead (never active, as in ReLU models), a layer's median is taken
    over the active ones: only the planted unit is massive, not every live one."""
    model = make_model("llama")
    up = model.model.layers[1].mlp.up_proj.weight
    with torch.no_grad():
        up[: up.shape[0] * 2 // 3].zero_()  # two thirds of the layer's units never fire
        up[-1].mul_(1000)
    pool = sum(g.count for g in find_neuron_groups(model))
    chosen = select_neurons(model, "random", neurons=pool - 2, progress=False)
    last = up.shape[0] - 1
    assert chosen.metadata["avoided"] == {"model.layers.1.mlp.down_proj::cols": [last],
                                          "model.layers.1.mlp.up_proj::rows": [last]}



def test_avoid_massive_on_every_architecture_and_flattened_inputs(arch):
    """The default rule runs on every preset architecture: OPT feeds fc2 a flattened
    [batch x seq, width] input (a MoE's shared expert does too), and a planted unit is
    found there as in [batch, seq, width]."""
    model = make_model(arch)
    groups = find_neuron_groups(model)
    pool = sum(g.count for g in groups)
    chosen = select_neurons(model, "random", neurons=pool // 2, data=examples(), progress=False)
    assert chosen.num_neurons() == pool // 2
    if arch == "opt":
        with torch.no_grad():
            model.model.decoder.layers[1].fc1.weight[5].mul_(1000)
            model.model.decoder.layers[1].fc1.bias[5] = 1000.0
        chosen = select_neurons(model, "random", neurons=pool - 2, data=examples(),
                                progress=False)
        assert chosen.metadata["avoided"] == {"model.decoder.layers.1.fc1::rows": [5],
                                              "model.decoder.layers.1.fc2::cols": [5]}

def test_avoid_massive_on_a_backbone_that_cannot_generate():
    """A bare backbone (no LM head, no generate) still gets the default rule: the pass runs
    on seeded random token ids, and finds a planted massive unit there too."""
    from transformers import LlamaModel

    backbone = LlamaModel(make_model("llama").config)
    with torch.no_grad():
        backbone.layers[1].mlp.up_proj.weight[5].mul_(1000)
    pool = sum(g.count for g in find_neuron_groups(backbone))
    chosen = select_neurons(backbone, "random", neurons=pool - 2, progress=False)
    assert chosen.metadata["avoid_measured_on"] == "random token ids"
    assert chosen.metadata["avoided"] == {"layers.1.mlp.down_proj::cols": [5],
                                          "layers.1.mlp.up_proj::rows": [5]}
    again = select_neurons(backbone, "random", neurons=pool - 2, progress=False)
    assert again.to_mapping() == chosen.to_mapping()


def test_each_method_leaves_out_its_own_units_unless_told(toy_data_dir, tmp_path):
    """select_avoid auto: neft's default rule, nothing for random (the control the default
    is measured against, so `neft compare` of neft and random reads the rule's effect);
    none for a run that selects nothing or reads a neurons file. A value given wins."""
    from neft.select.massive import DEFAULT_AVOID
    from neft.train import TrainConfig

    data = dict(train_file=toy_data_dir)
    assert TrainConfig(method="neft", **data).select_avoid == DEFAULT_AVOID
    assert TrainConfig(method="random", **data).select_avoid is None
    assert TrainConfig(method="lora", **data).select_avoid is None
    neurons = tmp_path / "set.safetensors"
    neurons.touch()
    assert TrainConfig(method="neft", neurons=str(neurons), **data).select_avoid is None
    assert TrainConfig(method="random", select_avoid="massive", **data).select_avoid == "massive"
    assert TrainConfig(method="neft", select_avoid="none", **data).select_avoid is None
    with pytest.raises(NeftError, match="select_avoid shapes a neuron selection"):
        TrainConfig(method="lora", select_avoid="massive:30", train_file=toy_data_dir)
