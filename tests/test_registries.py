"""The extension points: a scorer with a knob, a method, both reached by name only."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from neft.config import from_dict, parse_options
from neft.errors import NeftError
from neft.select import SCORERS, score_neurons
from neft.select.registry import register_scorer, scorer_settings
from neft.train import METHODS, TrainConfig, prepare_model, register_method


@pytest.fixture
def scaled_scorer():
    def score_scaled(inp):
        """Random scores times a scale (a test scorer)."""
        settings = scorer_settings(inp, "test-scaled")
        generator = torch.Generator().manual_seed(inp.seed)
        return [torch.rand(g.count, generator=generator) * settings["scale"]
                for g in inp.groups], settings

    register_scorer("test-scaled", score_scaled, defaults={"scale": 1.0})
    yield "test-scaled"
    del SCORERS["test-scaled"]


def test_a_registered_scorer_gets_its_knob_from_score_neurons(scaled_scorer):
    scores = score_neurons(make_model(), scaled_scorer, scorer_options={"scale": 3.0},
                           progress=False)
    assert scores.metadata["scorer_settings"] == {"scale": 3.0}
    with pytest.raises(NeftError, match="has no option 'scal'"):
        score_neurons(make_model(), scaled_scorer, scorer_options={"scal": 3.0})


def test_train_config_passes_scorer_options_as_flag_text_or_yaml_mapping(scaled_scorer):
    base = {"train_file": "x.jsonl", "scorer": scaled_scorer}
    assert from_dict(TrainConfig, {**base, "scorer_options": "scale=2"}).scorer_options == {
        "scale": 2}
    assert from_dict(TrainConfig, {**base, "scorer_options": {"scale": 2.5}}).scorer_options == {
        "scale": 2.5}
    with pytest.raises(NeftError, match="has no option"):
        from_dict(TrainConfig, {**base, "scorer_options": "steps=3"})


def test_parse_options_reads_yaml_scalars():
    assert parse_options("steps=40, learning_rate=1e-4,name=x,on=true") == {
        "steps": 40, "learning_rate": 1e-4, "name": "x", "on": True}


def test_a_registered_method_is_prepared_by_name():
    def prepare_norms(model, spec):
        """Only the norm weights (a test method)."""
        for name, param in model.named_parameters():
            param.requires_grad_("norm" in name)
        return model

    register_method("test-norms", prepare_norms, saves_model=True, label="norms")
    try:
        config = TrainConfig(train_file="x.jsonl", method="test-norms")
        model = prepare_model(make_model(), config, dataset=None)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all("norm" in n for n in trained)
        with pytest.raises(NeftError, match="registered already"):
            register_method("test-norms", prepare_norms)
    finally:
        del METHODS["test-norms"]


def test_a_registered_preset_finds_a_new_mlp_layout():
    from torch import nn

    from neft.core.neurons import MLP_LAYOUTS, find_neuron_groups, register_preset

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w_in, self.w_out = nn.Linear(4, 6), nn.Linear(6, 4)

    model = nn.Sequential(Block(), Block())
    with pytest.raises(NeftError, match="no MLP neuron preset"):
        find_neuron_groups(model)
    register_preset("test-w", "w_in", "w_out")
    try:
        groups = find_neuron_groups(model)
        assert [(g.module, g.axis, g.count) for g in groups] == [
            ("0.w_in", "rows", 6), ("0.w_out", "cols", 6),
            ("1.w_in", "rows", 6), ("1.w_out", "cols", 6)]
    finally:
        del MLP_LAYOUTS["test-w"]


def test_a_registered_metric_is_scored_by_name():
    from neft.evaluate import METRICS, register_metric, score

    def exact(inp):
        hits = sum(h == r for h, r in zip(inp.hyps, inp.refs, strict=True))
        return {"exact_match": 100 * hits / len(inp.refs)}, "exact string match x100"

    register_metric("test-exact", exact)
    try:
        result = score(["a", "b"], ["a", "c"], metrics="test-exact,chrf")
        assert result["scores"]["exact_match"] == 50
        assert set(result["signatures"]) == {"test-exact", "chrf"}
    finally:
        del METRICS["test-exact"]
