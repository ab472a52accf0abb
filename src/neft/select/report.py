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
