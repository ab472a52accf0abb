"""Set operations on NeuronSets: union, intersection, and transfer to another model."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from torch import nn

from .. import __version__
from ..core.neuron_set import NeuronSet
from ..core.neurons import count_parameters, model_fingerprint
from ..errors import NeftError


def _load(item: NeuronSet | str | os.PathLike) -> tuple[NeuronSet, str]:
    if isinstance(item, NeuronSet):
        return item, "in memory"
    return NeuronSet.load(item), os.fspath(item)


def _combine(items: Sequence[NeuronSet | str | os.PathLike], operation: str) -> NeuronSet:
    if len(items) < 2:
        raise NeftError(f"{operation} needs at least two neuron sets")
    loaded = [_load(item) for item in items]
    fingerprints = {s.metadata.get("base_fingerprint") for s, _ in loaded} - {None}
    if len(fingerprints) > 1:
        raise NeftError(f"cannot take the {operation} of sets made for different base models "
                        f"(fingerprints {sorted(fingerprints)}); transfer them to one model first")
    result = loaded[0][0]
    for neuron_set, _ in loaded[1:]:
        result = result.union(neuron_set) if operation == "union" else (
            result.intersection(neuron_set))
    first = loaded[0][0].metadata
    result.metadata = {
        "scorer": operation, "sources": [{"path": path, "scorer": s.metadata.get("scorer"),
                                          "neurons": s.num_neurons()} for s, path in loaded],
        **{k: first[k] for k in ("base_fingerprint", "base_model", "model_parameters")
           if k in first},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "neft_version": __version__,
    }
    return result


def union_sets(*items: NeuronSet | str | os.PathLike) -> NeuronSet:
    """Neurons in any of the sets (the paper's "Union" of tasks)."""
    return _combine(items, "union")


def intersect_sets(*items: NeuronSet | str | os.PathLike) -> NeuronSet:
    """Neurons in all of the sets."""
    return _combine(items, "intersection")


def transfer_set(item: NeuronSet | str | os.PathLike, model: nn.Module) -> NeuronSet:
    """A set found on one data split or model, applied to ``model`` (same module shapes):
    validated against it, with the fingerprint rewritten (the paper's "Trans")."""
    source, path = _load(item)
    metadata = dict(source.metadata)
    old = metadata.pop("base_fingerprint", None)
    moved = NeuronSet(source.to_mapping(), dict(source.shapes), metadata).validate(model)
    moved.metadata.update({
        "base_fingerprint": model_fingerprint(model), "transferred_from": old,
        "transferred_source": path, "model_parameters": count_parameters(model),
        "base_model": getattr(getattr(model, "config", None), "_name_or_path",
                              type(model).__name__)})
    return moved
