"""The comparison grid as data: `CompareConfig` (the YAML), its cells, and the runs.

A *cell* is one method at one budget (``{method: neft, match_lora: 8}``); a *run* is one
cell at one seed, or one short learning-rate sweep run. Every run has a *spec*: the
settings that decide its result. The spec is stored with the result, so a changed
config is never answered with an old result.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from ...config import from_dict, option
from ...data.options import DATA_OPTIONS, DataOptions
from ...data.records import split_fingerprints
from ...data.sources import fingerprint, load_drift_sets
from ...errors import NeftError
from ...evaluate.metrics import parse_metrics
from ...train import METHODS, SELECTION_SHAPES, TrainConfig
from ...train.options import ADDED_OPTIONS

# TrainConfig options that compare sets itself, with where the user gives them instead.
OWNED_TRAIN = {
    "model": "the top-level model:", "train_file": "the top-level data:",
    "eval_file": "the top-level data:", "train_split": "the top-level train_split:",
    "eval_split": "the top-level dev_split:", "output_dir": "the top-level output_dir:",
    "task": "the top-level task:", "template": "the top-level template:",
    "source_lang": "the top-level source_lang:", "target_lang": "the top-level target_lang:",
    "source_field": "the top-level source_field:", "target_field": "the top-level target_field:",
    "max_train_samples": "the top-level max_train_samples:",
    "max_eval_samples": "the top-level max_dev_samples:", "seed": "the top-level seeds: list",
    "resume": "nothing (compare resumes by itself)",
    "overwrite": "nothing (compare never reuses a changed run)",
}
# EvalConfig options a comparison may set in its eval: section.
EVAL_KEYS = ("batch_size", "max_new_tokens", "no_repeat_ngram_size", "stop_at_newline",
             "metrics", "comet_model", "dtype", "bf16")
SWEEP_KEYS = ("values", "steps", "per")
FRONT_KEYS = ("steps", "drift_data", "generate", "loss_samples", "confirm_split")
CELL_EXTRA_KEYS = ("name", "seeds", "own_sweep", "learning_rates")
# Options that change no result: left out of a run's spec.
NOT_IN_SPEC = ("output_dir", "resume", "overwrite", "logging_steps", "report_to",
               "save_total_limit")
TASK_METRICS = {"translation": "bleu,chrf", "summarization": "rouge"}


@dataclass
class CompareConfig(DataOptions):
    """Every option of `neft compare` (YAML keys; the scalar ones are also flags); the data
    options, shared by every run, come from DataOptions."""

    output_dir: str = option("where runs, the table, JSON and plot go", "outputs/compare")
    model: str = option("model name or path; smollm2-135m is the embedded default",
                        "smollm2-135m")
    data: str | None = option("task data: a folder of train/dev/test files or a hub dataset")
    train_split: str = option("split to train on", "train")
    dev_split: str = option("split for dev loss: best checkpoint and the lr sweep", "dev")
    test_split: str = option("split that is scored (never used to choose anything)", "test")
    max_train_samples: int | None = option("train on the first N training records")
    max_dev_samples: int | None = option("use the first N dev records", 200)
    max_test_samples: int | None = option("generate for the first N test records (a front's "
                                          "test loss reads front.loss_samples)")
    seeds: list | None = option("seeds every cell runs with (a cell may give its own seeds:)")
    train: dict | None = option("`neft train` options shared by every run (YAML only)")
    eval: dict | None = option(f"generation and scoring options: {', '.join(EVAL_KEYS)} "
                               "(YAML only)")
    lr_sweep: dict | None = option("values: [lr, ...] or {method: [lr, ...]}, steps: N, per: "
                                   "cell|method; lowest dev loss wins (YAML only)")
    methods: list | None = option("the cells: a list of `neft train` options such as "
                                  "{method: neft, match_lora: 8} (YAML only)")
    front: dict | None = option("measure test loss and drift at dev evaluations: steps: [N, "
                                "...], drift_data: files (default: this machine's), "
                                "generate: best|all, loss_samples: N, confirm_split: a "
                                "second split measured at the same points (YAML only)")
    reference: str | None = option("the cell the verdicts compare every other cell with "
                                   "(default: the first neft cell)")
    cells: str | None = option("run only these cells of the grid (comma-separated names, as "
                               "in its table): a subset that shares the grid's folder and runs")
    first_runs: bool = option("run only each cell's first run (its first seed at its seeded "
                              "rate), the base and any lr sweep, and no generation: a point "
                              "per cell, soonest; rerun without it for the rest", False)
    include_base: bool = option("also score the untrained model (no training, one run)", False)
    plot_metric: str | None = option("score on the plot's y axis (default: every table metric)")
    isolate: bool = option("run each run in its own process (own peak memory; a crash "
                           "stops only that run)", True)
    keep_checkpoints: bool = option("keep Trainer checkpoints of finished runs (large)", False)
    recompute_changed: bool = option("recompute finished runs whose settings changed (else "
                                     "that is an error)", False)
    dry_run: bool = option("print the plan and which runs are done, run nothing", False)

    def __post_init__(self) -> None:
        self.check_data_options()
        if not self.data:
            raise NeftError("no data: give data: (a folder with train/dev/test files or a "
                            "hub dataset) in the compare YAML")
        if not self.methods:
            raise NeftError("no methods: give a methods: list in the compare YAML, e.g. "
                            "[{method: neft, match_lora: 8}, {method: lora, lora_r: 8}]")
        if not isinstance(self.methods, list):
            raise NeftError("methods: must be a list of mappings such as {method: lora, "
                            "lora_r: 8}")


# ----------------------------------------------------------------------------- plan


@dataclass
class Sweep:
    """The lr sweep that picks one or more cells' learning rate."""

    cell: str  # the cell it runs on
    values: list[float]
    steps: int
    seed: int
    per: str  # lr_sweep.per: "cell" or "method" (whose cells share it)


@dataclass
class Cell:
    name: str
    method: str
    train: dict[str, Any]  # TrainConfig values, without seed and (when swept) learning_rate
    seeds: list[int]
    budget: str  # for the table: "= LoRA r8", "3%", "r8", "all"
    lr_source: str  # "sweep", "given", "default" or "front" (runs at learning_rates)
    sweep: Sweep | None = None
    learning_rates: list[float] | None = None  # front cells: first seed at each, the other
    # seeds at seeded_rate
    seeded_rate: float | None = None  # front cells: learning_rate when given, else the middle
    own_sweep: bool | list[float] = False  # swept on its own (with these values) even when
    # lr_sweep.per is method


@dataclass
class Run:
    """One process's work: a cell at one seed, one sweep value, or the base model."""

    kind: str  # cell, sweep or base
    cell: str
    folder: str  # relative to output_dir
    spec: dict[str, Any]
    seed: int | None = None
    learning_rate: float | None = None  # sweep runs: the value; cells: set from the sweep
    first: bool = False  # a cell's first run: its first seed at its seeded rate


@dataclass
class Plan:
    config: CompareConfig
    data: str  # absolute when local: runs work inside the grid folder
    model: str
    cells: list[Cell]
    sweeps: dict[str, list[Run]]  # swept cell -> its runs, in value order
    runs: list[Run]  # cells (and base), in the order they run
    eval: dict[str, Any]
    metrics: list[str]  # score names in the table
    front: dict[str, Any] | None = None  # steps, drift_data, drift_sets, generate, ...
    reference: str | None = None  # the verdicts' reference cell
    read_split: str | None = None  # fronts read on front.confirm_split, not test_split

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)

    def all_runs(self) -> list[Run]:
        return [r for runs in self.sweeps.values() for r in runs] + self.runs

    def runs_now(self, run: Run) -> bool:
        """Whether this invocation runs ``run``: all, or with first_runs only the base,
        the sweeps and each cell's first run (the rest stay in the plan, read when done)."""
        return not self.config.first_runs or run.kind != "cell" or run.first


def canonical(data: Any) -> Any:
    """JSON round trip: tuples become lists, so stored and new specs compare equal."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


# Settings recorded since runs were first recorded, by path: a run recorded before holds
# none, and was made with the value here (None: any; a data file's contents cannot be
# checked later).
ADDED_SETTINGS: dict[str, Any] = {
    "data_files": None,  # 2026-12-07
    **{f"train.{name}": value for name, value in ADDED_OPTIONS.items()},
}


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """'train.max_steps: 60 -> 100' for the first setting that differs, else None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else key
            if key not in old and where in ADDED_SETTINGS and (
                    ADDED_SETTINGS[where] is None or new[key] is ADDED_SETTINGS[where]):
                continue
            found = first_difference(old.get(key), new.get(key), where)
            if found:
                return found
        return None
    return None if old == new else f"{path}: {old!r} -> {new!r}"


def _ints(values: Any, where: str) -> list[int]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise NeftError(f"{where} must be a list of whole numbers, e.g. [1234, 1235]")
    if len(set(values)) != len(values):
        raise NeftError(f"{where} lists a seed twice: {values}")
    return values


def _floats(values: Any, where: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise NeftError(f"{where} must be a list of learning rates, e.g. [1e-4, 3e-4, 1e-3]")
    try:
        result = [float(v) for v in values]
    except (TypeError, ValueError):
        raise NeftError(f"{where} must hold numbers, not {values!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in result):
        raise NeftError(f"{where}: learning rates must be positive numbers, not {values!r}")
    if len(set(result)) != len(result):
        raise NeftError(f"{where} lists a learning rate twice: {values!r}")
    return result


def _check_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NeftError(f"{where} must be a mapping of option: value")
    return value


def _unknown_key(key: str, names: list[str] | tuple[str, ...], where: str) -> NeftError:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"
    return NeftError(f"{where}: unknown option {key!r}; {hint}")


def _check_keys(values: dict[str, Any], names: list[str] | tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in names:
            raise _unknown_key(key, names, where)


def _check_train_keys(values: dict[str, Any], where: str, extra: tuple[str, ...] = ()) -> None:
    """`neft train` option names (plus extra), refusing those compare sets itself."""
    for key in values:
        if key in OWNED_TRAIN:
            raise NeftError(f"{where}: {key} is set by compare; use {OWNED_TRAIN[key]}")
    _check_keys(values, [f.name for f in dataclasses.fields(TrainConfig)] + list(extra), where)


def _budget(method: str, cell: dict[str, Any], train: dict[str, Any]) -> tuple[str, str]:
    """(table label, name part) of a cell's budget, following train._budget's precedence."""
    registered = METHODS[method]
    if registered.budget == "lora_rank":
        return f"r{train['lora_r']}", f"r{train['lora_r']}"
    if registered.budget is None:
        return registered.label or method, ""
    if method == "neft" and train.get("neurons"):
        stem = os.path.splitext(os.path.basename(str(train["neurons"])))[0]
        return f"file {stem}", stem
    if train.get("num_neurons") is not None:
        return f"{train['num_neurons']:,} neurons", f"{train['num_neurons']}n"
    if train.get("percent") is not None:
        return f"{train['percent']:g}%", f"{train['percent']:g}pct"
    if train.get("match_lora") is None:
        raise NeftError(f"{method} cell {cell} has no budget: give match_lora, percent or "
                        "num_neurons")
    return f"= LoRA r{train['match_lora']}", f"lora{train['match_lora']}"


def _cell_name(method: str, cell: dict[str, Any], budget_slug: str) -> str:
    parts = [method]
    if method == "neft" and "scorer" in cell:
        parts.append(str(cell["scorer"]))
    if budget_slug:
        parts.append(budget_slug)
    return "-".join(parts)


def _spec_train(train: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result; the scorer only decides NeFT's (random
    neurons are random whatever it is), so changing it recomputes only NeFT's runs. (A run
    that selects nothing records select_avoid as None whatever the default: TrainConfig.)"""
    return {k: v for k, v in train.items() if k not in NOT_IN_SPEC
            and not (k == "scorer" and train.get("method") != "neft")}


def _abs_if_local(path: str) -> str:
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else path


def build_plan(config: CompareConfig) -> Plan:
    """Check every part of the config and lay out the runs; fails before any training."""
    shared = _check_mapping(config.train, "train")
    _check_train_keys(shared, "train")
    if "method" in shared:
        raise NeftError("train: method is given per cell, in the methods: list")
    eval_options = _check_mapping(config.eval, "eval")
    _check_keys(eval_options, EVAL_KEYS, "eval")
    eval_options = {"metrics": TASK_METRICS.get(config.task), **eval_options}
    if eval_options.get("comet_model"):
        eval_options["comet_model"] = _abs_if_local(str(eval_options["comet_model"]))
    sweep = _check_mapping(config.lr_sweep, "lr_sweep")
    _check_keys(sweep, SWEEP_KEYS, "lr_sweep")
    per = sweep.get("per", "cell")
    if per not in ("cell", "method"):
        raise NeftError(f"lr_sweep.per must be cell or method, not {per!r}")
    steps = sweep.get("steps", 30)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise NeftError(f"lr_sweep.steps must be a positive whole number, not {steps!r}")
    if sweep and "learning_rate" in shared:
        raise NeftError("train.learning_rate and lr_sweep are both given: drop one (a cell may "
                        "fix its own learning_rate, which skips its sweep)")
    seeds = _ints(config.seeds if config.seeds is not None else [1234], "seeds")
    front = _front(config, shared)

    data, model = _abs_if_local(config.data), _abs_if_local(config.model)
    common = {"model": model, "train_file": data, "eval_file": data,
              "train_split": config.train_split, "eval_split": config.dev_split,
              **config.data_options(), "max_train_samples": config.max_train_samples,
              "max_eval_samples": config.max_dev_samples}
    cells: list[Cell] = []
    for index, raw in enumerate(config.methods):
        where = f"methods[{index}]"
        if not isinstance(raw, dict) or "method" not in raw:
            raise NeftError(f"{where} must be a mapping with a method:, e.g. {{method: lora, "
                            "lora_r: 8}")
        _check_train_keys(raw, where, CELL_EXTRA_KEYS)
        own = {k: v for k, v in raw.items() if k not in CELL_EXTRA_KEYS}
        if own.get("neurons"):
            own["neurons"] = _abs_if_local(str(own["neurons"]))
            if not os.path.isfile(own["neurons"]):
                raise NeftError(f"{where}: neurons file {raw['neurons']} does not exist; make "
                                "one with `neft select`, or drop neurons: to select on the fly")
        registered = METHODS.get(own["method"])
        inherited = shared
        if registered is not None and (not registered.selects_neurons or own.get("neurons")):
            # the shared block shapes the selections of the cells that select, only; a
            # cell's own shape where it selects nothing is a mistake
            inherited = {k: v for k, v in shared.items() if k not in SELECTION_SHAPES}
            for name in SELECTION_SHAPES:
                if str(own.get(name)).lower() != "none":  # unset, or none given
                    raise NeftError(f"{where}: {name} shapes a neuron selection, and this "
                                    f"cell selects none (method {own['method']}"
                                    f"{', neurons from a file' if own.get('neurons') else ''})"
                                    f": drop {name}")
        try:
            train = from_dict(TrainConfig, {**inherited, **own, **common}).to_dict()
        except NeftError as exc:
            raise NeftError(f"{where}: {exc}") from None
        method = train["method"]
        label, slug = _budget(method, raw, train)
        name = str(raw.get("name") or _cell_name(method, raw, slug))
        if any(c.name == name for c in cells):
            raise NeftError(f"{where}: a second cell named {name!r}; give one of them a name:")
        if "/" in name or name.startswith("."):
            raise NeftError(f"{where}: name {name!r} must not contain '/' or start with '.'")
        given = "learning_rate" in raw or "learning_rate" in shared
        source = "given" if given else ("sweep" if sweep else "default")  # default: 5e-4
        own_sweep = raw.get("own_sweep", False)
        if isinstance(own_sweep, list):
            own_sweep = _floats(own_sweep, f"{where}.own_sweep")
        elif not isinstance(own_sweep, bool):
            raise NeftError(f"{where}: own_sweep must be true, false or a list of learning "
                            f"rates, not {own_sweep!r}")
        if own_sweep and source != "sweep":
            raise NeftError(f"{where}: own_sweep needs an lr_sweep and no learning_rate for "
                            "this cell; drop one of them")
        rates, seeded = None, None
        if "learning_rates" in raw:
            if front is None:
                raise NeftError(f"{where}: learning_rates traces a front; add a front: section "
                                "(e.g. front: {steps: [100, 200]})")
            if own_sweep:
                raise NeftError(f"{where}: give learning_rates or own_sweep, not both")
            rates = sorted(_floats(raw["learning_rates"], f"{where}.learning_rates"))
            seeded = train["learning_rate"] if "learning_rate" in raw else middle(rates)
            if seeded not in rates:
                raise NeftError(f"{where}: learning_rate {seeded:g} (the rate of the other "
                                f"seeds) must be one of learning_rates {rates}")
            source = "front"
        if front is not None and front["steps"] and any(k in raw for k in ("eval_steps",
                                                                          "max_steps")):
            _check_front_steps(front["steps"], train, f"{where} ({name})")
        cells.append(Cell(name, method, train, _ints(raw.get("seeds", seeds), f"{where}.seeds"),
                          label, source, own_sweep=own_sweep, learning_rates=rates,
                          seeded_rate=seeded))

    swept_by_method: dict[str, Cell] = {}
    reference = _reference(config, cells, front)
    if front is not None:  # the whole grid's, so that a subset measures as the grid does
        front["max_length"] = cells[0].train["max_length"]
    for cell in cells:
        if cell.lr_source != "sweep":
            continue
        values = cell.own_sweep if isinstance(cell.own_sweep, list) else sweep.get("values")
        if isinstance(values, dict):
            unknown = [m for m in values if m not in METHODS]
            if unknown:
                raise NeftError(f"lr_sweep.values: {unknown[0]!r} is not a method; use "
                                f"{', '.join(METHODS)}")
            if cell.method not in values:
                raise NeftError(f"lr_sweep.values has no learning rates for method "
                                f"{cell.method} (cell {cell.name}): add {cell.method}: "
                                "[...] or give the cell a learning_rate")
            values = values[cell.method]
        values = _floats(values, "lr_sweep.values")
        owner = (swept_by_method.get(cell.method)
                 if per == "method" and not cell.own_sweep else None)
        if owner is None:
            owner = cell
            if not cell.own_sweep:
                swept_by_method.setdefault(cell.method, cell)
        cell.sweep = Sweep(owner.name, values, steps, owner.seeds[0], per)
        cell.train.pop("learning_rate")

    cells = _only(config.cells, cells, reference)
    plan_eval = {**eval_options, "split": config.test_split,
                 "max_samples": config.max_test_samples}
    test = {"data": data, **{k: plan_eval[k] for k in ("split", "max_samples")}}
    data_files = split_fingerprints(data, [config.train_split, config.dev_split,
                                           config.test_split,
                                           front["confirm_split"] if front else None])
    sweeps: dict[str, list[Run]] = {}
    for cell in cells:
        if cell.sweep is None or cell.sweep.cell != cell.name:
            continue
        runs = []
        for value in cell.sweep.values:
            spec_train = _spec_train({**cell.train, "learning_rate": value,
                                      "max_steps": steps, "eval_steps": steps,
                                      "save_steps": steps, "seed": cell.sweep.seed})
            runs.append(Run("sweep", cell.name, os.path.join("sweep", f"{cell.name}-lr{value:g}"),
                            canonical({"kind": "sweep", "train": spec_train,
                                       "data_files": data_files}),
                            cell.sweep.seed, value))
        sweeps[cell.name] = runs

    runs: list[Run] = []
    if config.include_base:
        base_spec = {"kind": "base", "model": model, "eval": eval_options, "test": test,
                     "prompt": {k: common[k] for k in DATA_OPTIONS}, "data_files": data_files}
        if front is not None:  # its test loss is the fronts' point at drift 0
            base_spec["front"] = {"loss_samples": front["loss_samples"],
                                  "max_length": front["max_length"],
                                  "confirm_split": front["confirm_split"]}
            if front["generate"] == "none":  # a base without generation scores
                base_spec["front"]["generate"] = "none"
        runs.append(Run("base", "base", os.path.join("cells", "base"), canonical(base_spec)))
    for position, (cell, seed, lr) in enumerate(_cell_runs(cells)):
        spec_lr: dict[str, Any] = {"source": cell.lr_source}
        if cell.sweep is not None:
            spec_lr.update(swept_on=cell.sweep.cell, values=cell.sweep.values,
                           steps=cell.sweep.steps, seed=cell.sweep.seed)
        train = {**cell.train, "seed": seed}
        folder = f"{cell.name}-s{seed}"
        if cell.learning_rates is not None:
            train["learning_rate"] = lr
            folder = f"{cell.name}-lr{lr:g}-s{seed}"
        spec = {"kind": "cell", "train": _spec_train(train), "lr": spec_lr,
                "eval": eval_options, "test": test, "data_files": data_files}
        if front is not None:
            spec["front"] = front["spec"]
        runs.append(Run("cell", cell.name, os.path.join("cells", folder), canonical(spec), seed,
                        None if cell.sweep else train["learning_rate"],
                        first=position < len(cells)))
    metrics = score_names(eval_options.get("metrics"))
    if config.plot_metric and config.plot_metric not in metrics:
        raise NeftError(f"plot_metric {config.plot_metric!r} is not among the scores "
                        f"({', '.join(metrics) or 'none'}); set eval.metrics to include it")
    return Plan(config, data, model, cells, sweeps, runs, plan_eval, metrics, front, reference)


def middle(values: list[float]) -> float:
    """A front cell's default seeded rate: the middle one (the lower middle of an even
    count)."""
    return values[(len(values) - 1) // 2]


def _cell_runs(cells: list[Cell]) -> list[tuple[Cell, int, float | None]]:
    """(cell, seed, learning rate) of every cell run, in the order they run: each cell's
    first seed (at the seeded rate for front cells) first, so that a stopped grid already
    compares every cell; then the other rates of the fronts; then the other seeds."""
    first, rates, others = [], [], []
    for cell in cells:
        lr = cell.seeded_rate if cell.learning_rates else cell.train.get("learning_rate")
        first.append((cell, cell.seeds[0], lr))
        rates += [(cell, cell.seeds[0], v) for v in cell.learning_rates or [] if v != lr]
    longest = max(len(c.seeds) for c in cells)
    for position in range(1, longest):
        others += [(cell, cell.seeds[position], cell.seeded_rate
                    if cell.learning_rates else cell.train.get("learning_rate"))
                   for cell in cells if position < len(cell.seeds)]
    return first + rates + others


def _front(config: CompareConfig, shared: dict[str, Any]) -> dict[str, Any] | None:
    """The checked front: section, with its drift sets' fingerprints for the specs."""
    if config.front is None:
        return None
    front = _check_mapping(config.front, "front")
    _check_keys(front, FRONT_KEYS, "front")
    steps = front.get("steps")
    if steps is not None:
        steps = sorted(_ints(steps, "front.steps"))
        _check_front_steps(steps, shared, "train")
    generate = front.get("generate", "best")
    if generate not in ("best", "all", "none"):
        raise NeftError(f"front.generate must be best (each cell's best-dev-loss run), all or "
                        f"none (fronts only, e.g. a screen on dev), not {generate!r}")
    loss_samples = front.get("loss_samples")
    if loss_samples is not None and (not isinstance(loss_samples, int) or loss_samples < 1):
        raise NeftError(f"front.loss_samples must be a positive whole number, not "
                        f"{loss_samples!r}")

    confirm = front.get("confirm_split")
    if confirm is not None and (not isinstance(confirm, str) or not confirm
                                or confirm == config.test_split):
        raise NeftError(f"front.confirm_split must name a split other than test_split "
                        f"({config.test_split}), e.g. test beside test_split: dev; not "
                        f"{confirm!r}")

    drift_data = front.get("drift_data")
    if isinstance(drift_data, list):
        drift_data = [_abs_if_local(str(p)) for p in drift_data]
    elif drift_data is not None:
        drift_data = [_abs_if_local(p.strip()) for p in str(drift_data).split(",") if p.strip()]
    sets = load_drift_sets(drift_data)
    prints = {name: fingerprint(texts) for name, texts in sets.items()}
    return {"steps": steps, "drift_data": drift_data, "generate": generate,
            "loss_samples": loss_samples, "drift_sets": prints, "confirm_split": confirm,
            "spec": {"steps": steps, "drift_sets": prints, "loss_samples": loss_samples,
                     "confirm_split": confirm}}


def _check_front_steps(steps: list[int], train: dict[str, Any], where: str) -> None:
    """A front point is measured where dev loss is, so each step must be an evaluation step
    that the run reaches."""
    eval_steps, max_steps = train.get("eval_steps", 50), train.get("max_steps")
    if any(step < 1 or (eval_steps and step % eval_steps) for step in steps):
        raise NeftError(f"front.steps {steps}: each must be a positive multiple of "
                        f"{where}.eval_steps ({eval_steps}), where dev loss is measured")
    if isinstance(max_steps, int) and max_steps > 0 and steps[-1] > max_steps:
        raise NeftError(f"front.steps {steps}: {steps[-1]} is past {where}.max_steps "
                        f"({max_steps}); drop it or train longer")


def _only(wanted: str | None, cells: list[Cell], reference: str | None) -> list[Cell]:
    """The cells `cells:` names, in the grid's order (all when it is not set). Their runs
    are the whole grid's only if what they borrow comes along: the reference, and the cell
    whose lr sweep a per-method cell shares."""
    if wanted is None:
        return cells
    names = [c.name for c in cells]
    chosen = [n.strip() for n in str(wanted).split(",") if n.strip()]
    if not chosen:
        raise NeftError("cells: names no cell; give comma-separated cell names, e.g. "
                        f"{','.join(names[:2])}")
    for name in chosen:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its cells: {', '.join(names)}"
            raise NeftError(f"cells: {name!r} is not a cell of the grid; {hint}")
    kept = [c for c in cells if c.name in chosen]
    if reference is not None and reference not in chosen:
        raise NeftError(f"cells: leaves out {reference!r}, the reference every verdict "
                        "compares with; add it")
    for cell in kept:
        if cell.sweep is not None and cell.sweep.cell not in chosen:
            raise NeftError(f"cells: {cell.name} takes its learning rate from "
                            f"{cell.sweep.cell}'s sweep (lr_sweep per: method); add "
                            f"{cell.sweep.cell}")
    return kept


def _reference(config: CompareConfig, cells: list[Cell], front: dict[str, Any] | None
               ) -> str | None:
    names = [c.name for c in cells]
    if config.reference is not None:
        if config.reference not in names:
            close = difflib.get_close_matches(config.reference, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"cells: {', '.join(names)}"
            raise NeftError(f"reference {config.reference!r} is not a cell of the grid; {hint}")
        return config.reference
    if front is None:
        return None
    return next((c.name for c in cells if c.method == "neft"), names[0])


def score_names(metrics: str | None) -> list[str]:
    """Score keys that `neft eval` reports for a metrics string."""

    names = []
    for metric in parse_metrics(metrics):
        names += {"rouge": ["rouge1", "rouge2", "rougeL"],
                  "placeholders": ["placeholder_survival"]}.get(metric, [metric])
    return names


def selection_key(train: dict[str, Any]) -> str:
    """Hash of what neuron selection depends on: runs that share it share one NeuronSet."""
    keys = ("model", "method", "scorer", "match_lora", "num_neurons", "percent",
            "train_file", "train_split", "task", "template", "source_lang", "target_lang",
            "source_field", "target_field", "max_train_samples", "max_length", "seed",
            "lora_target_modules", "trust_remote_code")
    values = {k: train.get(k) for k in keys}
    # Settings added later count only when set, so that earlier grids keep their sets.
    values.update({k: train[k] for k in ("scorer_options", *SELECTION_SHAPES)
                   if train.get(k) is not None})
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
