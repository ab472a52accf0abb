"""The benchmark machinery on a tiny model (no timing assertions), and the weight-synced
fast path of NeuronDeltaLayer that the benchmark's targets rely on."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_batch, make_model
from test_core import pick_neurons

from neft import NeftConfig, get_neft_model
from neft.errors import NeftError
from neft.experiments.bench import (
    NOTES_MARKER,
    BenchConfig,
    add_ratios,
    check_targets,
    format_report,
    measure,
    model_config,
    resolve,
    run_benchmark,
    write_results,
)


def spec(mode: str, neurons: int = 0, lora_rank: int = 0) -> dict:
    return {"model": "tiny-random", "device": "cpu", "dtype": "float32", "batch_size": 2,
            "max_length": 16, "warmup_steps": 1, "steps": 2, "learning_rate": 1e-3,
            "threads": torch.get_num_threads(), "gradient_checkpointing": False,
            "autocast": None, "seed": 0, "mode": mode,
            "budget": "lora-r8" if neurons else None, "budget_neurons": neurons,
            "neurons": neurons, "lora_rank": lora_rank}


def skeleton(name: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config(name))


def test_budgets_match_lora_and_the_papers_share_of_the_pool() -> None:
    smollm = skeleton("smollm2-135m-random")  # 30 x (1536 + 1536) = 92,160 neurons of 576
    assert resolve("lora-r8", smollm) == (4240, 8)  # 2,442,240 parameters
    assert resolve("paper-6", smollm) == (13081, 25)  # 100,000 / 704,512 of the pool
    assert resolve("500", smollm)[0] == 500
    with pytest.raises(NeftError, match="not known"):
        resolve("paper-7", smollm)
    with pytest.raises(NeftError, match="unknown mode"):
        BenchConfig(modes="neft,dora")


def test_every_mode_reports_its_numbers() -> None:
    neurons, rank = resolve("lora-r8", skeleton("tiny-random"))
    runs = [measure(spec(mode, neurons if mode in ("neft", "neft-mask", "lora") else 0, rank))
            for mode in ("floor", "neft", "neft-mask", "lora", "ft-inout", "full")]
    runs[0]["budget"] = "lora-r8"  # floor runs beside each budget's modes
    by_mode = {r["mode"]: r for r in runs}
    for run in runs:
        assert len(run["step_times_s"]) == 3 and run["step_s"] > 0 and run["peak_mb"] > 0
        assert run["tokens_per_s"] == pytest.approx(2 * 16 / run["step_s"])
    floor, neft, mask = by_mode["floor"], by_mode["neft"], by_mode["neft-mask"]
    assert floor["trainable"] == floor["optimizer_state_bytes"] == floor["adapter_bytes"] == 0
    # Compact deltas: AdamW's two moments of exactly the selected values, nothing dense.
    assert neft["trainable"] == neft["parameters_with_grad"] == neurons * 64
    assert neft["optimizer_state_bytes"] == 2 * neft["trainable"] * 4
    assert mask["trainable"] == neft["trainable"]
    assert mask["optimizer_state_bytes"] == 2 * mask["parameters_with_grad"] * 4
    assert mask["parameters_with_grad"] > mask["trainable"]  # the paper's dense state
    assert by_mode["lora"]["trainable"] == neft["trainable"]  # budget matched to LoRA r8
    assert by_mode["full"]["trainable"] == by_mode["full"]["total_parameters"]
    assert neft["adapter_bytes"] <= neft["trainable"] * 4 * 1.05 + neurons * 8 + 16_384
    add_ratios(runs, "lora-r8")
    assert floor["time_vs_floor"] == 1.0 and by_mode["lora"]["time_vs_lora"] == 1.0
    checks = check_targets(runs)
    assert {c["target"].split(" <=")[0].split(" ==")[0] for c in checks} >= {
        "neft step time", "neft peak memory", "optimizer state"}
    assert all(c["passed"] for c in checks if c["target"].startswith("optimizer state"))



def test_torch_compile_measures_the_compiled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--torch_compile` runs every mode's steps through torch.compile (here its eager
    backend: the layers' compiled path is test_core's)."""
    compiled: list[str] = []
    real = torch.compile

    def eager_compile(model: torch.nn.Module, **_: object) -> torch.nn.Module:
        compiled.append(type(model).__name__)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    neurons, rank = resolve("lora-r8", skeleton("tiny-random"))
    for mode in ("floor", "neft"):
        run = measure({**spec(mode, neurons if mode == "neft" else 0, rank),
                       "torch_compile": True})
        assert run["step_s"] > 0 and run["trainable"] == (neurons * 64 if mode == "neft" else 0)
    assert compiled == ["LlamaForCausalLM", "NeftModel"]

def test_benchmark_runs_each_mode_in_its_own_process_and_writes_files(tmp_path) -> None:
    config = BenchConfig(model="tiny-random", modes="floor,neft,full", budgets="lora-r8",
                         sweep="paper-3", per_device_train_batch_size=2, max_length=16,
                         warmup_steps=1, steps=1, threads=1, output_dir=str(tmp_path),
                         name="speed")
    results = run_benchmark(config, log=lambda *a, **k: None)
    assert [(r["mode"], r["budget"]) for r in results["runs"]] == [
        ("floor", "lora-r8"), ("neft", "lora-r8"), ("full", None), ("floor", "paper-3"),
        ("neft", "paper-3")]
    assert not any("error" in r for r in results["runs"])
    (tmp_path / "speed.md").write_text(f"old table\n{NOTES_MARKER}\nhand-written notes\n")
    written = write_results(results, str(tmp_path), "speed")
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["speed.json", "speed.md",
                                                            "speed.png"]
    report = (tmp_path / "speed.md").read_text()
    assert "old table" not in report and report.endswith("hand-written notes\n")
    assert "| lora-r8 | neft | 256 |" in format_report(results)
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["runs"][4]["time_vs_floor"] == pytest.approx(
        results["runs"][4]["step_s"] / results["runs"][3]["step_s"])
    assert not list(tmp_path.glob("*.tmp-*"))


# ----------------------------------------------------------------------------- the fast path


def trained(fast: bool, fused: bool = False, checkpointing: bool = False
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and delta gradients after a few AdamW steps, with the base weight holding
    W0 + D (fast) or with x D^T added separately (the fallback)."""
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    if not fast:
        for _, layer in neft.neft_layers():
            layer.sync_weight = False
    if checkpointing:
        neft.gradient_checkpointing_enable()
    params = [p for p in neft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, fused=fused or None)
    neft.train()
    for step in range(3):
        ids = make_batch(seed=step)
        neft(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    ids = make_batch(seed=9)
    out = neft(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), [p.grad for p in params]


@pytest.mark.parametrize("options", [{}, {"fused": True}, {"checkpointing": True}])
def test_weight_synced_deltas_train_as_separate_deltas(options: dict) -> None:
    fast_logits, fast_grads = trained(True, **options)
    slow_logits, slow_grads = trained(False, **options)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=1e-5)
    for fast, slow in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_weight_sync_never_disturbs_a_pending_backward_and_sees_data_writes() -> None:
    model = make_model("llama")
    neft = get_neft_model(model, NeftConfig(neurons=pick_neurons(model)))
    ids = make_batch()
    first = neft(input_ids=ids, labels=ids).loss
    second = neft(input_ids=make_batch(seed=1), labels=ids).loss  # no rewrite: unchanged
    with torch.no_grad(), neft.disable_adapter():  # the base, from a copy of the weight
        neft(input_ids=ids)
    other = torch.nn.Parameter(torch.zeros(3))  # another model's optimizer steps meanwhile
    other.grad = torch.ones(3)
    torch.optim.SGD([other], lr=0.1).step()
    third = neft(input_ids=ids, labels=ids).loss  # checked, found unchanged, not rewritten
    (first + second + third).backward()  # would raise if a weight was changed in place
    layer = next(layer for _, layer in neft.neft_layers())
    with torch.no_grad():
        before = neft(input_ids=ids).logits
    layer.neft_delta_rows.data.add_(0.5)  # invisible to version counters and hooks
    assert not torch.allclose(neft(input_ids=ids, labels=ids).logits.detach(), before)


def test_state_dict_holds_the_original_base_weight() -> None:
    model = make_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    neurons = pick_neurons(model)
    neft = get_neft_model(model, NeftConfig(neurons=neurons))
    optimizer = torch.optim.AdamW([p for p in neft.parameters() if p.requires_grad], lr=1e-2)
    ids = make_batch()
    neft(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    expected = neft(input_ids=ids).logits.detach()  # the base weight now holds W0 + D
    state = {k: v.clone() for k, v in neft.state_dict().items()}
    for name, value in base.items():
        key = next(k for k in state if k.replace(".base_layer.", ".").endswith(name))
        assert torch.equal(state[key], value), name
    fresh = get_neft_model(make_model("llama"), NeftConfig(neurons=neurons))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(input_ids=ids).logits, expected)
