"""One run of a comparison: (select,) train, evaluate, write result.json last.

    cd GRID && python -m neft.compare.worker cells/RUN   # reads cells/RUN/job.json

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

from ..config import from_dict
from ..errors import NeftError
from ..evaluate import EvalConfig, run_eval
from ..files import write_json
from ..train import RUN_FILE, TrainConfig, load_split, peak_memory_mb, select_for_training, train

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
EVAL_FILE = "eval.json"
LOG_FILE = "log.txt"
KEEP_AFTER_SWEEP = ("neft_run.json", "training_log.json", "loss_curve.png")


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the run is unfinished."""


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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
    from ..models import load_model

    config = from_dict(TrainConfig, {**train_values, "neurons": None})
    model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
    data = load_split(config, config.train_file, config.train_split, config.max_train_samples,
                      tokenizer)
    select_for_training(model, config, data).save(path)


def train_or_reuse(values: dict[str, Any]) -> tuple[dict[str, Any], str]:
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
        previous.get(k) == v for k, v in canonical_train(values).items()
        if k not in ("resume", "overwrite"))
    if same and previous.get("result") and not previous["result"].get("interrupted"):
        return previous["result"], "reused"
    checkpoint = same and any(n.startswith("checkpoint-") for n in os.listdir(folder))
    config = from_dict(TrainConfig, {**values, "resume": checkpoint, "overwrite": not checkpoint})
    summary = train(config)
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
    how = None
    if train_values is not None:
        if job.get("neurons"):
            ensure_neurons(train_values, job["neurons"])
            train_values = {**train_values, "neurons": job["neurons"]}
            from ..neurons import NeuronSet

            metadata = NeuronSet.load(job["neurons"]).metadata
            result["selection_seconds"] = metadata.get("wall_time_s")
        summary, how = train_or_reuse(train_values)
        result.update(
            method=summary["method"], learning_rate=train_values["learning_rate"],
            trainable_parameters=summary["trainable_parameters"],
            total_parameters=summary["total_parameters"], training=how,
            train={k: summary.get(k) for k in ("global_step", "train_loss", "best_eval_loss",
                                               "train_seconds", "wall_seconds",
                                               "peak_memory_mb")})
        result["dev_loss"] = summary["best_eval_loss"]
    if job["kind"] == "sweep":
        output = train_values["output_dir"]
        for name in os.listdir(output):  # the weights are not needed, only the dev loss
            if name not in KEEP_AFTER_SWEEP:
                path = os.path.join(output, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    else:
        eval_start = time.perf_counter()
        values = dict(job["eval"], output_file=os.path.join(folder, EVAL_FILE),
                      overwrite=True)  # an unfinished run's own file
        if train_values is None:
            values["model"] = job["model"]
        elif train_values["method"] in ("full", "ft-inout"):
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
        print("usage: python -m neft.compare.worker RUN_FOLDER", file=sys.stderr)
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
