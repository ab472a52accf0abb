"""One run of a comparison: (select,) train, evaluate, write result.json last.

    cd GRID && python -m neft.experiments.compare.worker cells/RUN   # reads cells/RUN/job.json

`neft compare` starts one such process per run, so that each run's peak memory is its
own and a crash ends only that run. result.json is written (atomically) only when the
run is complete: a run without it is unfinished and is picked up again. Training that
finished is reused (only the evaluation is redone); training that was stopped resumes
from its last checkpoint; anything else starts over.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import torch

from ...config import from_dict
from ...core.io import read_json, write_json
from ...core.loading import load_model
from ...core.neuron_set import NeuronSet
from ...data.options import field_map
from ...data.records import load_records
from ...data.sources import load_drift_sets
from ...errors import NeftError
from ...evaluate import EvalConfig, run_eval
from ...train import (
    METHODS,
    RUN_FILE,
    SELECTION_SHAPES,
    TrainConfig,
    load_split,
    peak_memory_mb,
    select_for_training,
    train,
)
from ...train.options import recorded_option
from .front import POINTS_FILE, FrontMeasure, FrontPoints, read_points

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
EVAL_FILE = "eval.json"
RUN_LOG_FILE = "log.txt"
FAILED_FILE = "failed.txt"  # the last attempt's error, while the run has no result
KEEP_AFTER_SWEEP = ("neft_run.json", "training_log.json", "loss_curve.png")


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the run is unfinished."""


def finite(data: Any) -> Any:
    """NaN and infinities become None, so that results stay strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def ensure_neurons(train_values: dict[str, Any], path: str) -> None:
    """Select a neft cell's neurons once per (selection settings, seed): its sweep runs and
    its training then use the very same NeuronSet, and the selection is paid once."""
    if os.path.isfile(path):
        return

    config = from_dict(TrainConfig, {**train_values, "neurons": None})
    model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
    data = load_split(config, config.train_file, config.train_split, config.max_train_samples,
                      tokenizer)
    select_for_training(model, config, data).save(path)


def front_measure(job: dict[str, Any], model_name: str) -> Any:
    """What a front run measures at each point, loaded once: the base model (for drift and
    the tokenizer), the test records (all, or front.loss_samples) and the drift sets."""

    front, values = job["front"], job["eval"]

    def records_of(split: str) -> list[dict[str, Any]]:
        return load_records(values["data"], split=split,
                            field_map=field_map(values.get("source_field"),
                                                values.get("target_field")),
                            limit=front.get("loss_samples"), task=values["task"])

    records = records_of(values["split"])
    confirm_split = front.get("confirm_split")
    confirm = (confirm_split, records_of(confirm_split)) if confirm_split else None
    base, tokenizer = load_model(model_name, trust_remote_code=values.get("trust_remote_code",
                                                                          False))
    if torch.cuda.is_available():
        base.to("cuda")
    return FrontMeasure(tokenizer, records, values, front["max_length"], base,
                        load_drift_sets(front["drift_data"]), values.get("batch_size", 16),
                        bool(values.get("bf16", False)), confirm)


def point_summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's points without their per-record sums, for result.json."""
    return [{"step": p["step"], "dev_loss": p.get("dev_loss"), "test_loss": p["test_loss"],
             **({"confirm_loss": p["confirm"]["test_loss"]} if "confirm" in p else {}),
             "drift": {name: d["kl"] for name, d in p["drift"].items()}} for p in points]


def train_or_reuse(values: dict[str, Any], callbacks: list[Any] | None = None
                   ) -> tuple[dict[str, Any], str]:
    """Train, unless this very training already finished. Returns (summary, how):
    how is 'trained', 'resumed' (from a checkpoint) or 'reused' (finished before)."""
    folder = values["output_dir"]
    run_file = os.path.join(folder, RUN_FILE)
    previous = None
    if os.path.isfile(run_file):
        try:
            previous = read_json(run_file)
        except (OSError, json.JSONDecodeError):
            previous = None
    elif os.path.isdir(folder):
        shutil.rmtree(folder)  # killed before train() recorded the run: nothing to keep
    same = previous is not None and all(
        recorded_option(previous, k) == v for k, v in canonical_train(values).items()
        if k not in ("resume", "overwrite"))
    if same and previous.get("result") and not previous["result"].get("interrupted"):
        return previous["result"], "reused"
    checkpoint = same and any(n.startswith("checkpoint-") for n in os.listdir(folder))
    config = from_dict(TrainConfig, {**values, "resume": checkpoint, "overwrite": not checkpoint})
    summary = train(config, callbacks or ())
    if summary["interrupted"]:
        raise Interrupted("training stopped on a signal; its checkpoint is kept")
    return summary, "resumed" if checkpoint else "trained"


def canonical_train(values: dict[str, Any]) -> dict[str, Any]:
    """The values as train() records them (TrainConfig converts numbers)."""
    return json.loads(json.dumps(from_dict(TrainConfig, values).to_dict(), default=str))


def remove_checkpoints(folder: str) -> None:
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith("checkpoint-"):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def run_job(folder: str) -> dict[str, Any]:
    """Do the run described by folder/job.json; returns (and writes) its result.

    Paths in the job are relative to the grid's folder, which is the working directory:
    a grid that is moved or copied (say, from a GPU machine) stays reusable."""
    job = read_json(os.path.join(folder, JOB_FILE))
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result: dict[str, Any] = {"kind": job["kind"], "cell": job["cell"], "seed": job.get("seed"),
                              "spec": job["spec"]}
    train_values = job.get("train")
    front = job.get("front")
    if job["kind"] == "generate":  # a front cell's best run, scored by generation
        train_values = read_json(os.path.join(job["of"], JOB_FILE))["train"]
        result["of"] = job["of"]
    how = None
    if train_values is not None and job["kind"] != "generate":
        callbacks = []
        if front is not None:

            callbacks.append(FrontPoints(folder, front_measure(job, train_values["model"]),
                                         front["steps"]))
        if job.get("neurons"):
            ensure_neurons(train_values, job["neurons"])
            # the set is made: how it was shaped is in its metadata and the run's spec
            train_values = {**train_values, "neurons": job["neurons"],
                            **dict.fromkeys(SELECTION_SHAPES)}

            metadata = NeuronSet.load(job["neurons"]).metadata
            result["selection_seconds"] = metadata.get("wall_time_s")
        summary, how = train_or_reuse(train_values, callbacks)
        result.update(
            method=summary["method"], learning_rate=train_values["learning_rate"],
            trainable_parameters=summary["trainable_parameters"],
            total_parameters=summary["total_parameters"], training=how,
            train={k: summary.get(k) for k in ("global_step", "train_loss", "best_eval_loss",
                                               "train_seconds", "wall_seconds",
                                               "peak_memory_mb")})
        result["dev_loss"] = summary["best_eval_loss"]
    if front is not None and job["kind"] == "base":
        measure = front_measure(job, job["model"])
        write_json(os.path.join(folder, POINTS_FILE), [measure.base_point()])
        del measure
    if front is not None and job["kind"] in ("cell", "base"):
        result["points"] = point_summary(read_points(folder))
    if job["kind"] == "sweep":
        output = train_values["output_dir"]
        for name in os.listdir(output):  # the weights are not needed, only the dev loss
            if name not in KEEP_AFTER_SWEEP:
                path = os.path.join(output, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    elif front is not None and job["kind"] == "cell" and front["generate"] in ("best", "none"):
        # scored by generation later if it is its cell's best run (best), or never (none)
        if not job.get("keep_checkpoints"):
            remove_checkpoints(train_values["output_dir"])
    elif front is not None and job["kind"] == "base" and front["generate"] == "none":
        pass  # the base's point (step 0) is all a fronts-only grid needs of it
    else:
        eval_start = time.perf_counter()
        values = dict(job["eval"], output_file=os.path.join(folder, EVAL_FILE),
                      overwrite=True)  # an unfinished run's own file
        if train_values is None:
            values["model"] = job["model"]
        elif METHODS[train_values["method"]].saves_model:
            values["model"] = train_values["output_dir"]  # a whole saved model
        else:
            values.update(model=train_values["model"], adapter=train_values["output_dir"])
        evaluated = run_eval(from_dict(EvalConfig, values))
        result.update(scores=evaluated["scores"], signatures=evaluated["signatures"],
                      generation=evaluated["generation"],
                      test_samples=evaluated["settings"]["samples"],
                      eval_seconds=round(time.perf_counter() - eval_start, 1))
        if train_values is not None and not job.get("keep_checkpoints"):
            remove_checkpoints(train_values["output_dir"])
    result.update(
        wall_seconds=round(time.perf_counter() - start, 1),
        peak_memory_mb=peak_memory_mb(),
        memory_scope=("peak CUDA allocation" if torch.cuda.is_available() else
                      "peak RSS of the run's process" if job.get("isolated") else
                      "peak RSS of the whole compare process (isolate: false)"),
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    result = finite(result)
    write_json(os.path.join(folder, RESULT_FILE), result)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m neft.experiments.compare.worker RUN_FOLDER", file=sys.stderr)
        return 2
    try:
        run_job(argv[0])
    except NeftError as exc:
        print(f"neft compare worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neft compare worker: interrupted; the run stays unfinished", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
