"""Speed and memory of NeFT against its baselines, each training mode in its own process.

Modes (all with fused AdamW, Trainer's default, on the same token batches; warm-up steps
discarded, median of the rest):
``floor`` (nothing trainable, backward to the input embeddings: the least any method that
trains layer 0 must pay), ``neft`` (compact deltas), ``neft-separate`` (compact deltas with
the base weight left untouched, x D^T added separately: the fallback, not run by default),
``neft-mask`` (the paper's gradient masking), ``lora`` (peft, all linear layers but
lm_head, rank matched to the budget), PEFT's peers at neft's trainable count (``lora-mlp``,
``shira``, ``shira-mlp``, ``supertuning``, ``supertuning-mlp``: neft.train.peers),
``ft-inout`` (all MLP up/down weights) and ``full``: every method of neft.train's
registry, set up as `neft train` sets it up (LoRA's alpha is TrainConfig's default, 16; it
scales the update and costs no time or memory).

Budgets: ``lora-r8`` (neurons whose parameters equal LoRA r8's), ``paper-6`` (the share of
the neuron pool that the paper's 6% budget, 100k of Llama-2-7B's 704,512 neurons, is) or
a plain neuron count. Which neurons does not matter for speed: they are random.

A separate process per mode keeps each peak memory its own: on CPU the peak RSS of the
training steps only (the kernel's high-water mark is reset after the model is built), on
CUDA the peak allocated and reserved memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import option
from ..core.io import atomic_text, check_output_files, check_output_folder, save_figure
from ..core.loading import ensure_embedded_model, is_embedded, load_model
from ..core.neuron_set import neuron_set_from_groups
from ..core.neurons import PAPER_POOL, count_parameters, find_neuron_groups, pool_size
from ..errors import NeftError
from ..select import ScoreInput, get_scorer
from ..select.budget import band_groups, choose, linear_shapes, lora_parameters
from ..train import METHODS, MethodSpec, get_method

NEFT_MODES = ("neft", "neft-separate", "neft-mask")
# floor, the neft variants, then every method of neft.train's registry (random is neft's
# speed: which neurons does not matter here).
BENCH_MODES = ("floor", *NEFT_MODES, *(m for m in METHODS if m not in ("neft", "random")))
DEFAULT_MODES = ("floor", "neft", "neft-mask", "lora", "ft-inout", "full")
BUDGET_MODES = (*NEFT_MODES, *(m for m, method in METHODS.items()
                               if method.budget in ("lora_rank", "parameters")))
LORA_RANK_MODES = tuple(m for m, method in METHODS.items() if method.budget == "lora_rank")
# The paper's budgets on Llama-2-7B: percent of all parameters -> neurons of 704,512.
PAPER_BUDGETS = {"0.4": 6_250, "1.5": 25_000, "3": 50_000, "6": 100_000, "9": 150_000,
                 "12": 200_000}
# Random-initialised shapes: timing and memory do not depend on the weights, so these
# need nothing downloaded or cached.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m-random": dict(  # SmolLM2-135M-Instruct, exactly
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0),
    "llama-1b-random": dict(  # Llama-3.2-1B
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama2-7b-random": dict(  # Llama-2-7B, the paper's model
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
        max_position_embeddings=4096, rms_norm_eps=1e-5),
    "tiny-random": dict(  # for tests and for catching bugs of the GPU script on a CPU
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=512),
}
# Targets of the issue, checked at these budgets.
TARGET_BUDGETS = ("lora-r8", "paper-6")
MAX_TIME_VS_FLOOR = 1.08
MAX_TIME_VS_LORA = 0.85
ADAPTER_SLACK = 1.05
INDEX_BYTES = 8  # int64 neuron indices in the adapter file


@dataclass
class BenchConfig:
    """Every option of `neft bench` (flags and YAML keys)."""

    model: str = option(f"random-initialised shape ({', '.join(SHAPES)}) or anything "
                        "load_model takes (smollm2-135m, a path)", "smollm2-135m-random")
    device: str = option("cpu or cuda", "cpu")
    dtype: str = option("dtype of the model weights: float32 or bfloat16", "float32")
    per_device_train_batch_size: int = option("sequences per step", 4)
    max_length: int = option("tokens per sequence", 128)
    warmup_steps: int = option("steps run first and discarded", 2)
    steps: int = option("timed steps; the median is reported", 5)
    modes: str = option(f"comma-separated, of {', '.join(BENCH_MODES)}", ",".join(DEFAULT_MODES))
    budgets: str = option("budgets of the main table: lora-rR, paper-P (P of "
                          f"{', '.join(PAPER_BUDGETS)}) or a neuron count", "lora-r8,paper-6")
    sweep: str = option("budgets of the plot (empty: no sweep)",
                        ",".join(f"paper-{p}" for p in PAPER_BUDGETS))
    learning_rate: float = option("AdamW learning rate", 1e-4)
    threads: int = option("torch threads (CPU)", 2)
    gradient_checkpointing: bool = option("checkpoint every block, in every mode", False)
    torch_compile: bool = option("torch.compile the model in every mode (its compile time "
                                 "falls in the warm-up steps: keep them >= 1)", False)
    autocast: str | None = option("run forward/backward under torch.autocast in this dtype")
    layers: str | None = option("draw the neuron modes' neurons only from these blocks (a "
                                "layer band: 'upper:15', '15-29'): below it backward stops")
    seed: int = option("seed of the data, the neurons and the weights", 0)
    output_dir: str = option("where <name>.json, .md and .png go", "outputs/bench")
    name: str | None = option("file name stem (default speed_<device>)")
    overwrite: bool = option("replace an earlier <name>.json/.md/.png (notes below the "
                             "marker in .md are kept)", False)
    timeout: int = option("seconds one mode may take before it is stopped", 1200)
    time_budget: int | None = option("seconds for the whole run: modes not started by then are "
                                     "reported as skipped, and none runs past it")

    def __post_init__(self) -> None:
        unknown = [m for m in _split(self.modes) if m not in BENCH_MODES]
        if unknown:
            raise NeftError(f"unknown mode {unknown[0]!r}; use some of {', '.join(BENCH_MODES)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise NeftError(f"dtype={self.dtype!r}: use float32, bfloat16 or float16")
        if self.steps < 1 or self.warmup_steps < 0:
            raise NeftError("steps must be at least 1 and warmup_steps at least 0")
        for budget in _split(self.budgets) + _split(self.sweep):
            _parse_budget(budget)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_budget(budget: str) -> tuple[str, str]:
    """('lora', rank) | ('paper', percent) | ('neurons', count)."""
    if budget.startswith("lora-r") and budget[6:].isdigit() and int(budget[6:]) > 0:
        return "lora", budget[6:]
    if budget.startswith("paper-") and budget[6:] in PAPER_BUDGETS:
        return "paper", budget[6:]
    if budget.isdigit() and int(budget) > 0:
        return "neurons", budget
    raise NeftError(f"budget {budget!r} is not known; use lora-r8, paper-6 (one of "
                    f"{', '.join(PAPER_BUDGETS)}) or a neuron count")


# ----------------------------------------------------------------------------- models


def model_config(name: str) -> Any:
    """The transformers config of a shape preset or of a loadable model."""
    from transformers import AutoConfig, LlamaConfig

    if name in SHAPES:
        return LlamaConfig(**SHAPES[name])

    return AutoConfig.from_pretrained(ensure_embedded_model() if is_embedded(name) else name)


def build_model(name: str, dtype: torch.dtype, device: str) -> nn.Module:
    """Random init for shape presets (built on the device: a 7B shape never sits on CPU),
    else ``load_model``."""
    if name in SHAPES:
        from transformers import AutoModelForCausalLM

        with torch.device(device):
            model = AutoModelForCausalLM.from_config(model_config(name), dtype=dtype)
    else:

        model, _ = load_model(name, dtype=dtype)
        model.to(device)
    return model.train()


def lora_rank_parameters(model: nn.Module) -> int:
    """Parameters of LoRA rank 1 on every linear layer but lm_head."""

    return lora_parameters(linear_shapes(model), 1)


def resolve(budget: str, model: nn.Module) -> tuple[int, int]:
    """(neurons, LoRA rank with the nearest parameter count) of a budget on ``model``."""
    kind, value = _parse_budget(budget)
    groups = find_neuron_groups(model)
    neuron_params = sum(g.count * g.neuron_params for g in groups) / pool_size(groups)
    per_rank = lora_rank_parameters(model)
    if kind == "lora":
        neurons = round(int(value) * per_rank / neuron_params)
        return neurons, int(value)
    if kind == "paper":
        neurons = round(PAPER_BUDGETS[value] / PAPER_POOL * pool_size(groups))
    else:
        neurons = int(value)
    if neurons > pool_size(groups):
        raise NeftError(f"budget {budget} = {neurons:,} neurons exceeds the pool of "
                        f"{pool_size(groups):,}")
    return neurons, max(1, round(neurons * neuron_params / per_rank))


def random_neurons(model: nn.Module, count: int, seed: int, layers: str | None = None) -> Any:
    """``count`` neurons drawn uniformly from the candidate pool (seeded; only the blocks
    ``layers`` names, when given): select's random scorer and its top-``count`` choice,
    without fingerprinting the model."""
    groups = find_neuron_groups(model)
    scores, _ = get_scorer("random").fn(ScoreInput(model, groups, model, seed))
    keep = band_groups(groups, layers, count)
    picked = choose([groups[i] for i in keep], [scores[i] for i in keep], count, None)
    chosen = {keep[j]: indices for j, indices in picked.items()}
    return neuron_set_from_groups(groups, chosen, {"scorer": "random", "seed": seed,
                                                   **({"layers": layers} if layers else {})})


def prepare(model: nn.Module, mode: str, neurons: int, lora_rank: int, seed: int,
            layers: str | None = None) -> tuple[nn.Module, int]:
    """(the model to train, its trainable parameters as the method counts them). Every mode
    but floor (nothing trainable) and the neft variants is set up by neft.train's method
    registry, as `neft train` does; neuron methods get ``neurons`` random neurons."""
    for param in model.parameters():
        param.requires_grad_(False)
    if mode == "floor":
        return model, 0
    method = get_method("neft" if mode.startswith("neft") else mode)
    selection = (random_neurons(model, neurons, seed, layers)
                 if method.budget in ("neurons", "parameters") else None)
    spec = MethodSpec(neurons=selection if method.selects_neurons else None,
                      budget_parameters=None if selection is None else selection.num_parameters(),
                      neft_mode="mask" if mode == "neft-mask" else "compact",
                      lora_r=lora_rank, seed=seed)
    model = method.prepare(model, spec)
    if method.selects_neurons:
        if mode == "neft-separate":
            for _, layer in model.neft_layers():
                layer.sync_weight = False
        return model, model.get_nb_trainable_parameters()[0]
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- one mode


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


class MemoryMeter:
    """Peak memory of the training steps alone (not of building the model)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def reset(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return {"start_mb": torch.cuda.memory_allocated() / 2**20}
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to VmRSS
            handle.write("5")
        return {"start_mb": _rss_kb("VmRSS") / 1024}

    def peak(self) -> dict[str, float]:
        if self.cuda:
            return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                    "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
        return {"peak_mb": _rss_kb("VmHWM") / 1024}


def make_batches(count: int, batch: int, length: int, vocab: int, seed: int,
                 device: torch.device) -> list[torch.Tensor]:
    """The same random token batches in every mode."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, length), generator=generator).to(device)
            for _ in range(count)]


def _enable_checkpointing(model: nn.Module) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "neft_layers"):
        model.gradient_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of AdamW's moment buffers (its one-value step counters are left out)."""
    if optimizer is None:
        return 0
    return sum(value.nbytes for state in optimizer.state.values()
               for key, value in state.items() if key in ("exp_avg", "exp_avg_sq"))


def adapter_bytes(model: nn.Module, mode: str) -> int:
    """Size of what the method saves: the neft / peft adapter file as written, or the bytes
    of the trained tensors for ft-inout and full (not written: that is the model itself)."""
    if mode not in BUDGET_MODES:
        return sum(p.nbytes for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))


def forward_loss(model: nn.Module, mode: str, ids: torch.Tensor,
                 run: nn.Module | None = None) -> torch.Tensor:
    """The training loss of one batch through ``run`` (``model`` compiled, or ``model``);
    ``floor`` feeds embeddings that need a gradient, so that backward runs through every
    layer with nothing trainable."""
    run = model if run is None else run
    if mode == "floor":
        inputs = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        return run(inputs_embeds=inputs, labels=ids, use_cache=False).loss
    return run(input_ids=ids, labels=ids, use_cache=False).loss


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one mode for warm-up + timed steps in this process; its numbers as a dict."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], dtype, spec["device"])
    total = count_parameters(model)
    mode = spec["mode"]
    model, trainable = prepare(model, mode, spec["neurons"], spec["lora_rank"], spec["seed"],
                               spec.get("layers"))
    if spec["gradient_checkpointing"]:
        _enable_checkpointing(model)
    run = torch.compile(model) if spec.get("torch_compile") else model
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused, as Trainer's default optimizer (adamw_torch_fused) is.
    optimizer = torch.optim.AdamW(params, lr=spec["learning_rate"], fused=True) if params else None
    embeddings = model.get_input_embeddings()
    batches = make_batches(spec["warmup_steps"] + spec["steps"], spec["batch_size"],
                           spec["max_length"], embeddings.num_embeddings, spec["seed"], device)
    autocast = (torch.autocast(device.type, dtype=getattr(torch, spec["autocast"]))
                if spec["autocast"] else contextlib.nullcontext())
    meter = MemoryMeter(device)
    memory = meter.reset()
    times: list[float] = []
    for ids in batches:
        start = time.perf_counter()
        with autocast:
            loss = forward_loss(model, mode, ids, run)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory.update(meter.peak())
    step = statistics.median(times[spec["warmup_steps"]:])
    return {
        "mode": mode, "budget": spec["budget"], "budget_neurons": spec["budget_neurons"],
        "neurons": spec["neurons"],
        "lora_rank": spec["lora_rank"] if mode in LORA_RANK_MODES else None,
        "trainable": trainable, "total_parameters": total,
        "parameters_with_grad": sum(p.numel() for p in params),
        "step_s": step, "tokens_per_s": spec["batch_size"] * spec["max_length"] / step,
        "step_times_s": times, **memory,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "adapter_bytes": adapter_bytes(model, mode),
        "value_bytes": params[0].element_size() if params else 0,
    }


# ----------------------------------------------------------------------------- orchestration


def plan(config: BenchConfig) -> list[dict[str, Any]]:
    """One spec per process, in order of running. ``floor`` runs once per budget, just
    before that budget's modes, so that each ratio to it compares runs close in time (the
    machine's speed drifts by a few percent over minutes); ft-inout and full run once."""
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        skeleton = AutoModelForCausalLM.from_config(model_config(config.model))
    modes = _split(config.modes)
    common = {
        "model": config.model, "device": config.device, "dtype": config.dtype,
        "batch_size": config.per_device_train_batch_size, "max_length": config.max_length,
        "warmup_steps": config.warmup_steps, "steps": config.steps,
        "learning_rate": config.learning_rate, "threads": config.threads,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "torch_compile": bool(config.torch_compile), "autocast": config.autocast,
        "seed": config.seed, "layers": config.layers,
        "budget": None, "budget_neurons": 0, "neurons": 0, "lora_rank": 0,
    }
    budget_free = [{**common, "mode": m} for m in modes if m not in BUDGET_MODES + ("floor",)]
    budgets = list(dict.fromkeys(_split(config.budgets) + _split(config.sweep)))
    if not budgets:
        return [{**common, "mode": m} for m in modes if m == "floor"] + budget_free
    specs: list[dict[str, Any]] = []
    for budget in budgets:
        neurons, rank = resolve(budget, skeleton)
        band_groups(find_neuron_groups(skeleton), config.layers, neurons)  # fails before runs
        at_budget = {**common, "budget": budget, "budget_neurons": neurons, "lora_rank": rank}
        specs += [{**at_budget, "mode": m, "neurons": 0 if m == "floor" else neurons}
                  for m in modes if m in BUDGET_MODES + ("floor",)]
        if budget == budgets[0]:
            specs += budget_free
    return specs


def run_in_subprocess(spec: dict[str, Any], timeout: int) -> dict[str, Any]:
    """``measure(spec)`` in a fresh interpreter, so that its peak memory is its own."""
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]),
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as folder:
        spec_path, result_path = (os.path.join(folder, n) for n in ("spec.json", "result.json"))
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        try:
            worker = [sys.executable, "-m", "neft.experiments.bench", spec_path, result_path]
            done = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**_identity(spec), "error": f"timed out after {timeout} s"}
        if done.returncode or not os.path.isfile(result_path):
            lines = (done.stderr or done.stdout).strip().splitlines()
            return {**_identity(spec), "error": lines[-1] if lines else f"exit {done.returncode}"}
        with open(result_path) as handle:
            return json.load(handle)


def _identity(spec: dict[str, Any]) -> dict[str, Any]:
    return {"mode": spec["mode"], "budget": spec["budget"],
            "budget_neurons": spec["budget_neurons"], "neurons": spec["neurons"],
            "lora_rank": spec["lora_rank"] if spec["mode"] in LORA_RANK_MODES else None}


def add_ratios(runs: list[dict[str, Any]], first_budget: str | None) -> None:
    """Time and memory over floor's and over LoRA's at the same budget; budget-free modes
    (ft-inout, full) over those at the first budget of the main table."""
    ok = [r for r in runs if "error" not in r]
    floors = {r["budget"]: r for r in ok if r["mode"] == "floor"}
    loras = {r["budget"]: r for r in ok if r["mode"] == "lora"}
    for run in ok:
        budget = run["budget"] or first_budget
        for key, ref in (("floor", floors.get(budget)), ("lora", loras.get(budget))):
            run[f"time_vs_{key}"] = run["step_s"] / ref["step_s"] if ref else None
            run[f"memory_vs_{key}"] = run["peak_mb"] / ref["peak_mb"] if ref else None


def check_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets at the budgets matched to LoRA r8 and to the paper's 6%."""
    checks: list[dict[str, Any]] = []
    by_key = {(r["mode"], r["budget"]): r for r in runs if "error" not in r}
    for budget in TARGET_BUDGETS:
        neft = by_key.get(("neft", budget))
        if neft is None:
            continue
        lora = by_key.get(("lora", budget))

        def add(what: str, value: float | None, limit: float | None, passed: bool | None,
                budget: str = budget) -> None:
            checks.append({"budget": budget, "target": what, "value": value, "limit": limit,
                           "passed": passed})

        if neft.get("time_vs_floor") is not None:
            add(f"neft step time <= {MAX_TIME_VS_FLOOR} x floor", neft["time_vs_floor"],
                MAX_TIME_VS_FLOOR, neft["time_vs_floor"] <= MAX_TIME_VS_FLOOR)
        if lora is not None:
            add(f"neft step time <= {MAX_TIME_VS_LORA} x lora", neft["time_vs_lora"],
                MAX_TIME_VS_LORA, neft["time_vs_lora"] <= MAX_TIME_VS_LORA)
            add("neft peak memory <= lora's (MB)", neft["peak_mb"], lora["peak_mb"],
                neft["peak_mb"] <= lora["peak_mb"])
        expected = 2 * neft["trainable"] * neft["value_bytes"]
        add("optimizer state == 2 x trainable x bytes per value", neft["optimizer_state_bytes"],
            expected, neft["optimizer_state_bytes"] == expected)
        limit = (neft["trainable"] * neft["value_bytes"] * ADAPTER_SLACK
                 + neft["neurons"] * INDEX_BYTES)
        add(f"adapter bytes <= trainable x bytes x {ADAPTER_SLACK} + int64 indices",
            neft["adapter_bytes"], limit, neft["adapter_bytes"] <= limit)
    return checks


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_benchmark(config: BenchConfig, log: Any = print) -> dict[str, Any]:
    """Every planned mode in its own process; the results with ratios and target checks."""
    specs = plan(config)
    runs = []
    started = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        label = f"{spec['mode']} @ {spec['budget']}" if spec["budget"] else spec["mode"]
        log(f"[{i}/{len(specs)}] {label} ...", end=" ", flush=True)
        timeout = config.timeout
        if config.time_budget is not None:
            timeout = min(timeout, int(config.time_budget - (time.perf_counter() - started)))
        if timeout <= 0:
            result = {**_identity(spec), "error": "skipped: time_budget spent"}
        else:
            result = run_in_subprocess(spec, timeout)
        runs.append(result)
        log(result.get("error") or f"{result['step_s']:.3f} s/step, "
            f"peak {result['peak_mb']:,.0f} MB")
    main = _split(config.budgets)
    add_ratios(runs, main[0] if main else None)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv), "config": dataclasses.asdict(config),
        "machine": machine(), "wall_s": time.perf_counter() - started,
        "runs": runs, "targets": check_targets(runs),
    }


# ----------------------------------------------------------------------------- reporting


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _rows(runs: list[dict[str, Any]], budgets: list[str | None]) -> Iterator[dict[str, Any]]:
    """Runs grouped by budget (budget-free modes right after the first budget's)."""
    order = {m: i for i, m in enumerate(BENCH_MODES)}
    rank = {b: 2 * i for i, b in enumerate(b for b in budgets if b is not None)}
    rank[None] = 1
    chosen = [r for r in runs if r["budget"] in budgets]
    yield from sorted(chosen, key=lambda r: (rank[r["budget"]], order[r["mode"]]))


def format_table(results: dict[str, Any], budgets: list[str | None]) -> str:
    """A markdown table of the runs at ``budgets`` (None: the budget-free modes)."""
    cuda = results["config"]["device"].startswith("cuda")
    memory = "peak alloc MB" if cuda else "peak RSS MB"
    head = ["budget", "mode", "neurons", "trainable", "step s", "tokens/s", memory]
    head += ["reserved MB"] if cuda else []
    head += ["optim state MB", "adapter MB", "time/floor", "time/lora", "mem/floor", "mem/lora"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in _rows(results["runs"], budgets):
        mode = f"lora r{run['lora_rank']}" if run["mode"] == "lora" else run["mode"]
        cells = [run["budget"] or "-", mode, f"{run['neurons']:,}" if run["neurons"] else "-"]
        if "error" in run:
            cells += [f"error: {run['error']}"] + [""] * (len(head) - 4)
        else:
            cells += [f"{run['trainable']:,}", _fmt(run["step_s"], 3),
                      _fmt(run["tokens_per_s"], 0), _fmt(run["peak_mb"], 0)]
            cells += [_fmt(run["peak_reserved_mb"], 0)] if cuda else []
            cells += [_fmt(run["optimizer_state_bytes"] / 2**20, 1),
                      _fmt(run["adapter_bytes"] / 2**20, 2), _fmt(run["time_vs_floor"]),
                      _fmt(run["time_vs_lora"]), _fmt(run["memory_vs_floor"]),
                      _fmt(run["memory_vs_lora"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_targets(checks: list[dict[str, Any]]) -> str:
    lines = ["| budget | target | value | limit | met |", "|---|---|---|---|---|"]
    for c in checks:
        digits = 3 if isinstance(c["limit"], float) and c["limit"] < 10 else 0
        lines.append(f"| {c['budget']} | {c['target']} | {_fmt(c['value'], digits)} | "
                     f"{_fmt(c['limit'], digits)} | {'yes' if c['passed'] else 'NO'} |")
    return "\n".join(lines)


def format_report(results: dict[str, Any]) -> str:
    config = results["config"]
    main = [None, *_split(config["budgets"])]
    sweep = [b for b in _split(config["sweep"]) if b not in main]
    parts = [
        f"# neft bench: {config['model']}, {config['device']}, {config['dtype']}, batch "
        f"{config['per_device_train_batch_size']} x {config['max_length']} tokens",
        "",
        f"{results['date']}; {results['machine'].get('gpu') or results['machine']['cpu']}, "
        f"{config['threads']} threads, torch {results['machine']['torch']}; fused AdamW; "
        f"median of {config['steps']} steps after {config['warmup_steps']} warm-up; each mode in "
        "its own process; floor runs again before each budget's modes, and ratios are to the "
        "floor and LoRA of the same budget (ft-inout and full: of the first budget).",
        "", f"Command: `{results['command']}`", "", format_table(results, main),
    ]
    if sweep:
        parts += ["", "Sweep (the paper's budgets, scaled by share of the neuron pool):", "",
                  format_table(results, sweep)]
    if results["targets"]:
        parts += ["", "Targets:", "", format_targets(results["targets"])]
    return "\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Step time and peak memory against budget for the sweep (and the main budgets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "step_s", "step time (s)"),
                           (axes[1], "peak_mb", "peak memory (MB)")):
        for mode, style in (("floor", "k.:"), ("neft", "o-"), ("neft-separate", "o:"),
                            ("neft-mask", "s--"), ("lora", "^-"), ("lora-mlp", "^:"),
                            ("shira", "v-"), ("shira-mlp", "v:"), ("supertuning", "D-"),
                            ("supertuning-mlp", "D:")):
            points = sorted((r["budget_neurons"], r[key]) for r in runs
                            if r["mode"] == mode and r["budget"])
            if points:
                ax.plot(*zip(*points, strict=True), style, label=mode)
        for mode, color in (("ft-inout", "tab:purple"), ("full", "tab:red")):
            value = next((r[key] for r in runs if r["mode"] == mode), None)
            if value is not None:
                ax.axhline(value, color=color, linestyle=":", label=mode)
        ax.set_xscale("log")
        paper = sorted({(r["budget_neurons"], r["budget"]) for r in runs
                        if (r["budget"] or "").startswith("paper-")})
        if paper:
            ax.set_xticks([n for n, _ in paper],
                          [f"{b[6:]}%\n{n:,}" for n, b in paper], fontsize=8)
            ax.minorticks_off()
        for budget, neurons in sorted({(r["budget"], r["budget_neurons"]) for r in runs
                                       if (r["budget"] or "").startswith("lora-")}):
            ax.axvline(neurons, color="gray", linestyle="--", linewidth=0.8,
                       label=f"budget = LoRA {budget[5:]}")
        ax.set_xlabel("budget: the paper's % of a 7B -> neurons here")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    config = results["config"]
    fig.suptitle(f"{config['model']} on {config['device']} ({config['dtype']}), batch "
                 f"{config['per_device_train_batch_size']} x {config['max_length']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, format="png")


NOTES_MARKER = "<!-- notes: everything below this line is kept when the file is rewritten -->"


def write_results(results: dict[str, Any], output_dir: str, name: str) -> list[str]:
    """<name>.json, .md (keeping hand-written notes below NOTES_MARKER) and .png, atomically."""
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, name)
    report = format_report(results)
    if os.path.isfile(stem + ".md"):
        with open(stem + ".md") as handle:
            old = handle.read()
        if NOTES_MARKER in old:
            report += "\n" + NOTES_MARKER + old.split(NOTES_MARKER, 1)[1]
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", report)):
        with atomic_text(stem + suffix) as handle:
            handle.write(text)
    written = [stem + ".json", stem + ".md"]
    if any(r["budget"] for r in results["runs"] if "error" not in r):
        plot(results, stem + ".png")
        written.append(stem + ".png")
    return written


def main(config: BenchConfig) -> int:
    """Run, print the report, write the files; exit status 1 if any mode failed."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise NeftError("device cuda asked for but torch sees no CUDA device")
    stem = os.path.join(config.output_dir, config.name or f"speed_{config.device}")
    check_output_folder(config.output_dir)  # before minutes of measuring
    check_output_files([stem + ext for ext in (".json", ".md", ".png")], config.overwrite)
    results = run_benchmark(config)
    print()
    print(format_report(results))
    for path in write_results(results, config.output_dir, config.name or f"speed_{config.device}"):
        print(f"wrote {path}")
    return 1 if any("error" in r for r in results["runs"]) else 0


if __name__ == "__main__":  # a worker: python -m neft.experiments.bench spec.json result.json
    with open(sys.argv[1]) as spec_file:
        outcome = measure(json.load(spec_file))
    with open(sys.argv[2], "w") as result_file:
        json.dump(outcome, result_file)
