"""Running a comparison grid: lr sweeps, then every cell at every seed, resumably.

A run is finished when its folder holds result.json (written last, atomically). A rerun
skips finished runs whose recorded settings equal the config's, redoes unfinished ones
(resuming their training where possible), and refuses to reuse a finished run whose
settings changed unless told to recompute it.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ...config import from_dict, load_yaml
from ...core.io import clear_folder, folder_lock, read_json, write_json, write_text
from ...data.records import load_records
from ...errors import NeftError
from .plan import CompareConfig, Plan, Run, build_plan, first_difference, selection_key
from .report import format_lr, write_report
from .results import best_run, current, load_result
from .worker import FAILED_FILE, JOB_FILE, RESULT_FILE, RUN_LOG_FILE, run_job

LOCK_FILE = "compare.lock"
PROGRESS_FILE = "compare.log"
TRAIN_FOLDER = "train"  # a run folder's training output, kept when only scoring changes
WORKER_MAIN = ("import sys; from neft.experiments.compare.worker import main; "
               "sys.exit(main(sys.argv[1:]))")  # one run in its own process


# ----------------------------------------------------------------------------- state


def changed_runs(plan: Plan) -> list[tuple[Run, str]]:
    """Finished runs whose recorded settings differ from the plan's, with the first change."""
    changed = []
    for run in plan.all_runs():
        result = load_result(plan.config.output_dir, run)
        if result is not None:
            difference = first_difference(result.get("spec"), run.spec)
            if difference:
                changed.append((run, difference))
    return changed


def check_data(plan: Plan) -> None:
    """Read every record of every split the grid uses (seconds), so a typo or a broken
    line fails now, in one line, not in the first run an hour later."""

    config = plan.config
    test = plan.front["loss_samples"] if plan.front is not None else config.max_test_samples
    limits: dict[str | None, int | None] = {}
    used = [(config.train_split, config.max_train_samples),
            (config.dev_split, config.max_dev_samples), (config.test_split, test)]
    if plan.front is not None and plan.front["confirm_split"]:
        used.append((plan.front["confirm_split"], test))
    for split, limit in used:
        seen = limits.get(split, 0)  # a split read twice: the larger of the two (None: all)
        limits[split] = None if None in (seen, limit) else max(seen, limit)
    if os.path.isfile(config.data):  # load_records reads a file whole for any split
        raise NeftError(f"data {config.data} is one file, which would serve as train, dev and "
                        "test split alike: put train, dev and test files (e.g. train.jsonl, "
                        "dev.jsonl, test.jsonl) in a folder and pass the folder")
    confirm = plan.front["confirm_split"] if plan.front is not None else None
    for split, limit in limits.items():
        try:
            load_records(config.data, split=split, field_map=config.field_map(), limit=limit,
                         task=config.task)
        except NeftError as error:
            if split != confirm or split in (config.train_split, config.dev_split,
                                             config.test_split):
                options = [option for option in ("train_split", "dev_split", "test_split")
                           if getattr(config, option) == split]
                if f"has no {split}." not in str(error) or not options:
                    raise
                asked = " and ".join(f"{option} {split}" for option in options)
                raise NeftError(f"{error} (asked for by {asked}: pass --{options[0]} with a "
                                "split the data has)") from None
            raise NeftError(f"{error} (it is front.confirm_split, read only to confirm: add "
                            f"that split, or copy the config without confirm_split)") from None


def check_budgets(plan: Plan) -> None:
    """Every selecting cell's budget and layer band fit the model, read off the model
    built without weights (a second): a budget past the candidate pool fails now, not in
    each of its runs while the other cells train for hours."""
    from ...select.scoring import model_skeleton
    from ...train import TrainConfig
    from ...train.methods import check_selection_budget

    try:
        skeleton = model_skeleton(plan.model)
    except NeftError:  # a config only loading can read: the runs will say what is wrong
        return
    if skeleton is None:
        return
    for cell in plan.cells:
        try:
            check_selection_budget(skeleton, from_dict(TrainConfig, cell.train))
        except NeftError as error:
            raise NeftError(f"cell {cell.name}: {error}") from None


@contextlib.contextmanager
def grid_lock(output_dir: str) -> Iterator[int]:
    """One `neft compare` per output_dir: two would train into the same run folders.
    Yields the lock's file descriptor: children inherit it, so that a run left behind by
    a killed compare still holds the folder until it has stopped (hence the file stays)."""
    busy = (f"another neft compare (or a run it left, still saving its checkpoint) is using "
            f"{output_dir}; wait for it or use another output_dir")
    with folder_lock(output_dir, busy, name=LOCK_FILE, remove=False) as fd:
        yield fd


# ----------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child: get SIGTERM if compare dies (even by SIGKILL), so that training
    checkpoints and stops instead of running on unsupervised."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # compare died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _Terminated(KeyboardInterrupt):
    """compare got SIGTERM: pass it on to the running child, then stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def launch(output_dir: str, run: Run, isolate: bool, lock_fd: int | None = None
           ) -> tuple[bool, str]:
    """Run one job; (finished, message). KeyboardInterrupt stops the grid after the
    child has checkpointed."""
    folder = os.path.join(output_dir, run.folder)
    if not isolate:
        try:
            with _working_directory(output_dir):
                run_job(run.folder)
        except NeftError as exc:
            return False, f"error: {exc}"
        except Exception as exc:  # a crash ends this run, not the grid (as in a process)
            traceback.print_exc()
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "10"}
    with open(os.path.join(folder, RUN_LOG_FILE), "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n")
        log.flush()
        # -c, not -m: the package has imported the worker module already
        worker = [sys.executable, "-c", WORKER_MAIN, run.folder]
        process = subprocess.Popen(worker,
                                   cwd=output_dir, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   pass_fds=() if lock_fd is None else (lock_fd,),
                                   preexec_fn=_die_with_parent if sys.platform == "linux"
                                   else None)
        try:
            code = process.wait()
        except KeyboardInterrupt as exc:
            # Ctrl-C reached the child too (same process group); SIGTERM did not.
            if isinstance(exc, _Terminated):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=600)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            raise
    if code == 0 and os.path.isfile(os.path.join(folder, RESULT_FILE)):
        return True, ""
    if code in (130, -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt
    return False, f"exit status {code}; last lines of {os.path.join(folder, RUN_LOG_FILE)}:\n" + \
        "\n".join("    " + line for line in _tail(os.path.join(folder, RUN_LOG_FILE), 12))


def _tail(path: str, lines: int) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()[-20000:]
    return [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()
            ][-lines:]


# ----------------------------------------------------------------------------- the grid


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f}min"


class Progress:
    """'[ 3/21 0:12:04] ...' lines on stdout and in compare.log."""

    def __init__(self, output_dir: str, total: int) -> None:
        self.path = os.path.join(output_dir, PROGRESS_FILE)
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def line(self, text: str, count: bool = False) -> None:
        if count:
            self.done += 1
        width = len(str(self.total))
        stamp = f"[{self.done:>{width}}/{self.total} {_clock(time.perf_counter() - self.start)}]"
        message = f"{stamp} {text}"
        print(message, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(message + "\n")


def choose_lr(results: list[dict[str, Any]]) -> tuple[float, bool]:
    """(lr with the lowest dev loss, whether it is the smallest or largest value tried).
    A diverged run (no or non-finite loss) never wins; ties go to the smaller lr."""
    def loss(result: dict[str, Any]) -> float:
        value = result.get("dev_loss")
        return value if isinstance(value, int | float) and math.isfinite(value) else math.inf

    ranked = sorted(results, key=lambda r: (loss(r), r["learning_rate"]))
    if loss(ranked[0]) == math.inf:
        raise NeftError("every learning rate of the sweep diverged (no finite dev loss); "
                        "try smaller values")
    values = sorted(r["learning_rate"] for r in results)
    chosen = ranked[0]["learning_rate"]
    return chosen, len(values) > 1 and chosen in (values[0], values[-1])


def _job(plan: Plan, run: Run) -> dict[str, Any]:
    """What the worker needs: the spec plus the run's paths (relative to the grid folder,
    the worker's working directory) and learning rate."""
    config = plan.config
    job: dict[str, Any] = {"kind": run.kind, "cell": run.cell, "seed": run.seed,
                           "spec": run.spec, "isolated": config.isolate,
                           "keep_checkpoints": config.keep_checkpoints}
    prompt = config.data_options()
    job["eval"] = {**{k: v for k, v in plan.eval.items() if v is not None},
                   "data": plan.data, **prompt}
    if plan.front is not None and run.kind != "sweep":
        job["front"] = {k: plan.front[k] for k in ("steps", "drift_data", "loss_samples",
                                                   "generate", "confirm_split")}
        job["front"]["max_length"] = plan.front["max_length"]
    if run.kind == "base":
        job["model"] = plan.model
        return job
    if run.kind == "generate":
        job["of"] = run.spec["of"]
        return job
    cell = plan.cell(run.cell)
    train = {**cell.train, **run.spec["train"], "learning_rate": run.learning_rate,
             "output_dir": os.path.join(run.folder, TRAIN_FOLDER)}
    job["eval"]["trust_remote_code"] = train["trust_remote_code"]
    if cell.method == "neft" and not cell.train.get("neurons"):
        job["neurons"] = os.path.join("neurons", f"{cell.name}-s{train['seed']}-"
                                      f"{selection_key(train)}.safetensors")
    job["train"] = train
    return job


def _describe(run: Run) -> str:
    if run.kind == "sweep":
        return f"sweep {run.cell} lr={format_lr(run.learning_rate)}"
    if run.kind == "generate":
        return f"{run.cell} best run ({os.path.basename(run.spec['of'])}): generation"
    if run.kind == "base":
        return "base model"
    at = f" lr={format_lr(run.learning_rate)}" if run.spec["lr"]["source"] == "front" else ""
    return f"{run.cell}{at} seed {run.seed}"


def _summary(run: Run, result: dict[str, Any], metrics: list[str]) -> str:
    if run.kind == "sweep":
        loss = result.get("dev_loss")
        return f"dev loss {loss:.4f}" if loss is not None else "dev loss n/a (diverged?)"
    scores = result.get("scores", {})
    parts = [f"{name} {scores[name]:.2f}" for name in metrics if scores.get(name) is not None]
    if result.get("points"):
        last = result["points"][-1]
        drift = ", ".join(f"{name} {value:.4f}" for name, value in last["drift"].items())
        parts.append(f"step {last['step']} test loss {last['test_loss']:.4f}, drift {drift}")
    if result.get("trainable_parameters"):
        parts.append(f"{result['trainable_parameters']:,} trainable")
    parts.append(f"peak {result['peak_memory_mb']:,.0f} MB")
    return ", ".join(parts)


def run_compare(plan: Plan) -> dict[str, Any]:
    """Run the whole grid; returns {"ran", "skipped", "failed", "report"}."""
    config = plan.config
    check_data(plan)
    check_budgets(plan)
    changed = changed_runs(plan)
    if not config.dry_run:  # a run left for later (first_runs) is left as it is, too
        changed = [(run, difference) for run, difference in changed if plan.runs_now(run)]
    if changed and not config.recompute_changed and not config.dry_run:
        run, difference = changed[0]
        more = f" (and {len(changed) - 1} more runs)" if len(changed) > 1 else ""
        raise NeftError(f"{os.path.join(config.output_dir, run.folder)} was computed with other "
                        f"settings ({difference}){more}: use another output_dir, or pass "
                        "--recompute_changed to recompute them")
    if config.dry_run:
        return dry_run(plan, {r.folder for r, _ in changed})
    with grid_lock(config.output_dir) as lock_fd:
        for run, _ in changed:
            clear_for_recompute(os.path.join(config.output_dir, run.folder))
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return Grid(plan, lock_fd).run()
        finally:
            signal.signal(signal.SIGTERM, previous)


def clear_for_recompute(folder: str) -> None:
    """Remove a changed run's results but keep its training folder: the worker reuses a
    training whose settings are unchanged (e.g. only decoding changed) and replaces it
    otherwise."""
    clear_folder(folder, keep=lambda name: name == TRAIN_FOLDER)


class Grid:
    """The runs of one `neft compare`, executed in plan order; each cell run waits for its
    learning rate, which its sweep (run on first need) decides."""

    def __init__(self, plan: Plan, lock_fd: int | None = None) -> None:
        self.plan = plan
        self.config = plan.config
        self.output_dir = plan.config.output_dir
        self.lock_fd = lock_fd
        generating = plan.front is not None and plan.front["generate"] == "best"
        self.progress = Progress(self.output_dir, sum(map(plan.runs_now, plan.all_runs()))
                                 + (len(plan.cells) if generating else 0))
        self.outcome: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
        self.chosen: dict[str, float | None] = {}

    def run(self) -> dict[str, Any]:
        plan = self.plan
        self.progress.line(f"neft compare: {len(plan.cells)} cells, {len(plan.runs)} runs, "
                           f"{sum(len(r) for r in plan.sweeps.values())} lr sweep runs -> "
                           f"{self.output_dir}")
        try:
            for run in filter(plan.runs_now, plan.runs):
                if run.kind == "cell" and not self.prepare_cell(run):
                    continue
                self.execute(run)
                write_report(plan)  # after every cell run: a stopped grid has its table
            if (plan.front is not None and plan.front["generate"] == "best"
                    and not self.config.first_runs):  # a first run is not yet the best
                for cell in plan.cells:  # each cell's best-dev-loss run, by generation
                    best = best_run(plan, cell.name)
                    if best is not None:
                        self.execute(best)
                        write_report(plan)
        except KeyboardInterrupt:
            self.progress.line("stopped; finished runs are kept: rerun the same command to "
                               "continue (an unfinished training resumes from its checkpoint)")
            raise
        report = write_report(plan)
        later = sum(not plan.runs_now(r) and load_result(self.output_dir, r) is None
                    for r in plan.runs)
        left = f", {later} left for a run without --first_runs" if later else ""
        self.progress.line(f"finished: {len(self.outcome['ran'])} ran, "
                           f"{len(self.outcome['skipped'])} done earlier, "
                           f"{len(self.outcome['failed'])} failed{left}; report: {report}")
        return {**self.outcome, "report": report}

    def prepare_cell(self, run: Run) -> bool:
        """Set the run's learning rate; False when its sweep failed."""
        cell = self.plan.cell(run.cell)
        lr = run.learning_rate if cell.learning_rates else self.learning_rate(run.cell)
        if lr is None:
            self.outcome["failed"].append(run.folder)
            self.progress.line(f"{_describe(run)}: not run, its lr sweep failed", count=True)
            return False
        run.learning_rate = lr
        previous = load_result(self.output_dir, run)
        if previous is not None and previous.get("learning_rate") != lr:
            # its sweep was redone and chose differently: the old result is not this cell's
            if not self.config.recompute_changed:
                raise NeftError(f"{os.path.join(self.output_dir, run.folder)} was trained at lr "
                                f"{previous.get('learning_rate')}, but its sweep now picks "
                                f"{lr:g}: pass --recompute_changed to recompute it")
            os.remove(os.path.join(self.output_dir, run.folder, RESULT_FILE))
        return True

    def learning_rate(self, cell_name: str) -> float | None:
        cell = self.plan.cell(cell_name)
        if cell.sweep is None:
            return cell.train["learning_rate"]
        owner = cell.sweep.cell
        if owner not in self.chosen:
            results = [self.execute(run) for run in self.plan.sweeps[owner]]
            if any(r is None for r in results):
                self.chosen[owner] = None
                return None
            value, at_edge = choose_lr(results)
            self.chosen[owner] = value
            losses = ", ".join(f"{format_lr(r['learning_rate'])}: "
                               + (f"{r['dev_loss']:.4f}" if r.get("dev_loss") is not None
                                  else "n/a") for r in results)
            edge = "; at the edge of the values tried: consider widening it" if at_edge else ""
            self.progress.line(f"lr sweep {owner}: dev loss {losses} -> {format_lr(value)}{edge}")
        return self.chosen[owner]

    def execute(self, run: Run) -> dict[str, Any] | None:
        """The run's result: read when finished earlier, else computed. None on failure."""
        plan, output_dir, progress = self.plan, self.output_dir, self.progress
        result = current(plan, run)  # a best run's generation is stale once another run wins
        if result is not None:
            self.outcome["skipped"].append(run.folder)
            progress.line(f"{_describe(run)}: done earlier ({_summary(run, result, plan.metrics)})",
                          count=True)
            return result
        folder = os.path.join(output_dir, run.folder)
        job_file = os.path.join(folder, JOB_FILE)
        if os.path.isfile(job_file) and first_difference(read_json(job_file).get("spec"),
                                                         run.spec) is not None:
            shutil.rmtree(folder)  # an unfinished run of other settings: start clean
        os.makedirs(folder, exist_ok=True)
        write_json(job_file, _job(plan, run))
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, FAILED_FILE))
        left = time_left(plan)
        eta = f"; about {left / 3600:.1f} h of runs left in the grid" if left else ""
        progress.line(f"{_describe(run)}: running ({run.folder}{eta})")
        started = time.perf_counter()
        finished, message = launch(output_dir, run, self.config.isolate, self.lock_fd)
        took = _duration(time.perf_counter() - started)
        if not finished:
            self.outcome["failed"].append(run.folder)
            if os.path.isdir(folder):  # for readers of the grid (selection_study.py)
                write_text(os.path.join(folder, FAILED_FILE), f"{message}\n")
            progress.line(f"{_describe(run)}: FAILED after {took}: {message}", count=True)
            return None
        result = load_result(output_dir, run) or {}
        self.outcome["ran"].append(run.folder)
        how = result.get("training")
        note = f"; training {how}" if how in ("resumed", "reused") else ""
        progress.line(f"{_describe(run)}: done in {took} ({_summary(run, result, plan.metrics)}"
                      f"{note})", count=True)
        return result


def dry_run(plan: Plan, changed: set[str]) -> dict[str, Any]:
    """Print every run with its state, and the time the rest needs at the pace of the
    finished runs (of the same cell where there are some); run nothing."""
    output_dir = plan.config.output_dir
    states: dict[str, list[str]] = {"done": [], "changed": [], "partial": [], "pending": [],
                                    "later": []}
    print(f"neft compare plan for {output_dir}:")
    timed = paced_runs(plan)
    for run, result, guess in timed:
        if run.folder in changed:
            state = "changed"
        elif result is not None:
            state = "done"
        elif not plan.runs_now(run):  # first_runs: left for a run without it
            state = "later"
        elif os.path.isdir(os.path.join(output_dir, run.folder)):
            state = "partial"
        else:
            state = "pending"
        states[state].append(run.folder)
        steps = run.spec.get("train", {}).get("max_steps", "-")
        more = f"  (~{guess / 60:.0f} min)" if state != "done" and guess is not None else ""
        print(f"  {state:<8} {run.folder:<40} {run.kind:<6} steps {steps}{more}")
    left = _left(plan, timed)
    summary = ", ".join(f"{len(v)} {k}" for k, v in states.items()
                        if v or k != "later")
    if left is not None:
        guessed = sum(result is None and guess is not None and plan.runs_now(run)
                      for run, result, guess in timed)
        summary += (f"; about {left / 3600:.1f} h left for {guessed} of them at the pace of "
                    "the finished runs")
    elif states["pending"] or states["partial"] or states["changed"]:
        summary += "; no time estimate until a run has finished here"
    print("  " + summary)
    return {"ran": [], "skipped": states["done"], "failed": [], "states": states,
            "report": None, "hours_left": None if left is None else left / 3600}


def paced_runs(plan: Plan) -> list[tuple[Run, dict[str, Any] | None, float | None]]:
    """Every run with its result (None while unfinished) and its expected wall seconds:
    the mean of its cell's finished runs of the same kind, else of every finished run of
    that kind (None before any has finished). Each result is read once."""
    timed = [(run, load_result(plan.config.output_dir, run)) for run in plan.all_runs()]
    took: dict[tuple[str, str], list[float]] = {}
    for run, result in timed:
        if result is not None and isinstance(result.get("wall_seconds"), int | float):
            took.setdefault((run.kind, run.cell), []).append(result["wall_seconds"])
    paced = []
    for run, result in timed:
        same = took.get((run.kind, run.cell)) or [
            t for (kind, _), times in took.items() if kind == run.kind for t in times]
        paced.append((run, result, sum(same) / len(same) if same else None))
    return paced


def _left(plan: Plan, timed: list[tuple[Run, dict[str, Any] | None, float | None]]
          ) -> float | None:
    """Seconds the runs still to run here need (None before any run has finished)."""
    known = [guess for run, result, guess in timed
             if result is None and guess is not None and plan.runs_now(run)]
    return sum(known) if known else None


def time_left(plan: Plan) -> float | None:
    """Seconds the unfinished runs need at the pace of the finished ones (None before any
    has finished); generation of best runs not counted."""
    return _left(plan, paced_runs(plan))


def compare(config_or_path: Any) -> dict[str, Any]:
    """Python entry: a CompareConfig, a dict of YAML keys, or a YAML path."""

    if isinstance(config_or_path, str | os.PathLike):
        config_or_path = load_yaml(config_or_path)
    if isinstance(config_or_path, dict):
        config_or_path = from_dict(CompareConfig, config_or_path)
    return run_compare(build_plan(config_or_path))
