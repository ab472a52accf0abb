"""A model to evaluate: a base model, a full or merged model folder, or a base plus a neft
or PEFT adapter folder (merged into the weights)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..core.export import EXPORT_RECORD
from ..core.io import read_json
from ..core.loading import (
    EMBEDDED_NAMES,
    EMBEDDED_ORIGIN,
    load_adapter_base,
    load_model,
)
from ..core.model import CONFIG_NAME as ADAPTER_CONFIG
from ..core.model import NeftModel, adapter_folder, read_adapter_config
from ..errors import NeftError

# ----------------------------------------------------------------------------- models


def _is_adapter_only(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, ADAPTER_CONFIG))
            and not os.path.isfile(os.path.join(path, "config.json")))


def _refuse_merged_twice(model: str, adapter: str, adapter_dir: str) -> None:
    """A model `neft merge` made from this adapter (given as ``adapter``, read from
    ``adapter_dir``) holds its deltas already."""
    record = os.path.join(model, EXPORT_RECORD)
    if not os.path.isfile(record):
        return
    made = read_json(record)
    if made.get("format") != "merged":
        return
    folders = [f for f in (made.get("adapter_folder"), made.get("adapter"))
               if isinstance(f, str) and os.path.isdir(f)]
    if made.get("adapter") == adapter or (os.path.isdir(adapter_dir) and any(
            os.path.samefile(f, adapter_dir) for f in folders)):
        raise NeftError(f"model {model} is adapter {adapter} merged already "
                        f"({EXPORT_RECORD}): drop --adapter, or pass the base model")


def load_for_eval(
    model: str | None = None,
    adapter: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, description) for a base model, a full/merged model folder, or a
    base plus a neft or PEFT (e.g. LoRA) adapter (a folder, or the Hub id of one).

    An adapter folder given as model is taken as the adapter. The adapter's base is model,
    else the base_model_name_or_path it recorded. Adapters are merged into the weights
    (exact for neft and LoRA), so generation runs at the plain model's speed. The model
    goes to the GPU when there is one.
    """
    if model and adapter is None and _is_adapter_only(os.path.expanduser(model)):
        model, adapter = None, model
    given = adapter
    if adapter:
        adapter = adapter_folder(adapter)
    saved = read_adapter_config(os.path.expanduser(adapter), peft=True) if adapter else {}
    if model and adapter and given:
        _refuse_merged_twice(os.path.expanduser(model), given, os.path.expanduser(adapter))
    base = model or saved.get("base_model_name_or_path") or EMBEDDED_NAMES[0]
    if base == EMBEDDED_ORIGIN:
        base = EMBEDDED_NAMES[0]
    if model is None and saved.get("base_model_name_or_path"):
        loaded, tokenizer = load_adapter_base(base, adapter, dtype=dtype,
                                              trust_remote_code=trust_remote_code)
    else:
        loaded, tokenizer = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
    kind = None
    if adapter:
        kind = str(saved.get("peft_type", "")).upper()
        if kind == "NEFT":

            loaded = NeftModel.from_pretrained(loaded, os.path.expanduser(adapter))
            loaded = loaded.merge_and_unload()
        elif kind:
            from peft import PeftModel

            folder = os.path.expanduser(adapter)
            if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
                raise NeftError(f"{adapter} has no adapter_model.safetensors (a pickle "
                                "adapter_model.bin is not loaded: unpickling can run code); "
                                "save the adapter with safe_serialization=True")
            try:
                loaded = PeftModel.from_pretrained(loaded, folder)
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                text = str(exc).strip()
                raise NeftError(f"adapter {adapter} does not fit model {base} "
                                f"({text.splitlines()[0] if text else type(exc).__name__}); "
                                "pass the base model it was trained on as --model") from exc
            if kind == "LORA":
                loaded = loaded.merge_and_unload()
        else:
            raise NeftError(f"{adapter}/{ADAPTER_CONFIG} has no peft_type: it is neither a neft "
                            "nor a PEFT adapter")
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    loaded.eval()
    return loaded, tokenizer, {"model": base, "adapter": given,
                               "adapter_type": kind.lower() if kind else None}
