"""Where a neuron set's neurons sit, and how sets overlap (the paper's section 6, Table 6).

Sets are read from NeuronSet files or neft adapter folders; nothing needs the model.
A neuron's kind is its module's last name and axis (``up_proj.rows``, ``down_proj.cols``,
``c_fc.rows``...), as in ``NeuronSet.summary``, so any architecture is described alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.neuron_set import NeuronSet
from ..core.neurons import layer_index
from ..errors import NeftError
from ..select.report import layer_counts

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def kind_of(module: str, axis: str) -> str:
    """``model.layers.3.mlp.up_proj`` + ``rows`` -> ``up_proj.rows`` (NeuronSet.summary's key)."""
    return f"{module.split('.')[-1]}.{axis}"


def load_set(path: str | os.PathLike) -> NeuronSet:
    """A NeuronSet file, or the neurons a neft adapter folder trained."""
    path = os.fspath(path)
    if os.path.isdir(path):
        weights = os.path.join(path, ADAPTER_WEIGHTS)
        if not os.path.isfile(weights):
            raise NeftError(f"{path} is a folder without {ADAPTER_WEIGHTS}: pass a NeuronSet file "
                            "(from `neft select`) or a neft adapter folder (from `neft train`)")
        path = weights
    return NeuronSet.load(path)


def label_sets(paths: Sequence[str], labels: Sequence[str] | None = None,
               ) -> dict[str, NeuronSet]:
    """{label: set}, labelled by file name (without .safetensors) unless ``labels`` given."""
    if labels is not None and len(labels) != len(paths):
        raise NeftError(f"{len(labels)} labels for {len(paths)} sets: give one label per set")
    if labels is None:
        labels = [os.path.basename(os.path.normpath(p)).removesuffix(".safetensors")
                  for p in paths]
        if len(set(labels)) < len(labels):  # e.g. two adapter folders' files: use the paths
            labels = list(paths)
    if len(set(labels)) < len(labels):
        raise NeftError(f"labels must differ, got {list(labels)}: name each set with --labels")
    return {label: load_set(path) for label, path in zip(labels, paths, strict=True)}


def layer_kind_counts(neurons: NeuronSet) -> dict[str, dict[int, int]]:
    """{kind: {layer: neurons}}; layer -1 holds modules outside numbered blocks."""
    counts: dict[str, dict[int, int]] = {}
    for module, axis, idx in neurons.items():
        per_layer = counts.setdefault(kind_of(module, axis), {})
        layer = layer_index(module)
        per_layer[layer] = per_layer.get(layer, 0) + int(idx.numel())
    return counts


def distribution(sets: Mapping[str, NeuronSet]) -> dict[str, Any]:
    """Neurons per layer and kind for each set, on common axes (JSON-ready).

    ``{"layers": [...], "kinds": [...], "sets": {label: {"neurons", "per_kind": {kind: n},
    "per_layer": {kind: [n per layer]}, "total_per_layer": [...]}}}``.
    """
    counts = {label: layer_kind_counts(s) for label, s in sets.items()}
    layers = sorted({layer for c in counts.values() for per in c.values() for layer in per})
    kinds = sorted({kind for c in counts.values() for kind in c},
                   key=lambda kind: (kind.endswith(".cols"), kind))  # in-rows, then out-cols
    result: dict[str, Any] = {"layers": layers, "kinds": kinds, "sets": {}}
    for label, neurons in sets.items():
        per_layer = {kind: [counts[label].get(kind, {}).get(layer, 0) for layer in layers]
                     for kind in kinds}
        totals = layer_counts(neurons)
        result["sets"][label] = {
            "neurons": neurons.num_neurons(),
            "per_kind": {kind: sum(values) for kind, values in per_layer.items()},
            "per_layer": per_layer,
            "total_per_layer": [totals.get(layer, 0) for layer in layers],
        }
    return result


def format_distribution(dist: Mapping[str, Any]) -> str:
    """One row per layer; for each set a column per kind and its total."""
    kinds = dist["kinds"]
    widths = [max(len(kind), 7) for kind in kinds] + [7]
    block = sum(widths) + len(widths) - 1
    titles = [f"{label} ({info['neurons']:,})" for label, info in dist["sets"].items()]
    head = f"{'':>6} |" + "|".join(f" {title:^{block}} " for title in titles)
    names = " ".join(f"{name:>{w}}" for name, w in zip([*kinds, "total"], widths, strict=True))
    lines = [head, f"{'layer':>6} |" + "|".join(f" {names} " for _ in dist["sets"])]

    def row(name: str, values_per_set: list[list[int]]) -> str:
        cells = [" ".join(f"{v:>{w},}" for v, w in zip(values, widths, strict=True))
                 for values in values_per_set]
        return f"{name:>6} |" + "|".join(f" {cell} " for cell in cells)

    for i, layer in enumerate(dist["layers"]):
        lines.append(row(str(layer) if layer >= 0 else "other", [
            [info["per_layer"][k][i] for k in kinds] + [info["total_per_layer"][i]]
            for info in dist["sets"].values()]))
    lines.append(row("all", [[info["per_kind"][k] for k in kinds] + [info["neurons"]]
                             for info in dist["sets"].values()]))
    return "\n".join(lines)


def overlap_matrices(sets: Mapping[str, NeuronSet]) -> dict[str, Any]:
    """Pairwise overlap and Jaccard similarity of the sets (JSON-ready).

    ``overlap[i][j]`` is the share of set i's neurons also in set j (the paper's Table 6
    measure; not symmetric), ``jaccard[i][j]`` is |i & j| / |i | j|. Sets made for
    different base models are refused: their neuron indices mean different things.
    """
    if len(sets) < 2:
        raise NeftError("overlap needs at least two neuron sets")
    fingerprints = {s.metadata.get("base_fingerprint") for s in sets.values()} - {None}
    if len(fingerprints) > 1:
        raise NeftError(f"the sets were made for different base models (fingerprints "
                        f"{sorted(fingerprints)}); compare sets of one model, or transfer them "
                        "first with `neft select --transfer`")
    items = list(sets.values())
    return {
        "labels": list(sets),
        "neurons": [s.num_neurons() for s in items],
        "overlap": [[a.overlap(b) for b in items] for a in items],
        "jaccard": [[a.jaccard(b) for b in items] for a in items],
        "intersection": [[a.intersection(b).num_neurons() for b in items] for a in items],
    }


def format_overlap(result: Mapping[str, Any]) -> str:
    """The overlap and Jaccard matrices as text tables (percent)."""
    labels = result["labels"]
    width = max(8, *(len(label) for label in labels))
    lines: list[str] = []
    for key, title in (("overlap", "overlap: share of the row set's neurons also in the "
                                   "column set"), ("jaccard", "Jaccard: |A & B| / |A | B|")):
        lines += [title, f"{'':<{width}} " + " ".join(f"{label:>{width}}" for label in labels)]
        for label, values in zip(labels, result[key], strict=True):
            lines.append(f"{label:<{width}} " + " ".join(f"{100 * v:>{width - 1}.1f}%"
                                                         for v in values))
        lines.append("")
    sizes = ", ".join(f"{label} {n:,}" for label, n in zip(labels, result["neurons"], strict=True))
    lines.append(f"neurons: {sizes}")
    return "\n".join(lines)
