"""Serving and sharing: `neft export` (an exact PEFT LoRA, or merged), adapter cards,
push_to_hub's folder, and training with trl's SFTTrainer."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_batch, make_model
from peft import PeftModel
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from neft import NeftConfig, NeftModel, export_lora, get_neft_model
from neft.cli import main
from neft.core.card import front_matter
from neft.errors import NeftError

hf_logging.disable_progress_bar()

NEURONS = {
    # up rows and down columns as selected, plus a module with rows and columns both
    # (their LoRA ranks add, and an entry in both gets both deltas)
    "llama": {"model.layers.0.mlp.up_proj": {"rows": [1, 3, 20]},
              "model.layers.1.mlp.down_proj": {"cols": [0, 5, 7, 23]},
              "model.layers.1.self_attn.q_proj": {"rows": [2, 9], "cols": [2, 4]}},
    # GPT-2's Conv1D stores W transposed: peft's fan_in_fan_out
    "gpt2": {"transformer.h.0.mlp.c_fc": {"rows": [1, 3, 9]},
             "transformer.h.1.mlp.c_proj": {"cols": [0, 5, 60, 61]},
             "transformer.h.1.attn.c_attn": {"rows": [2, 40], "cols": [2]}},
}


def _trained(arch: str, seed: int = 0) -> NeftModel:
    """A NeftModel whose deltas are random (as if trained)."""
    model = get_neft_model(make_model(arch), NeftConfig(neurons=NEURONS[arch]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.neft_layers():
            for delta in (layer.neft_delta_rows, layer.neft_delta_cols):
                delta.copy_(torch.randn(delta.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(params=sorted(NEURONS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    arch = request.param
    base = tmp_path / "base"
    make_model(arch).save_pretrained(base)
    model = _trained(arch)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    return {"arch": arch, "base": str(base), "adapter": str(adapter), "model": model,
            "root": tmp_path}


def test_lora_export_equals_neft(saved: dict) -> None:
    """Plain peft loads the export; logits and merged weights equal neft's (fp32)."""
    out = saved["root"] / "lora"
    report = export_lora(saved["adapter"], str(out), model=saved["base"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["fan_in_fan_out"] == (saved["arch"] == "gpt2")
    assert report["min_rank"] == 3 and report["max_rank"] == 4 and report["modules"] == 3
    ids = make_batch()
    expected = saved["model"](ids).logits
    lora = PeftModel.from_pretrained(make_model(saved["arch"]), str(out))
    torch.testing.assert_close(lora(ids).logits, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(make_model(saved["arch"])(ids).logits, expected, atol=1e-3)

    merged = lora.merge_and_unload().state_dict()
    neft_merged = NeftModel.from_pretrained(make_model(saved["arch"]),
                                            saved["adapter"]).merge_and_unload().state_dict()
    assert merged.keys() == neft_merged.keys()
    for name, weight in neft_merged.items():
        # bit for bit but where a selected row meets a selected column: (W + D_c) + D_r
        # in neft, W + (D_r + D_c) in peft, one rounding apart
        torch.testing.assert_close(merged[name], weight, rtol=0, atol=1e-7)
    assert all(torch.equal(merged[n], w) for n, w in neft_merged.items() if "mlp" in n)


def test_max_rank_pads_with_zeros(saved: dict) -> None:
    out = saved["root"] / "lora16"
    report = export_lora(saved["adapter"], str(out), model=saved["base"], max_rank=16)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"]) == (16, 16, {})
    assert report["min_rank"] == report["max_rank"] == 16
    tensors = load_file(out / "adapter_model.safetensors")
    assert all(t.shape[0 if ".lora_A." in k else 1] == 16 for k, t in tensors.items())
    ids = make_batch()
    lora = PeftModel.from_pretrained(make_model(saved["arch"]), str(out))
    torch.testing.assert_close(lora(ids).logits, saved["model"](ids).logits, rtol=1e-5,
                               atol=1e-6)


def test_export_cli_reports_sizes(saved: dict, capsys: pytest.CaptureFixture) -> None:
    out = saved["root"] / "cli-lora"
    assert main(["export", "--adapter", saved["adapter"], "--format", "lora",
                 "--output_dir", str(out), "--model", saved["base"], "--max_rank", "8"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.search(r"LoRA adapter written to .*cli-lora: 3 modules, rank 8, [\d.]+ MB "
                     r"\(neft adapter [\d.]+ MB, x[\d.]+\)", line), line
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json",
                                       "adapter_model.safetensors", "neft_export.json"]
    assert json.loads((out / "neft_export.json").read_text())["format"] == "lora"
    assert front_matter((out / "README.md").read_text())["library_name"] == "peft"
    # an earlier export may be replaced, with --overwrite only
    assert main(["export", "--adapter", saved["adapter"], "--output_dir", str(out),
                 "--model", saved["base"], "--overwrite"]) == 0
    # the base given by --model is the one recorded, as a path that works from anywhere
    os.chdir(saved["root"])
    try:
        assert main(["export", "--adapter", saved["adapter"], "--output_dir", "relative",
                     "--model", "base"]) == 0
    finally:
        os.chdir(os.path.dirname(__file__))
    recorded = json.loads((saved["root"] / "relative" / "adapter_config.json").read_text())
    export_record = json.loads((saved["root"] / "relative" / "neft_export.json").read_text())
    assert recorded["base_model_name_or_path"] == export_record["base_model"] == saved["base"]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, pattern: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


def test_export_bad_input(saved: dict, capsys: pytest.CaptureFixture) -> None:
    """One line, exit 2, nothing written or changed."""
    root, adapter, base = saved["root"], saved["adapter"], saved["base"]
    lora = root / "lora"
    export_lora(adapter, str(lora), model=base)
    notes = root / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    before = {p: sorted(os.listdir(root / p)) for p in os.listdir(root)}
    E = ["export", "--model", base]
    _one_line_exit_2([*E, "--adapter", str(lora), "--output_dir", str(root / "x")], capsys,
                     r"is already a PEFT adapter, not a neft one: peft and LoRA engines load it")
    _one_line_exit_2([*E, "--adapter", base, "--output_dir", str(root / "x")], capsys,
                     r"is a whole model \(config.json, no adapter_config.json\), not a neft "
                     "adapter")
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", str(root / "x"),
                      "--max_rank", "3"], capsys,
                     r"has 4 neurons, more than --max_rank 3; pass a larger --max_rank "
                     r"\(vLLM accepts 8, 16")
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", str(notes)], capsys,
                     r"is not empty; pass --overwrite to replace it")
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", str(notes), "--overwrite"],
                     capsys, r"is not a folder that neft export or neft merge wrote; "
                     "--overwrite replaces only an earlier export")
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", adapter, "--overwrite"],
                     capsys, r"which is being exported from; write the export to a new folder")
    # nor the folder that holds it (a training run with its checkpoints)
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", os.path.dirname(adapter),
                      "--overwrite"], capsys, r"which is being exported from")
    _one_line_exit_2([*E, "--adapter", adapter, "--output_dir", str(root / "x"),
                      "--format", "merged", "--max_rank", "8"], capsys,
                     r"--max_rank is for --format lora")
    other = root / "other-base"
    transformers.AutoModelForCausalLM.from_config(
        make_model("opt").config).save_pretrained(other)
    _one_line_exit_2(["export", "--model", str(other), "--adapter", adapter, "--output_dir",
                      str(root / "x")], capsys, r"was trained on another base model")
    assert {p: sorted(os.listdir(root / p)) for p in os.listdir(root)
            if p != "other-base"} == before


def test_tied_weights_refused(tmp_path: Path) -> None:
    """A delta on a tied lm_head changes the embeddings too; a LoRA could not."""
    base = make_model("llama")
    base.config.tie_word_embeddings = True
    base.tie_weights()
    base.save_pretrained(tmp_path / "base")
    model = get_neft_model(base, NeftConfig(neurons={"lm_head": {"rows": [3]}}))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(NeftError, match="lm_head shares its weight with .*embed_tokens.*use "
                                        "--format merged"):
        export_lora(str(tmp_path / "adapter"), str(tmp_path / "out"), model=str(tmp_path / "base"))
    assert not (tmp_path / "out").exists()



def test_export_refuses_a_lora_peft_would_not_load(tmp_path: Path) -> None:
    """peft judges the LoRA before it is written: a Mamba mixer's out_proj (which neft can
    train, named with target_modules) is a module peft refuses to adapt."""
    base = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2))
    base.save_pretrained(tmp_path / "base")
    model = get_neft_model(base, NeftConfig(neurons={
        "backbone.layers.0.mixer.in_proj": {"rows": [1]},
        "backbone.layers.1.mixer.out_proj": {"cols": [2]}}))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(NeftError, match=r"peft would not load this LoRA \(.*out_proj.*\); use "
                                        "--format merged"):
        export_lora(str(tmp_path / "adapter"), str(tmp_path / "out"), model=str(tmp_path / "base"))
    assert not (tmp_path / "out").exists()


def _save_one_row_adapter(tiny_model_dir: str, folder: Path) -> None:
    """An adapter of the saved tiny model whose one trained row moved by 0.5."""
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_neft_model(base, NeftConfig(neurons={"model.layers.0.mlp.up_proj": {"rows": [1]}},
                                            base_model_name_or_path=tiny_model_dir))
    with torch.no_grad():
        model.base_model.model.layers[0].mlp.up_proj.neft_delta_rows.fill_(0.5)
    model.save_pretrained(folder)


def test_export_merged_is_neft_merge(tiny_model_dir: str, tmp_path: Path) -> None:
    _save_one_row_adapter(tiny_model_dir, tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")
    assert main(["export", "--adapter", adapter, "--format", "merged",
                 "--output_dir", str(tmp_path / "a")]) == 0
    assert main(["merge", "--adapter", adapter, "--output_dir", str(tmp_path / "b"),
                 "--trust_remote_code", "false"]) == 0
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from neft.evaluate.load import load_for_eval

    with pytest.raises(NeftError, match="is adapter .* merged already"):  # not twice
        load_for_eval(str(tmp_path / "b"), adapter)


def test_cli_takes_an_adapter_hub_id(tiny_model_dir: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`neft export`, `neft merge` and `load_for_eval` (`neft eval`) load an adapter by the
    Hub id push_to_hub gave it, as from_pretrained does, and record the id, not the cache."""
    import huggingface_hub

    _save_one_row_adapter(tiny_model_dir, tmp_path / "snapshot")
    asked: list[str] = []

    def fake_snapshot_download(repo_id: str, **_: object) -> str:
        asked.append(repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert main(["merge", "--adapter", "me/my-adapter", "--output_dir", str(tmp_path / "m")]) == 0
    assert main(["export", "--adapter", "me/my-adapter", "--output_dir", str(tmp_path / "l")]) == 0
    for folder in ("m", "l"):
        record = json.loads((tmp_path / folder / "neft_export.json").read_text())
        assert record["adapter"] == "me/my-adapter"
    from neft.evaluate.load import load_for_eval

    loaded, _, described = load_for_eval(tiny_model_dir, "me/my-adapter")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight,
                       merged.model.layers[0].mlp.up_proj.weight)
    assert asked == ["me/my-adapter"] * 3 and described["adapter_type"] == "neft"
    assert described["adapter"] == "me/my-adapter"  # reports name the id, not the cache
    for adapter in ("me/my-adapter", str(tmp_path / "snapshot")):  # merged once is enough
        with pytest.raises(NeftError, match="merged already"):
            load_for_eval(str(tmp_path / "m"), adapter)

# ----------------------------------------------------------------------------- cards


def test_adapter_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    make_model("llama").save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a base\n")
    neurons = {"model.layers.0.mlp.up_proj": {"rows": [1, 3]},
               "model.layers.1.mlp.down_proj": {"cols": [0, 5, 7]}}
    from neft import NeuronSet

    selection = NeuronSet.from_mapping(neurons, metadata={
        "scorer": "fast-probe", "seed": 3, "data": "train.jsonl", "data_examples": 24,
        "data_fingerprint": "abc123", "budget": {"neurons": 5, "parameters": 80,
                                                 "percent": 0.5, "requested": "neurons=5"}})
    model = get_neft_model(make_model("llama"), NeftConfig(
        neurons=selection, base_model_name_or_path=str(base)))
    model.training_info = {"global_step": 7, "train_loss": 1.25, "best_eval_loss": 1.5}
    model.save_pretrained(tmp_path / "adapter")
    text = (tmp_path / "adapter" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "neft" and meta["license"] == "mit"
    assert "neft" in meta["tags"] and "base_model" not in meta  # a local path is no hub id
    for wanted in ("| layer | down_proj cols | up_proj rows | total |", "| 0 | 0 | 2 | 2 |",
                   "| 1 | 3 | 0 | 3 |", "scorer: `fast-probe` (seed 3)", "fingerprint `abc123`",
                   "budget: 5 neurons = 80 parameters", "optimizer steps: 7",
                   "final training loss: 1.2500", "best dev loss: 1.5000",
                   "NeftModel.from_pretrained", "neft export --adapter", "PeftModel"):
        assert wanted in text, wanted
    # a reload saved again keeps the training section (its steps and losses)
    reloaded = NeftModel.from_pretrained(make_model("llama"), tmp_path / "adapter")
    reloaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "README.md").read_text() == text
    # a README that neft did not write (the user's notes, a Hub checkout's card) is kept
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("# my notes\n")
    reloaded.save_pretrained(tmp_path / "notes")
    assert (tmp_path / "notes" / "README.md").read_text() == "# my notes\n"
    assert (tmp_path / "notes" / "adapter_model.safetensors").is_file()
    # loading ignores the card; an adapter without one (older neft) loads too
    (tmp_path / "adapter" / "README.md").write_text("not yaml at all: [")
    NeftModel.from_pretrained(make_model("llama"), tmp_path / "adapter")
    os.remove(tmp_path / "adapter" / "README.md")
    NeftModel.from_pretrained(make_model("llama"), tmp_path / "adapter")


def test_card_hub_base() -> None:
    from neft import NeuronSet
    from neft.core.card import adapter_card

    neurons = NeuronSet.from_mapping({"model.layers.0.mlp.up_proj": {"rows": [1]}})
    text = adapter_card({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                         "num_parameters": 16}, neurons)
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in meta["tags"]
    embedded = front_matter(adapter_card({"base_model_name_or_path": "smollm2-135m"}, neurons))
    assert embedded["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert embedded["license"] == "apache-2.0"


def test_push_to_hub_uploads_the_saved_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    seen: dict = {}

    def fake_create_repo(repo_id: str, **kwargs: object) -> None:
        seen["created"] = (repo_id, kwargs)

    def fake_upload_folder(*, repo_id: str, folder_path: str, **kwargs: object) -> str:
        seen["uploaded"] = (repo_id, sorted(os.listdir(folder_path)), kwargs)
        seen["config"] = json.loads(Path(folder_path, "adapter_config.json").read_text())
        return "commit"

    monkeypatch.setattr(huggingface_hub, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload_folder)
    model = _trained("llama")
    assert model.push_to_hub("me/my-adapter", private=True) == "commit"
    assert seen["created"] == ("me/my-adapter", {"private": True, "token": None,
                                                 "exist_ok": True})
    repo, files, kwargs = seen["uploaded"]
    assert repo == "me/my-adapter" and kwargs["commit_message"] == "Upload neft adapter"
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert seen["config"]["peft_type"] == "NEFT"


def test_from_pretrained_takes_a_hub_id(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """What push_to_hub uploaded loads by its id, as the card says; a failed download is
    one line naming the id."""
    import huggingface_hub

    model = _trained("llama")
    model.save_pretrained(tmp_path / "snapshot")
    seen: dict = {}

    def fake_snapshot_download(**kwargs: object) -> str:
        seen.update(kwargs)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = NeftModel.from_pretrained(make_model("llama"), "me/my-adapter", revision="v1")
    assert seen["repo_id"] == "me/my-adapter" and seen["revision"] == "v1"
    assert set(seen["allow_patterns"]) == {"adapter_config.json", "adapter_model.safetensors",
                                           "README.md"}
    ids = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)

    def offline(**_: object) -> str:
        raise OSError("We couldn't connect to the Hub\nmore text")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(NeftError, match=r"adapter me/other is not a local folder, and the Hub "
                                        r"did not give it \(We couldn't connect to the Hub\)"):
        NeftModel.from_pretrained(make_model("llama"), "me/other")


def test_peft_calls_a_neft_model_cannot_serve_say_what_to_do_instead(tmp_path: Path) -> None:
    model = _trained("llama")
    for call, hint in [(lambda: model.load_adapter(tmp_path, "second"), "load_adapter_weights"),
                       (lambda: model.set_adapter("other"), "holds one adapter"),
                       (lambda: model.add_adapter("x", None), "holds one adapter"),
                       (lambda: model.delete_adapter("default"), "model.unload"),
                       (lambda: model.disable_adapters(), "with model.disable_adapter"),
                       (lambda: model.merge_and_unload(adapter_names=["other"]), "one adapter"),
                       (lambda: NeftModel.from_pretrained(make_model("llama"), tmp_path,
                                                          adapter_name="b"), "one adapter")]:
        with pytest.raises(NeftError, match=hint):
            call()


def test_safe_merge_refuses_deltas_that_are_not_finite() -> None:
    model = _trained("llama")
    ids = make_batch()
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0, 0] = float("nan")
    with pytest.raises(NeftError, match="NaN or inf: merging would break the model; nothing "
                                        "was merged"):
        model.merge_and_unload(safe_merge=True, progressbar=True)
    with pytest.raises(NeftError, match="nothing was merged"):
        model.merge_adapter(safe_merge=True)
    assert not any(layer.merged for _, layer in model.neft_layers())
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0, 0] = 0.0
        expected = model(input_ids=ids).logits
        model.merge_adapter(safe_merge=True, adapter_names=["default"])
        assert all(layer.merged for _, layer in model.neft_layers())
        torch.testing.assert_close(model(input_ids=ids).logits, expected)


# ----------------------------------------------------------------------------- TRL


def test_trl_sft_trainer(tiny_model_dir: str, tmp_path: Path) -> None:
    """trl's SFTTrainer trains a NeftModel; the saved adapter reloads to equal outputs."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig

    from neft import NeftSFTTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_neft_model(base, NeftConfig(neurons={
        "model.layers.0.mlp.up_proj": {"rows": [1, 3]},
        "model.layers.1.mlp.down_proj": {"cols": [0, 5]}}, base_model_name_or_path=tiny_model_dir))
    data = Dataset.from_list([{"text": f"the {a} small file"} for a in ("red", "blue", "old",
                                                                       "new")])
    out = tmp_path / "sft"
    args = SFTConfig(output_dir=str(out), max_steps=3, per_device_train_batch_size=2,
                     learning_rate=1e-2, logging_steps=1, save_steps=2, report_to=[],
                     use_cpu=True, bf16=False, max_length=16, disable_tqdm=True)
    trainer = NeftSFTTrainer(model=model, args=args, train_dataset=data,
                             processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(
        os.listdir(out))
    assert "model.safetensors" not in os.listdir(out)  # the adapter, not the whole model
    assert "adapter_model.safetensors" in os.listdir(out / "checkpoint-2")
    assert "optimizer steps: 3" in (out / "README.md").read_text()
    model.eval()
    ids = tokenizer(["the red small file"], return_tensors="pt").input_ids
    reloaded = NeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    trained = model(ids).logits
    assert torch.equal(reloaded(ids).logits, trained)
    with model.disable_adapter():
        assert not torch.equal(model(ids).logits, trained)  # it did train
