"""PNG pictures of the analyses (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core import io
from .sets import kind_of

if TYPE_CHECKING:
    from .utilization import Utilization


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save to a temporary name beside ``path``, then rename: never a half-written PNG."""
    io.save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def plot_distribution(dist: Mapping[str, Any], path: str | os.PathLike) -> None:
    """One panel per set: neurons per layer, stacked by kind, on a shared y axis."""
    plt = _pyplot()
    sets = dist["sets"]
    layers = [str(layer) if layer >= 0 else "other" for layer in dist["layers"]]
    colors = {kind: f"C{i}" for i, kind in enumerate(dist["kinds"])}
    fig, axes = plt.subplots(len(sets), 1, figsize=(max(6.0, 0.25 * len(layers) + 3),
                                                     1.0 + 2.0 * len(sets)),
                             sharex=True, sharey=True, squeeze=False)
    for ax, (label, info) in zip(axes[:, 0], sets.items(), strict=True):
        bottom = [0] * len(layers)
        for kind in dist["kinds"]:
            values = info["per_layer"][kind]
            ax.bar(layers, values, bottom=bottom, color=colors[kind], label=kind, width=0.8)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(f"{label}: {info['neurons']:,} neurons", fontsize=10, loc="left")
        ax.set_ylabel("neurons")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("layer")
    if len(layers) > 20:
        axes[-1, 0].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_overlap(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Two heatmaps: overlap (share of the row set in the column set) and Jaccard."""
    plt = _pyplot()
    labels = result["labels"]
    n = len(labels)
    side = 2.0 + 0.8 * n
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side + 0.5), layout="constrained")
    for ax, key, title in ((axes[0], "overlap", "overlap: share of A's neurons in B"),
                           (axes[1], "jaccard", "Jaccard: |A & B| / |A | B|")):
        image = ax.imshow(result[key], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(n), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels if ax is axes[0] else [], fontsize=8)
        ax.set_xlabel("B")
        ax.set_title(title, fontsize=10)
        for i in range(n):
            for j in range(n):
                value = result[key][i][j]
                ax.text(j, i, f"{100 * value:.0f}%", ha="center", va="center", fontsize=8,
                        color="black" if value > 0.6 else "white")
    axes[0].set_ylabel("A")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    save_figure(fig, path)


def plot_utilization(util: Utilization, path: str | os.PathLike,
                     other: Utilization | None = None,
                     comparison: Mapping[str, Any] | None = None,
                     labels: tuple[str, str] = ("model", "reference")) -> None:
    """Mean utilization per layer and kind; with a comparison, the paper's Figure 2:
    mean |rank change| by utilization percentile (bucket of the rank before)."""
    plt = _pyplot()
    panels = 2 if comparison else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.0), squeeze=False)
    ax = axes[0, 0]
    series = [(labels[0], layer_means(util), "-")]
    if other is not None:
        series.append((labels[1], layer_means(other), "--"))
    for name, means, style in series:
        for i, (kind, per_layer) in enumerate(means.items()):
            ax.plot(list(per_layer), list(per_layer.values()), style, color=f"C{i}",
                    marker="." if style == "-" else None, label=f"{kind} ({name})")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean utilization (max Pearson r)")
    ax.set_title("utilization by layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if comparison:
        ax = axes[0, 1]
        buckets = comparison["buckets"]
        values = [b["mean_abs_rank_change"] or 0 for b in buckets]
        ax.bar(range(len(buckets)), values, color="C3")
        ax.set_xticks(range(len(buckets)), [b["percentile"] for b in buckets], rotation=45,
                      ha="right", fontsize=7)
        ax.set_xlabel("utilization percentile before (0 = most utilized)")
        ax.set_ylabel("mean |rank change|")
        ax.set_title(f"rank change by utilization ({comparison['strongly_affected']:,} "
                     f"strongly affected, > {comparison['threshold']:,})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def layer_means(util: Utilization) -> dict[str, dict[int, float]]:
    """{kind: {layer: mean utilization}}: where the utilized neurons are."""
    sums: dict[str, dict[int, list[float]]] = {}
    for group, part in zip(util.groups, util.per_group(util.scores), strict=True):
        entry = sums.setdefault(kind_of(group.module, group.axis), {}).setdefault(
            group.layer, [0.0, 0])
        entry[0] += float(part.sum())
        entry[1] += part.numel()
    return {kind: {layer: s / n for layer, (s, n) in sorted(per.items())}
            for kind, per in sums.items()}
