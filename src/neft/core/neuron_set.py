"""NeuronSet: the selected neurons as data (indices per module and axis, with metadata),
saved and loaded as safetensors, combined as sets."""

from __future__ import annotations

import difflib
import json
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from torch import nn

from ..errors import NeftError
from .io import atomic_save_file
from .neurons import AXES, NeuronGroup, linear_shape, model_fingerprint, neuron_size

NEURONSET_FORMAT = "neft.neuronset"


def _as_index(values: Iterable[int] | torch.Tensor, where: str) -> torch.Tensor:
    """A flat list of whole numbers -> sorted, deduplicated int64 indices. Floats, bools,
    nested lists and scalars are refused, not rounded or flattened."""
    if isinstance(values, (str, bytes, int, float)) or not isinstance(
            values, (torch.Tensor, Iterable)):
        raise NeftError(f"{where} must be a list of neuron indices, not {values!r}")
    if not isinstance(values, torch.Tensor):
        values = list(values)
        bad = [v for v in values if not isinstance(v, numbers.Integral) or isinstance(v, bool)]
        if bad:
            raise NeftError(f"{where} must hold whole numbers (neuron indices), not "
                            f"{bad[0]!r}")
        values = torch.tensor(values, dtype=torch.long)
    elif values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise NeftError(f"{where} must be an integer tensor of neuron indices, not "
                        f"{values.dtype}")
    if values.dim() > 1:
        raise NeftError(f"{where} must be a flat list of neuron indices, not shape "
                        f"{list(values.shape)}")
    return torch.unique(values.long().flatten())  # sorted, deduplicated


@dataclass
class NeuronSet:
    """Selected neurons: sorted indices per (module, axis), plus free-form metadata.

    ``shapes`` holds each module's logical [out, in] shape so that the set knows its
    size in parameters without the model. Saved as safetensors (indices as int64
    tensors named ``<module>::rows`` / ``<module>::cols``; metadata as JSON).
    """

    indices: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cleaned: dict[str, dict[str, torch.Tensor]] = {}
        for module, axes in self.indices.items():
            if not isinstance(axes, Mapping):
                raise NeftError(f"neurons[{module!r}] must map an axis to indices, e.g. "
                                f"{{'rows': [3, 17]}}, not {type(axes).__name__}")
            for axis, values in axes.items():
                if axis not in AXES:
                    raise NeftError(f"neurons[{module!r}] has axis {axis!r}; use 'rows' or 'cols'")
                index = _as_index(values, f"neurons[{module!r}][{axis!r}]")
                if index.numel() and int(index[0]) < 0:
                    raise NeftError(f"neurons[{module!r}][{axis!r}] has a negative index")
                if index.numel():
                    cleaned.setdefault(module, {})[axis] = index
        self.indices = cleaned
        self.shapes = {m: (int(s[0]), int(s[1])) for m, s in self.shapes.items()}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Mapping[str, Iterable[int]]],
                     model: nn.Module | None = None,
                     metadata: Mapping[str, object] | None = None) -> NeuronSet:
        """``{"model.layers.0.mlp.up_proj": {"rows": [3, 17]}, ...}`` -> NeuronSet.

        With ``model`` the modules and indices are checked and shapes filled in.
        """
        neurons = cls({m: dict(a) if isinstance(a, Mapping) else a for m, a in mapping.items()},
                      metadata=dict(metadata or {}))
        if model is not None:
            neurons.validate(model)
        return neurons

    def to_mapping(self) -> dict[str, dict[str, list[int]]]:
        return {m: {a: idx.tolist() for a, idx in axes.items()} for m, axes in self.indices.items()}

    # -- size ---------------------------------------------------------------------------
    def num_neurons(self) -> int:
        return sum(int(idx.numel()) for axes in self.indices.values() for idx in axes.values())

    __len__ = num_neurons

    def num_parameters(self) -> int:
        missing = [m for m in self.indices if m not in self.shapes]
        if missing:
            raise NeftError(f"the size in parameters needs module shapes; call "
                            f"neurons.validate(model) first (unknown: {missing[0]})")
        return sum(int(idx.numel()) * neuron_size(self.shapes[m], axis)
                   for m, axes in self.indices.items() for axis, idx in axes.items())

    def modules(self) -> list[str]:
        return list(self.indices)

    def get(self, module: str, axis: str) -> torch.Tensor:
        return self.indices.get(module, {}).get(axis, torch.empty(0, dtype=torch.long))

    def items(self) -> Iterable[tuple[str, str, torch.Tensor]]:
        for module, axes in self.indices.items():
            for axis, idx in axes.items():
                yield module, axis, idx

    # -- set algebra --------------------------------------------------------------------
    def _same_model(self, other: NeuronSet, op: str) -> dict[str, object]:
        """Sets of two models do not combine (their indices mean other neurons): refused
        by fingerprint, or by a module's shape; the common fingerprint is kept."""
        prints = {n.metadata.get("base_fingerprint") for n in (self, other)} - {None}
        clash = [m for m in set(self.shapes) & set(other.shapes)
                 if self.shapes[m] != other.shapes[m]]
        if len(prints) > 1 or clash:
            why = (f"fingerprints {' and '.join(sorted(map(str, prints)))}" if len(prints) > 1
                   else f"{clash[0]} is {list(self.shapes[clash[0]])} in one and "
                        f"{list(other.shapes[clash[0]])} in the other")
            raise NeftError(f"cannot take the {op} of neuron sets made on different models "
                            f"({why}); select both on the same base model")
        return {"base_fingerprint": prints.pop()} if prints else {}

    def _combine(self, other: NeuronSet, op: str) -> NeuronSet:
        same = self._same_model(other, op)
        result: dict[str, dict[str, torch.Tensor]] = {}
        for module in dict.fromkeys([*self.indices, *other.indices]):
            for axis in AXES:
                a, b = self.get(module, axis), other.get(module, axis)
                if op == "union":
                    idx = torch.cat([a, b])
                else:
                    idx = a[torch.isin(a, b)]
                if idx.numel():
                    result.setdefault(module, {})[axis] = idx
        shapes = {**other.shapes, **self.shapes}
        return NeuronSet(result, shapes, {"operation": op, **same})

    def union(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "union")

    def intersection(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "intersection")

    __or__ = union
    __and__ = intersection

    def overlap(self, other: NeuronSet) -> float:
        """Share of this set's neurons also in ``other`` (the paper's Table 6 measure)."""
        total = self.num_neurons()
        return self.intersection(other).num_neurons() / total if total else 0.0

    def jaccard(self, other: NeuronSet) -> float:
        union = self.union(other).num_neurons()
        return self.intersection(other).num_neurons() / union if union else 0.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.to_mapping() == other.to_mapping()

    # -- checks -------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> NeuronSet:
        """Check every module exists and is linear and every index is in range; fill shapes.

        The fingerprint goes first: for a set made on another model it is the real problem,
        whatever index or module happens to fail after it.
        """
        expected = self.metadata.get("base_fingerprint")
        modules = dict(model.named_modules())
        if expected and expected != model_fingerprint(model):
            how = ("select neurons on this model or move the set with `neft select --transfer` "
                   "(its modules have the same shapes here)" if self._shapes_fit(modules)
                   else "its modules have other shapes here, so select neurons on this model")
            raise NeftError(f"neuron set was made for another base model (fingerprint {expected}, "
                            f"this model {model_fingerprint(model)}); {how}")
        for module, axes in self.indices.items():
            layer = modules.get(module)
            if layer is None:
                close = difflib.get_close_matches(module, list(modules), n=1)
                hint = close[0] if close else None
                raise NeftError(f"neurons name module {module!r}, which this model does not have"
                                + (f" (did you mean {hint!r}?)" if hint else "")
                                + "; use paths as in model.named_modules()")
            base = getattr(layer, "base_layer", layer)
            shape = linear_shape(base)
            for axis, idx in axes.items():
                limit = shape[0] if axis == "rows" else shape[1]
                if int(idx[-1]) >= limit:
                    raise NeftError(f"neurons[{module!r}][{axis!r}] has index {int(idx[-1])} but "
                                    f"the layer has only {limit} {axis}")
            known = self.shapes.get(module)
            if known is not None and tuple(known) != shape:
                raise NeftError(f"neuron set was made for {module} of shape {list(known)}, this "
                                f"model's is {list(shape)}: it belongs to another base model")
            self.shapes[module] = shape
        return self

    def _shapes_fit(self, modules: Mapping[str, nn.Module]) -> bool:
        """Whether every module of the set exists with the shape it was made for."""
        for module in self.indices:
            layer = modules.get(module)
            try:
                shape = linear_shape(getattr(layer, "base_layer", layer))
            except NeftError:
                return False
            if self.shapes.get(module) is not None and tuple(self.shapes[module]) != shape:
                return False
        return True

    # -- files --------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{m}::{a}": idx.contiguous() for m, a, idx in self.items()}

    def file_metadata(self) -> dict[str, str]:
        return {"format": NEURONSET_FORMAT, "shapes": json.dumps(self.shapes),
                "metadata": json.dumps(self.metadata, default=str)}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file, then rename)."""
        atomic_save_file(self.tensors(), path, self.file_metadata())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        """Read a NeuronSet file (or the indices of a neft adapter file)."""
        tensors, meta = read_safetensors(path)
        indices: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            module, _, axis = key.rpartition("::")
            if axis in AXES:
                if tensor.dtype.is_floating_point or tensor.dtype.is_complex or (
                        tensor.dtype == torch.bool):
                    raise NeftError(f"{path}: indices {key!r} are {tensor.dtype}, not integers; "
                                    "the file is damaged or not from neft: write it again")
                indices.setdefault(module, {})[axis] = tensor
        if not indices:
            raise NeftError(f"{path} holds no neuron indices (expected tensors named "
                            "'<module>::rows' or '<module>::cols'); is it a neft NeuronSet file?")
        try:
            shapes = json.loads(meta.get("shapes", "{}"))
            metadata = json.loads(meta.get("metadata", "{}"))
            shapes = {m: (int(s[0]), int(s[1])) for m, s in shapes.items()}
        except (ValueError, TypeError, IndexError, AttributeError):
            raise NeftError(f"{path}: its header metadata is damaged (shapes/metadata are not "
                            "the JSON neft writes); write the file again") from None
        if not isinstance(metadata, dict):
            raise NeftError(f"{path}: its header metadata is damaged; write the file again")
        return cls(indices, shapes, metadata)

    def summary(self) -> dict[str, int]:
        """Neurons per module kind (last path component and axis), e.g. {'up_proj.rows': 12}."""
        counts: dict[str, int] = {}
        for module, axis, idx in self.items():
            key = f"{module.split('.')[-1]}.{axis}"
            counts[key] = counts.get(key, 0) + int(idx.numel())
        return counts


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the header metadata; a clear error for missing or corrupt files."""
    if os.path.isdir(path):
        raise NeftError(f"{path} is a folder; pass the .safetensors file itself")
    if not os.path.isfile(path):
        raise NeftError(f"{path}: no such file")
    try:  # safetensors never runs code, whatever the file holds
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several types for bad files
        not_safetensors = pickled_file_kind(path)
        if not_safetensors:
            raise NeftError(f"{path} is {not_safetensors}, not safetensors; neft never "
                            "unpickles files (that can run code): write it with safetensors "
                            "instead") from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeftError(f"{path} is not a readable safetensors file ({reason}); it may be "
                        "truncated or corrupted: write it again") from exc
    return tensors, meta


def pickled_file_kind(path: str | os.PathLike) -> str | None:
    """'a pickle file' / 'a torch.save (zip + pickle) file' from the first bytes, else None,
    for a file safetensors could not read: it is refused by name, not called corrupted."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON header
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file"
    if head[:4] == b"PK\x03\x04":
        return "a torch.save (zip + pickle) file"
    return None


def neuron_set_from_groups(groups: list[NeuronGroup], chosen: Mapping[int, torch.Tensor],
                           metadata: Mapping[str, object] | None = None) -> NeuronSet:
    """Build a NeuronSet from positions (0..count-1) chosen within each group (by list index)."""
    indices: dict[str, dict[str, list[torch.Tensor]]] = {}
    for i, positions in chosen.items():
        group = groups[i]
        if positions.numel() == 0:
            continue
        indices.setdefault(group.module, {}).setdefault(group.axis, []).append(
            positions.long() + group.start)
    merged = {m: {a: torch.cat(parts) for a, parts in axes.items()} for m, axes in indices.items()}
    shapes = {g.module: g.shape for g in groups if g.module in merged}
    return NeuronSet(merged, shapes, dict(metadata or {}))
