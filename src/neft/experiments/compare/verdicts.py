"""Fronts and verdicts: compare methods by test loss against drift, not by single points.

Every point of a cell (a run at a dev evaluation) is a (drift, test loss) pair. A cell's
*front* is the lower-left envelope of its first seed's points, over its learning rates and
steps, with the base model's point (drift 0, its test loss) at its start: any method can
stay at the base. Between points the front is linear; past its last point it stays flat
(more drift allowed buys nothing more).

The verdicts compare a reference cell A with each other cell B:
(a) test loss at matched drift: A's standard point (the rate all its seeds ran, last step,
    mean over seeds) against B's front at A's drift;
(b) drift at matched test loss: A's drift there against the drift B's front needs for
    A's loss;
(c) each generation metric of both cells' best-dev-loss runs (sacreBLEU's paired bootstrap).
(a) and (b) get a 95% interval from a paired bootstrap over test and general-text records
(every point recomputed from the same resampled records) plus the seed variance of the
verdict: the spread of A's seeds' standard points each read against B's front (a seed
moves drift as well as loss, and both move the reading), over A's seeds, and the spread
of B's seeds read against B's own first-seed front (B's single-seed front counts it in
full); a cell with one seed borrows the other's spread. A verdict is "better" or "worse" only when
the interval excludes 0.
Each front verdict also says whether it rests on the line from the base to B's first
point (from_base) or on B's flat front past its last point (past_front).
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

import numpy as np

from ...core.io import read_json
from ...evaluate.metrics import BOOTSTRAP_METRICS, paired_bootstrap
from .front import read_points
from .plan import Plan
from .results import best_run, current
from .worker import EVAL_FILE

RESAMPLES = 1000
SEED = 12345
Z95 = 1.959964


def collect_points(plan: Plan) -> dict[str, Any]:
    """{"cells": {cell: [point, ...]}, "base": point or None} with each point's lr and seed."""
    output_dir = plan.config.output_dir
    cells: dict[str, list[dict[str, Any]]] = {c.name: [] for c in plan.cells}
    base = None
    for run in plan.runs:
        if current(plan, run) is None:
            continue
        points = read_points(os.path.join(output_dir, run.folder), plan.read_split)
        if run.kind == "base":
            base = points[0] if points else None
            continue
        for point in points:
            cells[run.cell].append({**point, "learning_rate": run.learning_rate,
                                    "seed": run.seed, "folder": run.folder})
    return {"cells": cells, "base": base}


def _standard_lr(plan: Plan, cell: str, points: list[dict[str, Any]]) -> float | None:
    """The learning rate of a cell's seeded points: its front's seeded rate, else the one
    rate its runs used."""
    spec = plan.cell(cell)
    if spec.seeded_rate is not None:
        return spec.seeded_rate
    rates = {p["learning_rate"] for p in points}
    return rates.pop() if len(rates) == 1 else None


class Resampled:
    """Every point's test loss and drift under the same record resamples (row 0: none)."""

    def __init__(self, data: dict[str, Any], sets: list[str], resamples: int = RESAMPLES,
                 seed: int = SEED) -> None:
        every = [p for points in data["cells"].values() for p in points]
        if data["base"]:
            every.append(data["base"])
        rng = np.random.default_rng(seed)
        self.sets = sets

        def weights(size: int) -> np.ndarray:
            counts = rng.multinomial(size, np.full(size, 1 / size), size=resamples)
            return np.vstack([np.ones((1, size)), counts])

        n_test = len(every[0]["test"]["nll"])
        self.test_weights = weights(n_test)
        self.drift_weights = {}
        for name in sets:
            sized = next((p["drift"][name] for p in every if "kl_sums" in p["drift"].get(name, {})),
                         None)
            self.drift_weights[name] = weights(len(sized["kl_sums"])) if sized else None

    def loss(self, point: dict[str, Any]) -> np.ndarray:
        nll = np.asarray(point["test"]["nll"], dtype=np.float64)
        tokens = np.asarray(point["test"]["tokens"], dtype=np.float64)
        return (self.test_weights @ nll) / (self.test_weights @ tokens)

    def drift(self, point: dict[str, Any], name: str) -> np.ndarray:
        entry = point["drift"][name]
        if "kl_sums" not in entry:  # the base model: no drift at all
            return np.zeros(self.test_weights.shape[0])
        weights = self.drift_weights[name]
        kl = np.asarray(entry["kl_sums"], dtype=np.float64)
        tokens = np.asarray(entry["tokens"], dtype=np.float64)
        return (weights @ kl) / (weights @ tokens)


def envelope(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower-left envelope: points no other point beats on both drift and loss."""
    order = np.lexsort((ys, xs))
    keep_x, keep_y = [], []
    best = math.inf
    for i in order:
        if ys[i] < best:
            keep_x.append(xs[i])
            keep_y.append(ys[i])
            best = ys[i]
    return np.array(keep_x), np.array(keep_y)


def loss_at(front: tuple[np.ndarray, np.ndarray], drift: float) -> float:
    xs, ys = front
    if drift < xs[0]:
        return math.nan
    return float(np.interp(drift, xs, ys))  # flat past the last point


def drift_at(front: tuple[np.ndarray, np.ndarray], loss: float) -> float:
    """The least drift at which the front reaches loss; nan when it never does."""
    xs, ys = front
    if loss < ys[-1]:
        return math.nan
    if loss >= ys[0]:
        return float(xs[0])
    return float(np.interp(-loss, -ys, xs))  # ys decrease along the front


def _verdict(delta: float, low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not resolved"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "not resolved"


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _offset_std(points: list[tuple[float, float]], front: tuple[np.ndarray, np.ndarray],
                kind: str) -> float | None:
    """The spread over seeds of each seed's (drift, loss) read against ``front``: its loss
    minus the front's at its drift, or its drift minus the front's at its loss."""
    if kind == "loss at matched drift":
        offsets = [loss - loss_at(front, drift) for drift, loss in points]
    else:
        offsets = [drift - drift_at(front, loss) for drift, loss in points]
    return _std([o for o in offsets if math.isfinite(o)])


class Fronts:
    """Fronts of every cell for one drift set, under every resample."""

    def __init__(self, plan: Plan, data: dict[str, Any], resampled: Resampled, name: str):
        self.name = name
        self.base = data["base"]
        self.cells: dict[str, dict[str, Any]] = {}
        base_loss = resampled.loss(self.base) if self.base else None
        for cell, points in data["cells"].items():
            if not points:
                continue
            first_seed = plan.cell(cell).seeds[0]
            traced = [p for p in points if p["seed"] == first_seed]
            xs = np.array([resampled.drift(p, name) for p in traced])  # points x resamples
            ys = np.array([resampled.loss(p) for p in traced])
            if base_loss is not None:
                xs = np.vstack([np.zeros_like(base_loss), xs])
                ys = np.vstack([base_loss, ys])
            lr = _standard_lr(plan, cell, points)
            finals = []
            for seed in plan.cell(cell).seeds:
                runs = [p for p in points if p["seed"] == seed and p["learning_rate"] == lr]
                if runs:
                    finals.append(max(runs, key=lambda p: p["step"]))
            self.cells[cell] = {
                "xs": xs, "ys": ys, "points": traced,
                "standard": {
                    "learning_rate": lr, "seeds": [p["seed"] for p in finals],
                    "loss": np.mean([resampled.loss(p) for p in finals], axis=0)
                    if finals else None,
                    "drift": np.mean([resampled.drift(p, name) for p in finals], axis=0)
                    if finals else None,
                    "loss_std": _std([float(resampled.loss(p)[0]) for p in finals]),
                    "drift_std": _std([float(resampled.drift(p, name)[0]) for p in finals]),
                    # each seed's (drift, loss), for the seed spread of the verdicts
                    "seed_points": [(float(resampled.drift(p, name)[0]),
                                     float(resampled.loss(p)[0])) for p in finals],
                    "n": len(finals)}}

    def front(self, cell: str, sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
        entry = self.cells[cell]
        return envelope(entry["xs"][:, sample], entry["ys"][:, sample])

    def _from_base(self, front: tuple[np.ndarray, np.ndarray], kind: str, at: float) -> bool:
        """Whether the matched value is read between the base and the front's first measured
        point: no run was measured there, so it rests on the straight line."""
        if self.base is None:
            return False
        xs, ys = front
        if len(xs) < 2:
            return True
        return bool(at < xs[1]) if kind == "loss at matched drift" else bool(at > ys[1])

    def compare(self, reference: str, other: str) -> list[dict[str, Any]]:
        """Verdicts (a) and (b) of reference against other."""
        a, b = self.cells[reference], self.cells[other]
        standard = a["standard"]
        if standard["loss"] is None:
            return []
        samples = standard["loss"].shape[0]
        measured = self.front(other)  # unresampled: where its runs were measured
        out = []
        for kind in ("loss at matched drift", "drift at matched loss"):
            deltas = np.empty(samples)
            for s in range(samples):
                if kind == "loss at matched drift":
                    deltas[s] = standard["loss"][s] - loss_at(self.front(other, s),
                                                              standard["drift"][s])
                else:
                    deltas[s] = standard["drift"][s] - drift_at(self.front(other, s),
                                                                standard["loss"][s])
            # The seed spread of the verdict itself: each of A's seeds read against B's
            # front (its drift moves along that front too, not only its loss), and each
            # of B's seeds against B's own first-seed front (how far that front moves with
            # the seed). A side with one seed borrows the other's spread (a screen's
            # one-seed cell against random neurons' three seeds counts random's twice).
            own_sd = _offset_std(standard["seed_points"], measured, kind)
            their_sd = _offset_std(b["standard"]["seed_points"], measured, kind)
            own = own_sd if own_sd is not None else their_sd
            theirs = their_sd if their_sd is not None else own
            seed_var = ((own or 0.0) ** 2 / max(standard["n"], 1) + (theirs or 0.0) ** 2)
            finite = deltas[1:][np.isfinite(deltas[1:])]
            delta = float(deltas[0])
            at = float(standard["drift"][0] if kind.startswith("loss") else standard["loss"][0])
            entry = {"reference": reference, "other": other, "drift_set": self.name,
                     "measure": kind, "at": at,
                     "from_base": self._from_base(measured, kind, at),
                     "past_front": bool(at > measured[0][-1]) if kind.startswith("loss")
                     else bool(at < measured[1][-1]),
                     "delta": delta if math.isfinite(delta) else None,
                     "seed_variance": seed_var,
                     "seed_variance_borrowed": (their_sd is None) != (own_sd is None),
                     "reached": float(np.isfinite(deltas[1:]).mean())}
            if math.isfinite(delta) and len(finite) > 1:
                half = Z95 * math.sqrt(float(np.var(finite, ddof=1)) + seed_var)
                entry["interval"] = [delta - half, delta + half]
                entry["verdict"] = _verdict(delta, delta - half, delta + half)
            else:  # other never reaches the reference's loss (in most resamples)
                entry["interval"] = None
                entry["verdict"] = ("better (the other front never reaches this loss)"
                                    if entry["reached"] < 0.025 else "not resolved")
            out.append(entry)
        return out


def generation_verdicts(plan: Plan, reference: str, other: str) -> list[dict[str, Any]]:
    """(c): every bootstrappable score of the two cells' best-dev-loss runs."""

    results = {}
    for cell in (reference, other):
        run = best_run(plan, cell)
        if run is None or current(plan, run) is None:
            return []
        results[cell] = read_json(os.path.join(plan.config.output_dir, run.folder, EVAL_FILE))
    refs = [s["reference"] for s in results[reference]["samples"]]
    if refs != [s["reference"] for s in results[other]["samples"]]:
        return []
    lang = results[reference]["settings"].get("target_lang")
    out = []
    for metric in plan.metrics:
        if metric not in BOOTSTRAP_METRICS:
            continue
        test = paired_bootstrap([s["hypothesis"] for s in results[reference]["samples"]],
                                [s["hypothesis"] for s in results[other]["samples"]], refs,
                                metric=metric, n=RESAMPLES, seed=SEED, target_lang=lang)
        low, high = test["interval"]
        verdict = "better" if low > 0 else "worse" if high < 0 else "not resolved"
        out.append({"reference": reference, "other": other, "measure": metric,
                    "delta": test["delta"], "interval": test["interval"],
                    "score_reference": test["score_a"], "score_other": test["score_b"],
                    "verdict": verdict, "records": len(refs)})
    return out


def verdicts(plan: Plan) -> dict[str, Any] | None:
    """Fronts (per drift set) and the reference's verdicts against every other cell."""
    if plan.front is None or plan.reference is None:
        return None
    data = collect_points(plan)
    if not any(data["cells"].values()):
        return None
    sets = list(plan.front["drift_sets"])
    resampled = Resampled(data, sets)
    fronts = {name: Fronts(plan, data, resampled, name) for name in sets}
    rows: list[dict[str, Any]] = []
    others = [c.name for c in plan.cells if c.name != plan.reference]
    if plan.reference in fronts[sets[0]].cells:
        for other in others:
            for name in sets:
                if other in fronts[name].cells:
                    rows += fronts[name].compare(plan.reference, other)
            rows += generation_verdicts(plan, plan.reference, other)
    return {"data": data, "fronts": fronts, "rows": rows, "sets": sets}
