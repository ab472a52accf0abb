"""`neft analyze`: distribution, overlap and utilization on hand-made sets and tiny models."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import DEVICE, make_model

from neft import NeftConfig, get_neft_model
from neft.analyze import (
    Utilization,
    compare,
    distribution,
    format_distribution,
    format_overlap,
    label_sets,
    mean_hidden_states,
    overlap_matrices,
    rank,
    scaled_threshold,
    utilization,
)
from neft.cli import main
from neft.core.neuron_set import NeuronSet
from neft.core.neurons import NeuronGroup, find_neuron_groups
from neft.errors import NeftError
from neft.select.weights import logical_matrices, neuron_vectors

UP = "model.layers.{}.mlp.up_proj"
DOWN = "model.layers.{}.mlp.down_proj"


def hand_sets() -> tuple[NeuronSet, NeuronSet, NeuronSet]:
    a = NeuronSet({UP.format(0): {"rows": [0, 1, 2]}, DOWN.format(1): {"cols": [5]}})
    b = NeuronSet({UP.format(0): {"rows": [2, 3]}, DOWN.format(1): {"cols": [5, 6, 7]}})
    c = NeuronSet({UP.format(1): {"rows": [9]}})
    return a, b, c


# ----------------------------------------------------------------------------- sets


def test_overlap_and_jaccard_on_hand_made_sets() -> None:
    a, b, c = hand_sets()
    result = overlap_matrices({"a": a, "b": b, "c": c})
    # a & b = {up0 row 2, down1 col 5}: 2 of a's 4, 2 of b's 5, union 7
    assert result["neurons"] == [4, 5, 1]
    assert result["intersection"][0][1] == result["intersection"][1][0] == 2
    assert result["overlap"][0][1] == pytest.approx(2 / 4)
    assert result["overlap"][1][0] == pytest.approx(2 / 5)
    assert result["jaccard"][0][1] == result["jaccard"][1][0] == pytest.approx(2 / 7)
    assert [result["overlap"][i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert result["overlap"][0][2] == result["jaccard"][2][1] == 0.0
    text = format_overlap(result)
    assert "50.0%" in text and "40.0%" in text and "28.6%" in text


def test_overlap_refuses_sets_of_different_models() -> None:
    a, b, _ = hand_sets()
    a.metadata["base_fingerprint"], b.metadata["base_fingerprint"] = "aaa", "bbb"
    with pytest.raises(NeftError, match="different base models"):
        overlap_matrices({"a": a, "b": b})
    with pytest.raises(NeftError, match="at least two"):
        overlap_matrices({"a": a})


def test_distribution_counts_per_layer_and_kind() -> None:
    a, b, c = hand_sets()
    dist = distribution({"a": a, "b": b, "c": c})
    assert dist["layers"] == [0, 1]
    assert dist["kinds"] == ["up_proj.rows", "down_proj.cols"]
    assert dist["sets"]["a"]["per_layer"] == {"up_proj.rows": [3, 0], "down_proj.cols": [0, 1]}
    assert dist["sets"]["b"]["per_kind"] == {"up_proj.rows": 2, "down_proj.cols": 3}
    assert dist["sets"]["c"]["total_per_layer"] == [0, 1]
    table = format_distribution(dist).splitlines()
    assert "a (4)" in table[0] and "b (5)" in table[0]
    assert table[-1].split() == ["all", "|", "3", "1", "4", "|", "2", "3", "5", "|", "1", "0",
                                 "1"]


def test_sets_from_files_and_adapter_folders(tmp_path) -> None:
    a, b, _ = hand_sets()
    a.save(tmp_path / "a.safetensors")
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=b.to_mapping()))
    neft.save_pretrained(tmp_path / "run")
    sets = label_sets([str(tmp_path / "a.safetensors"), str(tmp_path / "run")])
    assert list(sets) == ["a", "run"]
    assert sets["run"] == b
    assert list(label_sets([str(tmp_path / "a.safetensors")] * 2, ["x", "y"])) == ["x", "y"]
    with pytest.raises(NeftError, match="one label per set"):
        label_sets([str(tmp_path / "a.safetensors")], ["x", "y"])
    with pytest.raises(NeftError, match="without adapter_model"):
        label_sets([str(tmp_path)])


# ----------------------------------------------------------------------------- utilization

TOKEN_LISTS = [[5, 9, 11, 3, 40], [7, 8], [12, 13, 14, 15, 16, 17, 18], [30, 31, 32]]
EXAMPLES = [{"input_ids": ids, "labels": ids} for ids in TOKEN_LISTS]


def direct_means(model: torch.nn.Module) -> np.ndarray:
    """Mean residual state per layer over all tokens, one unpadded example at a time."""
    states = []
    with torch.no_grad():
        for ids in TOKEN_LISTS:
            out = model(torch.tensor([ids], device=DEVICE), output_hidden_states=True)
            states.append(np.stack([h[0].double().cpu().numpy() for h in out.hidden_states]))
    return np.concatenate(states, axis=1).mean(axis=1)  # [states, hidden]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_utilization_equals_direct_pearson(arch: str) -> None:
    model = make_model(arch)
    groups = find_neuron_groups(model)
    means, tokens = mean_hidden_states(model, EXAMPLES, batch_size=3, progress=False)
    expected_means = direct_means(model)
    assert tokens == sum(map(len, TOKEN_LISTS))
    np.testing.assert_allclose(means.numpy(), expected_means, rtol=1e-4, atol=1e-5)

    util = utilization(model, means, groups, progress=False)
    assert util.scores.shape == util.ranks.shape == (sum(g.count for g in groups),)
    weights = dict(logical_matrices(model, model, [g.module for g in groups]))
    offsets = np.cumsum([0] + [g.count for g in groups])
    for i, group in enumerate(groups):
        vectors = neuron_vectors(weights[group.module], group).double().cpu().numpy()
        for j in (0, 5, group.count - 1):
            r = [np.corrcoef(vectors[j], expected_means[s])[0, 1]
                 for s in range(group.layer + 1)]
            flat = offsets[i] + j
            assert util.scores[flat].item() == pytest.approx(max(r), abs=1e-4)
            assert util.best_state[flat].item() == int(np.argmax(r))


def test_saved_tensors_are_indexed_like_neuron_sets() -> None:
    model = make_model("phi3")  # fused gate_up_proj: gate rows 0..23, up rows 24..47
    means, _ = mean_hidden_states(model, EXAMPLES, progress=False)
    util = utilization(model, means, find_neuron_groups(model, include_gate=True),
                       progress=False)
    tensors = util.tensors()
    key = "model.layers.1.mlp.gate_up_proj::rows"
    scores, ranks = tensors[f"{key}::utilization"], tensors[f"{key}::rank"]
    assert scores.shape == (48,) and not scores.isnan().any() and (ranks > 0).all()
    up = next(i for i, g in enumerate(util.groups)
              if g.module == key.split("::")[0] and g.kind == "up")
    assert torch.equal(scores[24:], util.per_group(util.scores)[up])


def test_utilization_refuses_neurons_outside_the_residual_stream() -> None:
    model = make_model("llama")
    means, _ = mean_hidden_states(model, EXAMPLES, progress=False)
    gate = find_neuron_groups(model, {"mlp.up_proj": "cols"})
    with pytest.raises(NeftError, match="hidden state has 16"):
        utilization(model, means, gate, progress=False)


def test_rank_is_one_for_the_best_and_stable_on_ties() -> None:
    assert rank(torch.tensor([0.1, 0.5, 0.5, -1.0])).tolist() == [3, 1, 2, 4]


def fake_utilization(scores: list[float]) -> Utilization:
    groups = [NeuronGroup(UP.format(0), "rows", 0, 5, "up", 0, (5, 4)),
              NeuronGroup(DOWN.format(0), "cols", 0, 5, "down", 0, (4, 5))]
    return Utilization(groups, torch.tensor(scores, dtype=torch.float64),
                       torch.zeros(len(scores), dtype=torch.long))


def test_compare_counts_and_buckets_by_hand() -> None:
    before = fake_utilization([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])  # ranks 1..10 in order
    after = fake_utilization([1, 9, 8, 7, 6, 5, 4, 3, 2, 10])  # first and last swap
    trained = NeuronSet({UP.format(0): {"rows": [0]}})
    result = compare(before, after, trained, threshold=5, buckets=2)
    with pytest.raises(NeftError, match="buckets 11 is more than the 10 neurons ranked"):
        compare(before, after, trained, buckets=11)
    # rank changes: neuron 0: 1 -> 10 (+9, fell), neuron 9: 10 -> 1 (-9, rose), others 0
    assert result["strongly_affected"] == 2
    assert result["suppressed"] == 1 and result["promoted"] == 1
    assert result["trained"] == 1 and result["trained_strongly_affected"] == 1
    assert result["indirectly_affected"] == 1
    assert [b["mean_abs_rank_change"] for b in result["buckets"]] == [9 / 5, 9 / 5]
    assert result["mean_abs_rank_change"] == pytest.approx(1.8)
    same = compare(before, fake_utilization([10, 9, 8, 7, 6, 5, 4, 3, 2, 1]))
    assert same["strongly_affected"] == 0 and same["spearman"] == 1.0
    assert same["indirectly_affected"] is None


def test_threshold_scales_with_the_pool() -> None:
    assert scaled_threshold(704_512) == 100_000
    assert scaled_threshold(92_160) == 13_081  # SmolLM2-135M


# ----------------------------------------------------------------------------- CLI + plots


def assert_png(path: str) -> None:
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_distribution_and_overlap_write_plots(tmp_path, capsys) -> None:
    paths = []
    for name, neurons in zip("abc", hand_sets(), strict=True):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        neurons.save(paths[-1])
    out = str(tmp_path / "out")
    assert main(["analyze", "distribution", *paths, "--output_dir", out]) == 0
    assert main(["analyze", "overlap", *paths, "--labels", "A", "B", "C",
                 "--output_dir", out]) == 0
    printed = capsys.readouterr().out
    assert "up_proj.rows" in printed and "Jaccard" in printed
    for name in ("distribution", "overlap"):
        assert_png(os.path.join(out, f"{name}.png"))
    with open(os.path.join(out, "overlap.json")) as handle:
        assert json.load(handle)["labels"] == ["A", "B", "C"]
    assert main(["analyze", "overlap", paths[0], str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_utilization_identical_models_and_adapter(tiny_model_dir, toy_data_dir, tmp_path,
                                                      capsys) -> None:
    out = str(tmp_path / "same")
    args = ["analyze", "utilization", "--model", tiny_model_dir, "--data", toy_data_dir,
            "--split", "dev", "--quiet"]
    assert main([*args, "--reference", tiny_model_dir, "--output_dir", out]) == 0
    summary = json.load(open(os.path.join(out, "utilization.json")))
    comparison = summary["comparison"]
    assert comparison["mean_abs_rank_change"] == 0 and comparison["strongly_affected"] == 0
    assert summary["pool"] == 2 * 2 * 24 and summary["settings"]["examples"] == 4
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(out, "utilization.safetensors"))
    changes = [t for k, t in tensors.items() if k.endswith("::rank_change")]
    assert len(changes) == 4 and all((t == 0).all() for t in changes)
    assert_png(os.path.join(out, "utilization.png"))

    # a neft adapter that moved some neurons: its own neurons count as trained
    from neft.core.loading import load_model

    base, _ = load_model(tiny_model_dir)
    neurons = {"model.layers.1.mlp.up_proj": {"rows": list(range(12))},
               "model.layers.1.mlp.down_proj": {"cols": [0, 1]}}
    neft = get_neft_model(base, NeftConfig(neurons=neurons))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in neft.parameters():
            if param.requires_grad:
                param.normal_(0, 1.0)
    neft.save_pretrained(tmp_path / "adapter")
    out = str(tmp_path / "adapter-out")
    assert main([*args, "--adapter", str(tmp_path / "adapter"), "--output_dir", out]) == 0
    comparison = json.load(open(os.path.join(out, "utilization.json")))["comparison"]
    assert comparison["trained"] == 14
    assert comparison["mean_abs_rank_change"] > 0
    assert comparison["indirectly_affected"] == (comparison["strongly_affected"]
                                                 - comparison["trained_strongly_affected"])
    assert "strongly affected" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: --adapter and --reference exclude each other
        main([*args, "--adapter", str(tmp_path / "adapter"), "--reference", tiny_model_dir])
