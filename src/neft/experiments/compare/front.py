"""Points along training for a comparison's fronts: test loss and drift at dev evaluations.

A *point* is one run at one step: its dev loss (Trainer's evaluation), its test loss (mean
NLL per target token over the test split) and its drift (KL(base || tuned) per token on
each general-text set), with the per-record sums that the verdicts resample. A run's
points are kept in points.json beside its result, written after each one, so that a
resumed run keeps the points it has. With a confirm split (a screen on dev that test
confirms) each point also holds that split's loss, read in place of the test split's only
when a choice made on the first is checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerCallback

from ...core.io import read_json, write_json
from ...errors import NeftError
from ...evaluate.likelihood import drift, target_loss

POINTS_FILE = "points.json"


class FrontMeasure:
    """Test loss and drift of a model, with everything they need loaded once."""

    def __init__(self, tokenizer: Any, records: Sequence[Mapping[str, Any]],
                 prompt: Mapping[str, Any], max_length: int, base: Any,
                 drift_sets: Mapping[str, Sequence[str]], batch_size: int = 16,
                 bf16: bool = False,
                 confirm: tuple[str, Sequence[Mapping[str, Any]]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.confirm = confirm  # (split name, its records)
        self.prompt = prompt
        self.max_length = max_length
        self.base = base
        self.drift_sets = drift_sets
        self.batch_size = batch_size
        self.bf16 = bf16

    def test_loss(self, model: Any, records: Sequence[Mapping[str, Any]] | None = None
                  ) -> dict[str, Any]:
        return target_loss(model, self.tokenizer, self.records if records is None else records,
                           self.prompt["task"], self.prompt["template"],
                           self.prompt.get("source_lang"), self.prompt.get("target_lang"),
                           max_length=self.max_length, batch_size=self.batch_size,
                           bf16=self.bf16)

    def losses(self, model: Any) -> dict[str, Any]:
        """The test split's loss, per-record sums, and the confirm split's likewise."""

        def entry(loss: dict[str, Any]) -> dict[str, Any]:
            return {"test_loss": loss["loss"],
                    "test": {"nll": loss["nll"], "tokens": loss["token_counts"]}}

        point = entry(self.test_loss(model))
        if self.confirm is not None:
            split, records = self.confirm
            point["confirm"] = {"split": split, **entry(self.test_loss(model, records))}
        return point

    def base_point(self) -> dict[str, Any]:
        """The base model's point: step 0, no drift."""
        return {"step": 0, "dev_loss": None, **self.losses(self.base),
                "drift": {name: {"kl": 0.0, "loss_change": 0.0} for name in self.drift_sets}}

    def __call__(self, model: Any) -> dict[str, Any]:
        point: dict[str, Any] = {**self.losses(model), "drift": {}}
        for name, texts in self.drift_sets.items():
            moved = drift(model, self.base, self.tokenizer, texts, max_length=self.max_length,
                          batch_size=max(1, self.batch_size // 2), bf16=self.bf16)
            point["drift"][name] = {"kl": moved["kl"], "loss_change": moved["loss_change"],
                                    "kl_sums": moved["kl_sums"], "tokens": moved["token_counts"]}
        return point


def read_points(folder: str, split: str | None = None) -> list[dict[str, Any]]:
    """A run's points; with `split` (its grid's confirm split), that split's loss stands
    where the test split's was, so the fronts and verdicts read the confirmation."""
    path = os.path.join(folder, POINTS_FILE)
    points = read_json(path) if os.path.isfile(path) else []
    if split is None:
        return points
    swapped = []
    for point in points:
        confirm = point.get("confirm")
        if not confirm or confirm.get("split") != split:
            raise NeftError(f"{path}: step {point['step']} has no loss on the {split!r} split; "
                            "its grid ran without front.confirm_split: " + split)
        swapped.append({**point, "test_loss": confirm["test_loss"], "test": confirm["test"]})
    return swapped


class FrontPoints(TrainerCallback):
    """Measures a point at each dev evaluation whose step is in steps (None: every one)."""

    def __init__(self, folder: str, measure: FrontMeasure, steps: Sequence[int] | None) -> None:
        self.folder = folder
        self.measure = measure
        self.steps = None if steps is None else set(steps)
        self.points = read_points(folder)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any]
                    | None = None, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        if (self.steps is not None and step not in self.steps) or any(
                p["step"] == step for p in self.points):
            return
        point = {"step": step, "dev_loss": (metrics or {}).get("eval_loss"),
                 **self.measure(model)}
        self.points.append(point)
        write_json(os.path.join(self.folder, POINTS_FILE), self.points)
