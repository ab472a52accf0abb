"""A one-screen text summary of a NeuronSet: budget, kinds, per-layer histogram, cost."""

from __future__ import annotations

from ..core.neuron_set import NeuronSet
from ..core.neurons import layer_index

BAR_WIDTH = 40


def layer_counts(neurons: NeuronSet) -> dict[int, int]:
    """Selected neurons per block index (-1 for modules outside numbered blocks)."""
    counts: dict[int, int] = {}
    for module, _, idx in neurons.items():
        layer = layer_index(module)
        counts[layer] = counts.get(layer, 0) + int(idx.numel())
    return dict(sorted(counts.items()))


def format_summary(neurons: NeuronSet) -> str:
    meta = neurons.metadata
    lines = [f"scorer: {meta.get('scorer', '?')}  quota: {meta.get('quota', 'global')}  "
             f"seed: {meta.get('seed', '-')}  base: {meta.get('base_model', '?')}"]
    budget = meta.get("budget")
    if isinstance(budget, dict):
        lines.append(f"budget: {budget.get('requested')} -> {budget.get('neurons', 0):,} neurons")
    size = f"{neurons.num_neurons():,} neurons"
    if all(m in neurons.shapes for m in neurons.modules()):
        size += f" = {neurons.num_parameters():,} parameters"
        total = meta.get("model_parameters")
        if isinstance(total, int) and total:
            size += f" = {100 * neurons.num_parameters() / total:.3f}% of all model parameters"
    pool = meta.get("candidate_pool")
    lines.append(f"selected: {size}" + (f" (pool {pool:,})" if isinstance(pool, int) else ""))
    lines.append("per kind: " + ", ".join(f"{k} {v:,}" for k, v in neurons.summary().items()))
    avoided = meta.get("avoided")
    if isinstance(avoided, dict):
        lines.append(_avoided_line(meta.get("avoid", "?"), meta.get("avoid_measured_on"),
                                   avoided))
    counts = layer_counts(neurons)
    if counts:
        lines.append("per layer:")
        peak = max(counts.values())
        for layer, count in counts.items():
            bar = "#" * max(1, round(BAR_WIDTH * count / peak))
            lines.append(f"  {layer:>4} {bar:<{BAR_WIDTH}} {count:,}")
    cost = [f"time {meta['wall_time_s']:.1f} s" if "wall_time_s" in meta else "",
            f"peak RSS {meta['peak_rss_mb']:,} MB" if "peak_rss_mb" in meta else "",
            f"peak CUDA {meta['peak_cuda_mb']:,} MB" if "peak_cuda_mb" in meta else ""]
    if any(cost):
        lines.append("cost: " + ", ".join(c for c in cost if c))
    return "\n".join(lines)


def _avoided_line(rule: str, measured_on: str | None, avoided: dict) -> str:
    """'left out (massive:40, on the task data): 6 units; layer 11: 1229 1487; ...': each
    unit once, though its up_proj row and down_proj column are both left out."""
    units: dict[int, set[int]] = {}
    for key, positions in avoided.items():
        units.setdefault(layer_index(str(key).split("::")[0]), set()).update(positions)
    where = f", on {measured_on}" if measured_on else ""
    listed = "; ".join(f"layer {layer}: {' '.join(map(str, sorted(found)))}"
                       for layer, found in sorted(units.items()))
    total = sum(len(found) for found in units.values())
    noun = "unit" if total == 1 else "units"
    return f"left out ({rule}{where}): {total} {noun}" + (f"; {listed}" if listed else "")
