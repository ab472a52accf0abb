"""Safety: files are only ever read as safetensors (a pickle would run code on load), model
code from a repository runs only when the user passes trust_remote_code, and a loaded
adapter's indices and deltas are checked before anything is written with them.

Each attack leaves a marker file if its code ran; the tests assert it never does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from neft import NeftConfig, NeftError, NeftModel, NeuronSet, get_neft_model
from neft.cli import build_parser
from neft.core.loading import load_model
from neft.evaluate import EvalConfig, load_for_eval
from neft.select import select_neurons
from neft.train import TrainConfig


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


def write_pickle(path: Path, marker: Path, zip_format: bool) -> None:
    if zip_format:  # what torch.save writes
        torch.save({"x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=4))


@pytest.mark.parametrize("zip_format", [False, True], ids=["pickle", "torch.save"])
def test_a_pickle_named_safetensors_is_refused_unopened(zip_format, tmp_path) -> None:
    marker = tmp_path / "PWNED"
    fake = tmp_path / "neurons.safetensors"
    write_pickle(fake, marker, zip_format)
    with pytest.raises(NeftError, match="pickle.* not safetensors; neft never unpickles"):
        NeuronSet.load(fake)
    # ... also as an adapter's weights file
    neft = get_neft_model(make_model("llama"), NeftConfig(
        neurons={"model.layers.0.mlp.up_proj": {"rows": [1]}}))
    neft.save_pretrained(tmp_path / "adapter")
    shutil.copy(fake, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(NeftError, match="never unpickles"):
        NeftModel.from_pretrained(make_model("llama"), tmp_path / "adapter")
    assert not marker.exists()


def save_tiny(folder: Path, tiny_model_dir: str) -> None:
    shutil.copytree(tiny_model_dir, folder)


def test_pickle_weights_are_never_loaded(tiny_model_dir, tmp_path) -> None:
    marker = tmp_path / "PWNED"
    model_dir = tmp_path / "model"
    save_tiny(model_dir, tiny_model_dir)
    (model_dir / "model.safetensors").unlink()
    write_pickle(model_dir / "pytorch_model.bin", marker, zip_format=True)
    with pytest.raises(NeftError, match="only pickle weights .*does not load"):
        load_model(str(model_dir))
    # a PEFT adapter with pickle weights only
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    write_pickle(lora / "adapter_model.bin", marker, zip_format=True)
    with pytest.raises(NeftError, match="no adapter_model.safetensors .*not loaded"):
        load_for_eval(tiny_model_dir, str(lora))
    assert not marker.exists()


def remote_code_model(tiny_model_dir: str, folder: Path, marker: Path) -> None:
    """A model folder whose config asks for its own Python code (auto_map)."""
    save_tiny(folder, tiny_model_dir)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="neft_test_custom", auto_map={
        "AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('remote code ran')\n"
        "from transformers import LlamaConfig as CustomConfig\n"
        "from transformers import LlamaForCausalLM as CustomModel\n")


def test_trust_remote_code_is_off_unless_given(tiny_model_dir, tmp_path) -> None:
    marker = tmp_path / "RAN"
    folder = tmp_path / "custom"
    remote_code_model(tiny_model_dir, folder, marker)
    with pytest.raises(NeftError, match="needs its own Python code .*--trust_remote_code true"):
        load_model(str(folder))
    with pytest.raises(NeftError, match="never runs such code"):
        select_neurons(str(folder), "magnitude", neurons=2, progress=False)
    with pytest.raises(NeftError, match="never runs such code"):  # loaded for its pass
        select_neurons(str(folder), "magnitude", neurons=2, avoid="massive", progress=False)
    assert not marker.exists()
    # the defaults, in the API and on the command line
    for cls in (TrainConfig, EvalConfig):
        field = {f.name: f for f in dataclasses.fields(cls)}["trust_remote_code"]
        assert field.default is False
    import inspect

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    args = build_parser().parse_args(["train", "--train_file", "x"])
    assert args.trust_remote_code is None  # not given: the dataclass default (False) holds


def adapter_dir(tmp_path: Path) -> Path:
    neft = get_neft_model(make_model("llama"), NeftConfig(neurons={
        "model.layers.0.mlp.up_proj": {"rows": [1, 5]},
        "model.layers.1.mlp.down_proj": {"cols": [2]}}))
    for _, layer in neft.neft_layers():
        for delta in layer.get_deltas():
            delta.fill_(0.5)
    folder = tmp_path / "adapter"
    neft.save_pretrained(folder)
    return folder


def tamper(folder: Path, change) -> None:
    path = folder / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata=metadata)


def set_item(key: str, value: torch.Tensor):
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = value
    return change


UP, DOWN = "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"
TAMPERING = [
    ("index past the layer", set_item(f"{UP}::rows", torch.tensor([1, 24])),
     "index 24 but the layer has only 24 rows"),
    ("negative index", set_item(f"{UP}::rows", torch.tensor([-1, 5])), "negative index"),
    ("fractional index", set_item(f"{UP}::rows", torch.tensor([1.5, 5.0])), "not integers"),
    ("unknown module", lambda t: t.update({"model.layers.9.mlp.up_proj::rows": torch.tensor([1])}),
     "does not have"),
    ("delta of the wrong shape", set_item(f"{UP}::delta_rows", torch.zeros(3, 16)),
     r"has shape \[3, 16\] but its indices need \[2, 16\]"),
    ("missing delta", lambda t: t.pop(f"{DOWN}::delta_cols"), "indices but no deltas"),
    ("integer delta", set_item(f"{UP}::delta_rows", torch.ones(2, 16, dtype=torch.int64)),
     "not floating point"),
    ("NaN delta", set_item(f"{UP}::delta_rows", torch.full((2, 16), float("nan"))),
     "NaN or infinite"),
]


@pytest.mark.parametrize("change, message", [(c, m) for _, c, m in TAMPERING],
                         ids=[n for n, _, _ in TAMPERING])
def test_tampered_adapter_is_refused_and_the_model_left_as_given(change, message,
                                                                  tmp_path) -> None:
    folder = adapter_dir(tmp_path)
    tamper(folder, change)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.pop("base_fingerprint")  # the bounds checks must hold without it
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(NeftError, match=message):
        NeftModel.from_pretrained(model, folder)
    after = model.state_dict()
    assert after.keys() == before.keys()  # no wrapper left inside
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_good_adapter_still_loads(tmp_path) -> None:
    loaded = NeftModel.from_pretrained(make_model("llama"), adapter_dir(tmp_path))
    layers = dict(loaded.neft_layers())
    assert torch.equal(layers[UP].get_deltas()[0], torch.full((2, 16), 0.5))


def test_merged_models_load_without_remote_code_or_pickle(tiny_model_dir, tmp_path) -> None:
    """What `neft merge` writes is plain safetensors that transformers loads by itself."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    neft = get_neft_model(model, NeftConfig(neurons={UP: {"rows": [3]}}))
    neft.merge_and_unload().save_pretrained(tmp_path / "merged")
    assert sorted(p.suffix for p in (tmp_path / "merged").iterdir()) == [".json", ".json",
                                                                          ".safetensors"]
    assert not [f for f in os.listdir(tmp_path / "merged") if f.endswith((".bin", ".py"))]


def test_result_files_get_ordinary_permissions(tmp_path):
    """Written through a private temp file, but readable like any file the user makes."""
    import os

    from neft.core.io import write_json

    path = tmp_path / "result.json"
    write_json(str(path), {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_wrap_that_fails_half_way_leaves_the_model_as_given(monkeypatch) -> None:
    """The second module's layer fails: the first must not stay wrapped, nor any
    requires_grad flag changed."""
    import neft.core.model

    made = []

    class FailsSecond(neft.core.model.NeuronDeltaLayer):
        def __init__(self, *args, **kwargs) -> None:
            made.append(1)
            if len(made) == 2:
                raise NeftError("the second layer fails")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(neft.core.model, "NeuronDeltaLayer", FailsSecond)
    model = make_model("llama")
    model.lm_head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(NeftError, match="the second layer fails"):
        get_neft_model(model, NeftConfig(neurons={UP: {"rows": [1]}, DOWN: {"cols": [2]}}))
    assert [n for n, _ in model.named_modules()] == names
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_module_already_wrapped_by_peft_is_refused_before_any_wrapping() -> None:
    """validate() sees through a wrapper's base_layer; wrapping it would fail half-way."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_model("llama"), LoraConfig(r=2, target_modules=["down_proj"]))
    inner = model.base_model.model
    names = [n for n, _ in inner.named_modules()]
    with pytest.raises(NeftError, match="neft trains neurons of nn.Linear or Conv1D"):
        get_neft_model(inner, NeftConfig(neurons={UP: {"rows": [1]}, DOWN: {"cols": [2]}}))
    assert [n for n, _ in inner.named_modules()] == names


def test_stacking_a_second_adapter_says_to_merge_the_first(tmp_path) -> None:
    folder = adapter_dir(tmp_path)
    loaded = NeftModel.from_pretrained(make_model("llama"), folder)
    for target in (loaded, loaded.base_model):
        with pytest.raises(NeftError, match="stacking a second one is not supported: merge "
                                            r"the first .*merge_and_unload"):
            NeftModel.from_pretrained(target, folder)
    merged = loaded.merge_and_unload()
    NeftModel.from_pretrained(merged, folder)  # onto the merged model: fine


def test_every_output_gets_the_users_umask(tiny_model_dir, tmp_path) -> None:
    """safetensors, mkstemp and mkdtemp create files 0600 and folders 0700: adapters,
    NeuronSets, merged models and data files must be as readable as anything the user
    makes (here under umask 027)."""
    from neft.cli import main
    from neft.data import write_jsonl

    previous = os.umask(0o027)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        neft = get_neft_model(model, NeftConfig(neurons={UP: {"rows": [3]}}))
        neft.save_pretrained(tmp_path / "adapter")
        select_neurons(tiny_model_dir, "random", neurons=3, progress=False).save(
            tmp_path / "set.safetensors")
        write_jsonl(str(tmp_path / "data.jsonl"), [{"a": 1}])
        assert main(["merge", "--model", tiny_model_dir, "--adapter", str(tmp_path / "adapter"),
                     "--output_dir", str(tmp_path / "merged")]) == 0
    finally:
        os.umask(previous)
    for folder, dirs, files in os.walk(tmp_path):
        for name in dirs:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o750, name
        for name in files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o640, name


def test_an_adapter_records_a_local_base_as_an_absolute_path(tiny_model_dir, tmp_path,
                                                             monkeypatch) -> None:
    """Typed relative, it would name another folder (or none) when used from elsewhere;
    hub ids and the embedded name stay as typed."""
    from neft.core.loading import recorded_name

    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    model, _ = load_model("base")
    neft = get_neft_model(model, NeftConfig(neurons={UP: {"rows": [3]}},
                                            base_model_name_or_path="base"))
    neft.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    assert recorded_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert recorded_name("smollm2-135m") == "smollm2-135m"
