"""Export a neft adapter for engines that take LoRA adapters (vLLM, TGI, ...) or plain PEFT.

A delta on k neurons of a layer W [out, in] is exactly a rank-k LoRA, ΔW = B A:

    rows R:  ΔW = E_R D_r        B = the one-hot columns E_R [out, k],  A = D_r [k, in]
    cols C:  ΔW = D_c E_C^T      B = D_c [out, k],  A = the one-hot rows E_C^T [k, in]

Rows and columns of one module are one LoRA whose ranks add (B and A concatenated), and
the scaling alpha/r is 1 for every module (alpha = r, globally and per module), so the
export is exact: no SVD, no loss. GPT-2's Conv1D gets peft's ``fan_in_fan_out``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import NeftError
from .card import CARD_NAME, lora_card
from .io import atomic_save_file, check_output_dir, staged_folder, write_json, write_text
from .loading import (
    ensure_embedded_model,
    is_embedded,
    load_adapter_base,
    load_model,
    recorded_name,
)
from .model import CONFIG_NAME, WEIGHTS_NAME, NeftModel, adapter_folder
from .neuron_set import NeuronSet, read_safetensors
from .neurons import is_conv1d, linear_shape, model_fingerprint

logger = logging.getLogger(__name__)

FORMATS = ("lora", "merged")
# Left in every folder export and merge write: --overwrite replaces only such a folder.
EXPORT_RECORD = "neft_export.json"
# Ranks vLLM accepts for --max-lora-rank (the usual padding targets).
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def check_neft_adapter(adapter_dir: str) -> dict[str, Any]:
    """The adapter's config, with a one-line refusal for folders that are not neft adapters
    (a LoRA adapter, a whole model)."""
    config_path = os.path.join(adapter_dir, CONFIG_NAME)
    if (os.path.isdir(adapter_dir) and not os.path.isfile(config_path)
            and os.path.isfile(os.path.join(adapter_dir, "config.json"))):
        raise NeftError(f"{adapter_dir} is a whole model (config.json, no {CONFIG_NAME}), not a "
                        "neft adapter: serve it as it is, or pass the adapter folder of `neft "
                        "train`")
    try:
        return NeftModel.read_config(adapter_dir)
    except NeftError as exc:
        if "adapter, not a neft one" in str(exc):
            raise NeftError(f"{adapter_dir} is already a PEFT adapter, not a neft one: peft and "
                            "LoRA engines load it as it is; pass the folder of a neft adapter"
                            ) from None
        raise


def base_skeleton(name: str, trust_remote_code: bool = False) -> nn.Module:
    """The base model's modules on the meta device, from its config alone: layer types and
    shapes without reading (or downloading) a single weight."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = ensure_embedded_model() if is_embedded(name) else os.path.expanduser(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        text = str(exc).strip()
        raise NeftError(f"cannot read the config of base model {name!r} "
                        f"({text.splitlines()[0] if text else type(exc).__name__}); pass "
                        "--model with a local model folder or a reachable hub id") from exc
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _shared_weights(model: nn.Module) -> dict[str, str]:
    """module path -> another module path that holds the same weight (tied embeddings)."""
    owners: dict[int, list[str]] = {}
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(path)
    return {p: next(o for o in paths if o != p) for paths in owners.values() if len(paths) > 1
            for p in paths}


def lora_factors(rows: torch.Tensor, cols: torch.Tensor, delta_rows: torch.Tensor,
                 delta_cols: torch.Tensor, shape: tuple[int, int], rank: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, in], B [out, r]) with B A = E_R D_r + D_c E_C^T; zero-padded to ``rank``."""
    out_features, in_features = shape
    k_rows, k_cols = rows.numel(), cols.numel()
    needed = k_rows + k_cols
    rank = needed if rank is None else rank
    dtype = delta_rows.dtype if k_rows else delta_cols.dtype
    lora_a = torch.zeros(rank, in_features, dtype=dtype)
    lora_b = torch.zeros(out_features, rank, dtype=dtype)
    if k_rows:
        lora_a[:k_rows] = delta_rows
        lora_b[rows, torch.arange(k_rows)] = 1
    if k_cols:
        lora_b[:, k_rows:needed] = delta_cols.to(dtype)
        lora_a[torch.arange(k_rows, needed), cols] = 1
    return lora_a, lora_b


def export_lora(adapter_dir: str, output_dir: str, *, model: str | None = None,
                max_rank: int | None = None, overwrite: bool = False,
                trust_remote_code: bool = False) -> dict[str, Any]:
    """Write a PEFT LoRA adapter folder equal to the neft adapter in ``adapter_dir`` (a
    folder, or the Hub id of one).

    ``max_rank``: pad every module's rank to this (an engine's fixed LoRA rank, e.g.
    vLLM's --max-lora-rank) and refuse modules with more neurons. ``model``: the base
    model (default: the one the adapter names); only its config is read. Returns what
    was written: modules, ranks and sizes.
    """
    if max_rank is not None and max_rank < 1:
        raise NeftError(f"--max_rank must be a positive rank (vLLM: {VLLM_RANKS}), not "
                        f"{max_rank}")
    given, adapter_dir = adapter_dir, adapter_folder(adapter_dir)
    config = check_neft_adapter(adapter_dir)
    _check_export_dir(output_dir, overwrite, [adapter_dir])
    base = model or config.get("base_model_name_or_path")
    if not base:
        raise NeftError(f"adapter {adapter_dir} does not name its base model; pass --model")
    weights_path = os.path.join(adapter_dir, WEIGHTS_NAME)
    neurons = NeuronSet.load(weights_path)
    tensors, _ = read_safetensors(weights_path)
    skeleton = base_skeleton(base, trust_remote_code)
    fingerprint = config.get("base_fingerprint")
    if fingerprint and fingerprint != model_fingerprint(skeleton):
        raise NeftError(f"adapter {adapter_dir} was trained on another base model than {base} "
                        f"(fingerprint {fingerprint}, {base}: {model_fingerprint(skeleton)}); "
                        "pass --model with the base it was made for")
    neurons.validate(skeleton)
    tied = _shared_weights(skeleton)
    mask_mode = config.get("mode") == "mask"

    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    conv1d = []
    for path in neurons.modules():
        layer = skeleton.get_submodule(path)
        if path in tied:
            raise NeftError(f"{path} shares its weight with {tied[path]} (tied embeddings): "
                            "neft changes only this module, but a LoRA on it, once merged "
                            "(peft, an engine), changes the shared weight and so both; use "
                            "--format merged (neft gives the module its own weight)")
        rows, cols = neurons.get(path, "rows"), neurons.get(path, "cols")
        shape = linear_shape(layer)
        needed = rows.numel() + cols.numel()
        if max_rank is not None and needed > max_rank:
            allowed = ", ".join(map(str, VLLM_RANKS))
            raise NeftError(f"{path} has {needed} neurons, more than --max_rank {max_rank}; "
                            f"pass a larger --max_rank (vLLM accepts {allowed}) or omit it")
        delta_rows = _delta(tensors, path, "rows", (rows.numel(), shape[1]), weights_path)
        delta_cols = _delta(tensors, path, "cols", (shape[0], cols.numel()), weights_path)
        if mask_mode and rows.numel() and cols.numel():
            # mask mode counts an entry in a selected row and column once (in both deltas)
            delta_rows = delta_rows.clone()
            delta_rows[:, cols] = 0
        lora_a, lora_b = lora_factors(rows, cols, delta_rows, delta_cols, shape, max_rank)
        state[f"base_model.model.{path}.lora_A.weight"] = lora_a.contiguous()
        state[f"base_model.model.{path}.lora_B.weight"] = lora_b.contiguous()
        ranks[path] = lora_a.shape[0]
        if is_conv1d(layer):
            conv1d.append(path)
    # fan_in_fan_out only tells peft how to merge a Conv1D's [in, out] weight; A and B are
    # laid out alike for both layer types (and peft sets it per layer when they mix).
    top = max(ranks.values())
    pattern = {path: r for path, r in ranks.items() if r != top}
    lora_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": recorded_name(model) if model else base,
        "r": top, "lora_alpha": top, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": bool(conv1d), "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }
    _check_peft_accepts(lora_config, skeleton)
    with staged_folder(output_dir) as staging:
        atomic_save_file(state, os.path.join(staging, WEIGHTS_NAME), {"format": "pt"})
        write_json(os.path.join(staging, CONFIG_NAME), lora_config)
        write_text(os.path.join(staging, CARD_NAME),
                   lora_card(base, given, len(ranks),
                             (min(ranks.values()), top), max_rank))
        _write_record(staging, "lora", given, adapter_dir, base)
    report = {"output_dir": output_dir, "modules": len(ranks), "min_rank": min(ranks.values()),
              "max_rank": top, "padded_to": max_rank,
              "bytes": os.path.getsize(os.path.join(output_dir, WEIGHTS_NAME)),
              "neft_bytes": os.path.getsize(weights_path)}
    logger.info("exported %s to %s: %d modules, rank %d-%d", adapter_dir, output_dir,
                report["modules"], report["min_rank"], report["max_rank"])
    return report


def _check_peft_accepts(lora_config: dict[str, Any], skeleton: nn.Module) -> None:
    """Let peft judge the LoRA before it is written, on the weightless skeleton (which this
    changes): it refuses modules it cannot adapt, e.g. a Mamba mixer's out_proj."""
    from peft import LoraConfig, inject_adapter_in_model

    try:
        inject_adapter_in_model(LoraConfig(**{k: v for k, v in lora_config.items()
                                              if k != "peft_type"}), skeleton)
    except (ValueError, TypeError, RuntimeError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else repr(exc)
        raise NeftError(f"peft would not load this LoRA ({reason}); use --format merged"
                        ) from exc


def _delta(tensors: dict[str, torch.Tensor], path: str, axis: str, shape: tuple[int, int],
           source: str) -> torch.Tensor:
    """One saved delta, checked as load_adapter_weights checks it."""
    if not shape[0] * shape[1]:
        return torch.zeros(shape)
    key = f"{path}::delta_{axis}"
    delta = tensors.get(key)
    if delta is None or not delta.dtype.is_floating_point or tuple(delta.shape) != shape:
        raise NeftError(f"{source}: {key!r} is missing or not a {list(shape)} float tensor; "
                        "the file is damaged: use another checkpoint")
    if not bool(torch.isfinite(delta).all()):
        raise NeftError(f"{source}: {key!r} holds NaN or infinite values (training diverged?); "
                        "use an earlier checkpoint")
    return delta


def merge(model_name: str | None, adapter: str, output_dir: str, overwrite: bool = False,
          trust_remote_code: bool = False) -> str:
    """The base model with the adapter's deltas added (exact), saved whole with its
    tokenizer to ``output_dir`` (`neft merge`, `neft export --format merged`). ``adapter``:
    a folder, or the Hub id of one."""
    return _merge(model_name, adapter, adapter_folder(adapter), output_dir, overwrite,
                  trust_remote_code)


def _merge(model_name: str | None, given: str, adapter: str, output_dir: str,
           overwrite: bool, trust_remote_code: bool) -> str:
    """merge, with the adapter as given and the folder it resolved to."""
    base_name = model_name or NeftModel.saved_base_name(adapter)
    _check_export_dir(output_dir, overwrite, [adapter, base_name], "merged")
    if model_name is None:
        base, tokenizer = load_adapter_base(base_name, adapter,
                                            trust_remote_code=trust_remote_code)
    else:
        base, tokenizer = load_model(model_name, trust_remote_code=trust_remote_code)
    merged = NeftModel.from_pretrained(base, adapter).merge_and_unload()
    with staged_folder(output_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_record(staging, "merged", given, adapter, base_name)
    return output_dir


def _check_export_dir(output_dir: str, overwrite: bool, inputs: list[str],
                      verb: str = "exported") -> None:
    check_output_dir(output_dir, overwrite, inputs, marker=EXPORT_RECORD, what="export",
                     verb=verb, kind="a folder that neft export or neft merge wrote")


def _write_record(folder: str, format: str, adapter: str, adapter_dir: str, base: str
                  ) -> None:
    """What the folder was made from: provenance, and the mark --overwrite looks for.
    ``adapter`` as given (a folder, or a Hub id), ``adapter_dir`` the folder it was read from."""
    local = os.path.expanduser(adapter)
    write_json(os.path.join(folder, EXPORT_RECORD),
               {"format": format,
                "adapter": os.path.abspath(local) if os.path.exists(local) else adapter,
                "adapter_folder": os.path.abspath(adapter_dir),
                "base_model": recorded_name(base) if base else base,
                "neft_version": __version__})


def export(adapter_dir: str, output_dir: str, format: str = "lora", *, model: str | None = None,
           max_rank: int | None = None, overwrite: bool = False,
           trust_remote_code: bool = False) -> dict[str, Any]:
    """``lora`` (export_lora) or ``merged`` (the same as ``neft merge``)."""
    if format not in FORMATS:
        raise NeftError(f"format {format!r} is not known; use one of {', '.join(FORMATS)}")
    if format == "merged":
        if max_rank is not None:
            raise NeftError("--max_rank is for --format lora; a merged model has no rank")
        folder = adapter_folder(adapter_dir)  # resolved once: a Hub id is one download
        check_neft_adapter(folder)
        _merge(model, adapter_dir, folder, output_dir, overwrite, trust_remote_code)
        return {"output_dir": output_dir, "format": "merged"}
    return {**export_lora(adapter_dir, output_dir, model=model, max_rank=max_rank,
                          overwrite=overwrite, trust_remote_code=trust_remote_code),
            "format": "lora"}
