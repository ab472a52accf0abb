"""Candidate matrices, one at a time, from a model in memory or a safetensors checkpoint.

Comparing two 7B checkpoints must not need two models in memory: a checkpoint is read
tensor by tensor with safetensors' ``safe_open`` (sharded checkpoints through
``model.safetensors.index.json``), so only about one layer is resident at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..core.layers import full_tensor
from ..core.neurons import NeuronGroup, is_conv1d
from ..errors import NeftError

INDEX_NAME = "model.safetensors.index.json"
WeightSource = nn.Module | str | os.PathLike


class Checkpoint:
    """Lazy reader of a safetensors checkpoint: a file, or a folder with one file or an index."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.files = self._tensor_files()

    def _tensor_files(self) -> dict[str, Path]:
        """Tensor name -> the file that holds it (reads headers only)."""
        path = self.path
        if path.is_dir():
            if (path / INDEX_NAME).is_file():
                weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
                return {name: path / file for name, file in weight_map.items()}
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise NeftError(f"{path} has no *.safetensors files; save the fine-tuned model "
                                "with save_pretrained (safetensors) or pass a .safetensors file")
        elif path.is_file():
            files = [path]
        else:
            raise NeftError(f"{path}: no such checkpoint file or folder")
        names: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    names.update(dict.fromkeys(handle.keys(), file))
            except Exception as exc:  # safetensors raises several types for bad files
                raise NeftError(f"{file} is not a readable safetensors file ({exc}); it may be "
                                "truncated or corrupted: copy or save it again") from exc
        return names

    def key_for(self, module: str) -> str:
        """The tensor name of ``<module>.weight``, allowing a missing or extra leading prefix
        (a bare ``LlamaModel`` saves ``layers.0...``, a causal LM ``model.layers.0...``)."""
        name = f"{module}.weight"
        if name in self.files:
            return name
        found = [k for k in self.files if k.endswith("." + name) or name.endswith("." + k)]
        if len(found) != 1:
            raise NeftError(f"checkpoint {self.path} has no tensor for {name}"
                            + (f" (several match: {found[:3]})" if found else "")
                            + "; is it a fine-tuned copy of this base model?")
        return found[0]

    def get(self, module: str) -> torch.Tensor:
        key = self.key_for(module)
        with safe_open(str(self.files[key]), framework="pt") as handle:
            return handle.get_tensor(key)


def logical_matrices(source: WeightSource, model: nn.Module, modules: list[str],
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """(module, weight as [out, in]) for each module, from ``source``: the model itself,
    another model with the same module names, or a checkpoint path.

    ``model`` says which modules are Conv1D (stored [in, out]), so files need no guessing.
    """
    layers = dict(model.named_modules())
    checkpoint = None if isinstance(source, nn.Module) else Checkpoint(source)
    others = dict(source.named_modules()) if isinstance(source, nn.Module) else {}
    for module in modules:
        transposed = is_conv1d(layers[module])
        if checkpoint is not None:
            weight = checkpoint.get(module)
        elif module in others:  # a sharded weight (FSDP2) is gathered: all ranks call this
            weight = full_tensor(others[module].weight)
        else:
            raise NeftError(f"the reference model has no module {module}; it must be a "
                            "fine-tuned copy of the base model")
        yield module, weight.t() if transposed else weight


def neuron_vectors(weight: torch.Tensor, group: NeuronGroup) -> torch.Tensor:
    """The group's neurons as rows of a [count, size] view of a logical [out, in] weight."""
    if tuple(weight.shape) != tuple(group.shape):
        raise NeftError(f"{group.module} has shape {list(weight.shape)} in the reference but "
                        f"{list(group.shape)} in the base model: they are different models")
    end = group.start + group.count
    return weight[group.start:end] if group.axis == "rows" else weight[:, group.start:end].t()


def by_module(groups: list[NeuronGroup]) -> dict[str, list[int]]:
    """Group indices per module, so that each matrix is read once."""
    modules: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        modules.setdefault(group.module, []).append(i)
    return modules


def cosine(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float64 (1 - cos is ~4e-7 after a short probe, far
    below float32 rounding). Two zero vectors count as unchanged (1), one as turned (0)."""
    a, b = base.double(), other.double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    both_zero = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    cos = (a * b).sum(dim=1) / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(both_zero, torch.ones_like(cos), cos)
