"""Budgets (how many neurons) and choosing the top-scored neurons, globally or by quota.

Every budget is resolved to a neuron count before scoring. The paper counts a budget
as trainable parameters over ALL model parameters; a neuron's size is its row or
column length, so ``params`` and ``percent`` convert through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.neurons import NeuronGroup, is_target_layer, linear_shape, pool_size
from ..errors import NeftError

QUOTAS = ("layer", "kind", "module")


@dataclass(frozen=True)
class Budget:
    """A resolved budget. ``parameters`` is exact when all candidate neurons have one size."""

    neurons: int
    parameters: int
    percent: float
    requested: str
    exact: bool

    def describe(self) -> str:
        approx = "" if self.exact else "~"
        return (f"{self.neurons:,} neurons = {approx}{self.parameters:,} parameters = "
                f"{approx}{self.percent:.3f}% of all model parameters ({self.requested})")

    def to_dict(self) -> dict[str, object]:
        return {"neurons": self.neurons, "parameters": self.parameters,
                "percent": self.percent, "requested": self.requested}


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """[out, in] of every Linear/Conv1D layer: all a LoRA budget needs to know of a model."""
    return {path: linear_shape(module) for path, module in model.named_modules()
            if path and is_target_layer(module)}


def lora_parameters(shapes: Mapping[str, tuple[int, int]], rank: int,
                    target_modules: Iterable[str] | None = None) -> int:
    """Trainable parameters of LoRA rank ``rank``: r * (in + out) per target linear layer.

    ``shapes``: from ``linear_shapes(model)``. ``target_modules``: module-name suffixes as
    in peft (e.g. ``["q_proj", "v_proj"]``); default all linear layers but ``lm_head``,
    as in the paper's comparisons.
    """
    if int(rank) != rank or rank < 1:
        raise NeftError(f"LoRA rank {rank} must be a positive whole number")
    targets = list(target_modules or [])
    matched = [shape for path, shape in shapes.items()
               if (any(path == t or path.endswith("." + t) for t in targets) if targets
                   else path.split(".")[-1] != "lm_head")]
    if not matched:
        raise NeftError(f"LoRA target modules {targets} match no linear layer of this model; "
                        "name them as in model.named_modules(), e.g. q_proj,v_proj")
    return sum(int(rank) * (out_features + in_features) for out_features, in_features in matched)


def resolve_budget(groups: list[NeuronGroup], total_parameters: int, *,
                   neurons: int | None = None, percent: float | None = None,
                   params: int | None = None, lora_params: int | None = None,
                   lora_rank: int | None = None) -> Budget:
    """Turn exactly one of neurons / percent / params / LoRA parameters into a Budget.

    Parameters convert to neurons by the candidates' neuron size, rounded to the
    nearest whole neuron; mixed sizes use their mean (and the budget says so).
    """
    given = {k: v for k, v in {"neurons": neurons, "percent": percent, "params": params,
                               "match_lora": lora_params}.items() if v is not None}
    if len(given) != 1:
        raise NeftError("give exactly one budget: neurons, percent (of all model parameters), "
                        f"params or match_lora (got {', '.join(given) or 'none'})")
    (kind, value), = given.items()
    if isinstance(value, float) and not math.isfinite(value):  # nan <= 0 is False
        raise NeftError(f"budget {kind}={value} is not a finite number: give the number of "
                        "neurons, percent, parameters or LoRA rank to train")
    if kind == "percent" and value > 100:
        raise NeftError(f"percent must be in (0, 100], not {value:g}")
    if value <= 0:
        raise NeftError(f"budget {kind}={value} must be positive: give the number of "
                        "neurons, percent, parameters or LoRA rank to train (above 0)")
    sizes = torch.tensor([g.neuron_params for g in groups], dtype=torch.float64)
    counts = torch.tensor([g.count for g in groups], dtype=torch.float64)
    exact = bool((sizes == sizes[0]).all())
    mean_size = float((sizes * counts).sum() / counts.sum())
    if kind == "neurons":
        if int(value) != value:
            raise NeftError(f"neurons={value} must be a whole number")
        count, requested = int(value), f"neurons={int(value)}"
    else:
        wanted = {"percent": value * total_parameters / 100, "params": value,
                  "match_lora": value}[kind]
        count = round(wanted / mean_size)
        requested = (f"LoRA r{lora_rank} = {int(value):,} parameters" if kind == "match_lora"
                     else f"{kind}={value:g}")
        if count == 0:
            raise NeftError(f"budget {requested} is less than one neuron of {mean_size:g} "
                            "parameters; give a larger budget")
    pool = pool_size(groups)
    if count > pool:
        raise NeftError(f"budget of {count:,} neurons ({requested}) exceeds the candidate pool "
                        f"of {pool:,} neurons; give a smaller budget or more target modules")
    parameters = round(count * mean_size)
    return Budget(count, parameters, 100 * parameters / total_parameters, requested, exact)


def allocate(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Split ``total`` over buckets in proportion to ``sizes`` (largest remainder method)."""
    share = sizes.double() * total / sizes.sum()
    counts = share.floor().long()
    left = total - int(counts.sum())
    if left:
        order = torch.sort(share - counts, descending=True, stable=True).indices
        counts[order[:left]] += 1
    return counts


def bucket_of(group: NeuronGroup, quota: str) -> tuple[object, ...]:
    return {"layer": (group.layer,), "kind": (group.kind,),
            "module": (group.layer, group.kind)}[quota]


def choose(groups: list[NeuronGroup], scores: list[torch.Tensor], count: int,
           quota: str | None = None) -> dict[int, torch.Tensor]:
    """Positions of the ``count`` highest scores: one global ranking (the paper) or a
    ranking per layer / module kind / (layer, kind) with counts proportional to pool size.

    Ties keep pool order (stable sort), so equal scores give reproducible sets.
    """
    quota = parse_quota(quota)
    flat = torch.cat([s.double().flatten() for s in scores])
    owner = torch.repeat_interleave(torch.tensor([g.count for g in groups]))
    offsets = torch.tensor([0] + [g.count for g in groups]).cumsum(0)[:-1]
    if quota is None:
        picked = torch.sort(flat, descending=True, stable=True).indices[:count]
    else:
        keys = [bucket_of(g, quota) for g in groups]
        buckets = list(dict.fromkeys(keys))
        bucket_ids = torch.tensor([buckets.index(k) for k in keys])[owner]
        bucket_sizes = torch.bincount(bucket_ids, minlength=len(buckets))
        quotas = allocate(bucket_sizes, count)
        # Order by bucket, then by score within it: keep the first quotas[b] of bucket b.
        order = torch.sort(flat, descending=True, stable=True).indices
        order = order[torch.sort(bucket_ids[order], stable=True).indices]
        starts = bucket_sizes.cumsum(0) - bucket_sizes
        ranked_bucket = bucket_ids[order]
        rank_in_bucket = torch.arange(len(order)) - starts[ranked_bucket]
        picked = order[rank_in_bucket < quotas[ranked_bucket]]
    chosen_owner = owner[picked]
    return {i: torch.sort(picked[chosen_owner == i] - offsets[i]).values
            for i in range(len(groups)) if bool((chosen_owner == i).any())}


def parse_layers(text: str, available: Sequence[int] | None = None) -> list[int]:
    """The layers a selection may use: 'A-B' (inclusive), '3,5,7', 'upper:N' (the top N
    blocks: a band that also lets backward stop early) or 'lower:N'. Without
    ``available`` (no model yet) only the spelling is checked, and [] comes back."""
    present = sorted(set(available)) if available is not None else None
    spec = str(text).strip().replace(" ", "")
    try:
        if spec.startswith(("upper:", "lower:")):
            side, count = spec.split(":")
            n = int(count)
            if n < 1 or (present is not None and n > len(present)):
                raise ValueError
            chosen = [] if present is None else present[-n:] if side == "upper" else present[:n]
        else:
            chosen = []
            for part in filter(None, spec.split(",")):
                low, _, high = part.partition("-")
                chosen += range(int(low), int(high or low) + 1)
            if not chosen:
                raise ValueError
    except ValueError:
        most = f"from 1 to {len(present)}" if present is not None else "of 1 or more"
        raise NeftError(f"layers {text!r}: write A-B, a list such as 3,5,7, or upper:N / "
                        f"lower:N with N {most}") from None
    if present is None:
        return []
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise NeftError(f"layers {text!r}: the model's blocks are {present[0]}-{present[-1]}; "
                        f"{missing[0]} is not one of them")
    return sorted(set(chosen))


def parse_quota(quota: str | None) -> str | None:
    """A quota name, or None for one global ranking ('none' too, as for avoid)."""
    if quota is None or quota.lower() == "none":
        return None
    if quota not in QUOTAS:
        raise NeftError(f"quota {quota!r} is not known; use one of {', '.join(QUOTAS)}, or "
                        "none for one global ranking")
    return quota


def band_groups(groups: Sequence[NeuronGroup], layers: str | None, count: int) -> list[int]:
    """Indices of the groups inside the blocks ``layers`` names (all when None); a band
    that holds fewer than ``count`` candidate neurons is refused."""
    if layers is None:
        return list(range(len(groups)))
    band = set(parse_layers(layers, [g.layer for g in groups]))
    keep = [i for i, g in enumerate(groups) if g.layer in band]
    pool = sum(groups[i].count for i in keep)
    if count > pool:
        raise NeftError(f"layers {layers!r} hold {pool:,} candidate neurons, fewer than the "
                        f"budget's {count:,}: widen the band or lower the budget")
    return keep

