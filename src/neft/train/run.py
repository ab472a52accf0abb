"""Training: NeFT and the paper's baselines in one pipeline on transformers' Trainer.

Methods (neft.train.methods, one registry): ``neft`` (neurons from a NeuronSet file, or
selected on the fly), ``random`` (random neurons at the same budget, the control),
``lora`` (peft), ``full``, ``ft-inout`` (every MLP in-row and out-column: all up/down
weights). Trainer brings
distributed launch (torchrun / accelerate), checkpoints, resume, bf16 and evaluation;
``NeftTrainer`` only teaches it to save and load neft adapters instead of whole models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

from transformers import TrainerCallback, set_seed

from ..core.io import (
    apply_umask,
    check_output_folder,
    clear_folder,
    folder_lock,
    is_lock_file,
    is_within,
    write_json,
)
from ..core.loading import check_length, load_model
from ..core.neurons import count_parameters
from ..core.resources import peak_memory_mb
from ..data.records import FILE_FORMATS, load_records
from ..data.tokenize import DataCollator, build_dataset, format_length_stats, length_stats
from ..errors import NeftError
from .methods import get_method, prepare_model, trainable_parameters
from .options import TrainConfig, fsdp_option, recorded_option
from .trainer import NeftTrainer, StopOnSignal, plot_losses, training_arguments

logger = logging.getLogger(__name__)

RUN_FILE = "neft_run.json"
LOG_FILE = "training_log.json"
PLOT_FILE = "loss_curve.png"
# Options that may differ between a run and its resumption.
RESUME_FREE = ("resume", "overwrite", "max_steps", "num_train_epochs", "save_steps",
               "eval_steps", "logging_steps", "output_dir")  # the folder names itself
# Options that name files: the same file however it is typed (a trailing slash, ../x).
PATH_OPTIONS = ("model", "train_file", "eval_file", "neurons", "fsdp_config", "deepspeed")



# ----------------------------------------------------------------------------- output dir


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_dir(config: TrainConfig) -> bool:
    """Refuse to mix runs: an output_dir holding another run needs --overwrite, and
    --resume needs the same options. Returns True when a checkpoint is resumed.

    Nothing is deleted here: --overwrite replaces the old run only once the new one has
    passed every check (see ``_claim_output_dir``), and never a folder that holds no neft
    run, which may be anyone's files.
    """
    path = config.output_dir
    if not _is_main_process():
        # Rank 0 checks and may already have written this run's files; a failure there
        # ends every rank (torchrun), so the others only need to know whether to resume.
        return config.resume and os.path.isdir(path) and any(
            name.startswith("checkpoint-") for name in os.listdir(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NeftError(f"output_dir {path} is a file; pass a folder (new or empty) for the run")
    if config.overwrite and not config.resume and os.path.isdir(path):
        for name in ("train_file", "eval_file", "neurons", "model", "deepspeed", "fsdp_config"):
            source = getattr(config, name)
            if source and os.path.exists(source) and is_within(source, path):
                raise NeftError(f"--{name} {source} lies inside output_dir {path}, which "
                                "--overwrite clears; move it out of the folder")
    run_file = os.path.join(path, RUN_FILE)
    occupied = _occupied(path)
    if not occupied:
        if config.resume:
            raise NeftError(f"--resume: {path} holds no run to resume; drop --resume")
        return False
    if not os.path.isfile(run_file):
        raise NeftError(f"output_dir {path} is not empty and holds no neft run; choose another "
                        "--output_dir (--overwrite replaces neft runs only, not other files)")
    if config.overwrite and not config.resume:
        return False
    try:
        with open(run_file) as handle:
            previous = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NeftError(f"{run_file} is damaged, so the run cannot be checked or resumed; "
                        "pass --overwrite to start it again") from None
    if not config.resume:
        raise NeftError(f"output_dir {path} already holds a run; pass --resume to continue it "
                        "or --overwrite to replace it")
    current = config.to_dict()
    changed = [k for k in current if k not in RESUME_FREE
               and not _same_option(k, recorded_option(previous, k), current[k])]
    if changed:
        raise NeftError(f"--resume: option {changed[0]} differs from the run in {path} "
                        f"({recorded_option(previous, changed[0])!r} vs "
                        f"{current[changed[0]]!r}); resume "
                        "with the same options or use --overwrite")
    return any(name.startswith("checkpoint-") for name in os.listdir(path))


def _same_option(name: str, before: Any, now: Any) -> bool:
    if before == now:
        return True
    if name not in PATH_OPTIONS or not isinstance(before, str) or not isinstance(now, str):
        return False
    if os.path.normpath(before) == os.path.normpath(now):
        return True
    return os.path.exists(before) and os.path.exists(now) and os.path.samefile(before, now)


def _occupied(path: str) -> bool:
    """Whether ``path`` holds anything but this run's lock."""
    return os.path.isdir(path) and any(not is_lock_file(n) for n in os.listdir(path))


def _claim_output_dir(config: TrainConfig, resume: bool) -> bool:
    """Make output_dir this run's, removing an old run under --overwrite; called once every
    check has passed. Returns True when the folder is new (so it can go on failure)."""
    path = config.output_dir
    if config.overwrite and not config.resume and os.path.isfile(os.path.join(path, RUN_FILE)):
        clear_folder(path)
    fresh = not resume and not _occupied(path)
    os.makedirs(path, exist_ok=True)
    return fresh


def _run_record(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    return {**config.to_dict(), "data_fingerprint": fingerprint}


def _recorded_run(path: str) -> dict[str, Any]:
    """neft_run.json of the run in ``path`` ({} when there is none or it is unreadable;
    prepare_output_dir has refused a damaged one already)."""
    try:
        with open(os.path.join(path, RUN_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finished_run(config: TrainConfig, previous: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded summary when --resume finds the run already complete at its
    max_steps: Trainer would run one more step (at learning rate 0) when max_steps is not
    a multiple of the steps per epoch, and then rewrite the outputs. None otherwise."""
    result = previous.get("result")
    if config.max_steps <= 0 or not isinstance(result, dict) or result.get("interrupted"):
        return None
    step = result.get("global_step")
    if not isinstance(step, int) or step < config.max_steps:
        return None
    logger.warning(f"neft train: the run in {config.output_dir} is finished (step {step} of "
                   f"max_steps {config.max_steps}); nothing to resume, no file changed (pass "
                   "a larger --max_steps to train on, or --overwrite to start again)")
    return result


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint-N. Trainer writes trainer_state.json last, so a run
    killed while checkpointing leaves a folder without it: that one is removed, not loaded."""
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _, folder in sorted(found, reverse=True):
        if os.path.isfile(os.path.join(folder, "trainer_state.json")):
            return folder
        if _is_main_process():
            logger.warning(f"neft train: {folder} is incomplete (killed while saving); "
                           "removing it")
            shutil.rmtree(folder)
    return None


def _discard_run(path: str) -> None:
    """A run that failed before its first checkpoint leaves nothing to resume: remove it, so
    that the next try needs neither --resume nor --overwrite."""
    if os.path.isdir(path) and not any(n.startswith("checkpoint-") for n in os.listdir(path)):
        clear_folder(path)  # the folder itself goes with the lock, if the run made it



def load_split(config: TrainConfig, source: str, split: str | None, limit: int | None,
               tokenizer: Any) -> Any:
    return _build(config, _records(config, source, split, limit), tokenizer)


def _records(config: TrainConfig, source: str, split: str | None,
             limit: int | None) -> list[dict]:
    return load_records(source, split=split, field_map=config.field_map(), limit=limit,
                        task=config.task)


def _build(config: TrainConfig, records: list[dict], tokenizer: Any) -> Any:
    return build_dataset(records, tokenizer, config.task, max_length=config.max_length,
                         template=config.template, src_lang=config.source_lang,
                         tgt_lang=config.target_lang)


def _eval_source(config: TrainConfig) -> str | None:
    """--eval_file, else the training folder's dev split when it has one. A folder without
    it trains without evaluation (said so) rather than failing on a split nobody asked for."""
    if config.eval_file:
        return config.eval_file
    folder = os.path.expanduser(config.train_file)
    if not os.path.isdir(folder) or not config.eval_split:
        return None
    if any(os.path.isfile(os.path.join(folder, config.eval_split + ext)) for ext in FILE_FORMATS):
        return config.train_file
    logger.warning(f"neft train: {config.train_file} has no {config.eval_split} split; "
                   "training without evaluation (pass --eval_file to evaluate)")
    return None


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Run one training job; returns the summary also written to neft_run.json.

    callbacks are extra Trainer callbacks (e.g. compare's measurements at each dev
    evaluation).

    Every check that can fail (data files, step settings, model, neurons) runs before the
    output folder is touched, so bad input leaves no half-made run behind. The folder is
    locked for the whole run (rank 0): the check that it holds no other run and the writes
    that follow are one step, so a second `neft train` into it fails instead of mixing in.
    """
    check_output_folder(config.output_dir)
    if not _is_main_process():
        return _train(config, callbacks)
    busy = (f"another neft train is writing into {config.output_dir}; wait for it to finish "
            "or choose another --output_dir")
    with folder_lock(config.output_dir, busy):
        return _train(config, callbacks)


def data_fingerprint(records: list[dict]) -> str:
    """Hash of the training records as read (after field_map and max_train_samples): a
    --resume on changed data would silently train a mix of two datasets."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False,
                                 default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _train(config: TrainConfig, callbacks: Sequence[TrainerCallback]) -> dict[str, Any]:
    resume = prepare_output_dir(config)
    set_seed(config.seed)
    start = time.perf_counter()
    train_records = _records(config, config.train_file, config.train_split,
                             config.max_train_samples)
    fingerprint = data_fingerprint(train_records)
    previous = _recorded_run(config.output_dir) if config.resume else {}
    recorded = previous.get("data_fingerprint")
    if recorded and recorded != fingerprint:
        raise NeftError(f"--resume: the training data differs from the data the run in "
                        f"{config.output_dir} began with (fingerprint {fingerprint} vs "
                        f"{recorded}); resume with the same data or use --overwrite")
    finished = _finished_run(config, previous) if resume else None
    if finished is not None:
        return finished
    eval_source = _eval_source(config)
    eval_records = (_records(config, eval_source, config.eval_split, config.max_eval_samples)
                    if eval_source else None)
    args = training_arguments(config, eval_records is not None)
    with _whole_model_loading():
        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
        train_data = _build(config, train_records, tokenizer)
        logger.info("train data: " + format_length_stats(length_stats(train_data)))
        eval_data = None
        if eval_records is not None:
            eval_data = _build(config, eval_records, tokenizer)
            logger.info("dev data: " + format_length_stats(length_stats(eval_data)))
        for name, data in (("training", train_data), ("dev", eval_data)):
            if data is not None:
                longest = max((len(e["input_ids"]) for e in data.examples), default=0)
                check_length(model, longest, f"the longest {name} example (max_length "
                             f"{config.max_length})", "pass --max_length {room} or less")
        total_params = count_parameters(model)
        model = prepare_model(model, config, train_data)
    trainable = trainable_parameters(model)
    logger.info(f"method {config.method}: {trainable:,} trainable parameters "
                f"({100 * trainable / total_params:.3f}% of {total_params:,})")

    fresh = False
    if _is_main_process():
        fresh = _claim_output_dir(config, resume)
        write_json(os.path.join(config.output_dir, RUN_FILE), _run_record(config, fingerprint))
    checkpoint = last_checkpoint(config.output_dir) if resume else None
    if config.resume and checkpoint is None:
        logger.warning(f"neft train: no complete checkpoint in {config.output_dir}; "
                       "starting at step 0")
    stopper = StopOnSignal()
    try:
        trainer = NeftTrainer(model=model, args=args, train_dataset=train_data,
                              eval_dataset=eval_data,
                              data_collator=DataCollator(tokenizer.pad_token_id),
                              processing_class=tokenizer, callbacks=[stopper, *callbacks])
        if (config.neft_mode == "mask" and get_method(config.method).selects_neurons
                and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)):
            # set by `accelerate launch --use_fsdp / --use_deepspeed` rather than our flags
            raise NeftError("neft_mode mask does not work on sharded weights; use neft_mode "
                            "compact with FSDP or DeepSpeed")
        if fsdp_option(config.fsdp) and not trainer.is_fsdp_enabled:
            logger.warning("neft train: FSDP is not active (accelerate shards on GPUs and "
                           "other accelerators only; CPU processes train with DDP)")
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        if fresh:
            _discard_run(config.output_dir)
        raise
    finally:
        stopper.restore()
    interrupted = stopper.received is not None
    summary = {
        "config": config.to_dict(),
        "method": config.method,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_seconds": round(result.metrics.get("train_runtime", 0.0), 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_memory_mb": peak_memory_mb(),
        "interrupted": interrupted,
    }
    if not interrupted:  # on every rank: sharded weights are gathered by all
        trainer.save_model(config.output_dir)
    if trainer.args.should_save:
        if not interrupted and get_method(config.method).saves_model:
            tokenizer.save_pretrained(config.output_dir)
        write_json(os.path.join(config.output_dir, LOG_FILE), trainer.state.log_history,
                   allow_nan=True)
        plot_losses(trainer.state.log_history, os.path.join(config.output_dir, PLOT_FILE),
                    f"{config.method} on {os.path.basename(config.train_file.rstrip('/'))}")
        write_json(os.path.join(config.output_dir, RUN_FILE),
                   {**_run_record(config, fingerprint), "result": summary}, allow_nan=True)
        apply_umask(config.output_dir)  # Trainer's safetensors are written 0600
    if interrupted:
        logger.warning(f"neft train: stopped at step {trainer.state.global_step}; its "
                       f"checkpoint is in {config.output_dir}: rerun with --resume (same "
                       "options) to continue")
    return summary


@contextlib.contextmanager
def _whole_model_loading() -> Iterator[None]:
    """Load and wrap the model whole, even under DeepSpeed ZeRO-3: with a ZeRO-3 config
    alive, transformers partitions a model while loading it (zero.Init), and selection
    and NeftModel need its whole weights. DeepSpeed partitions it when Trainer starts."""
    try:
        from transformers.integrations import deepspeed
    except ImportError:
        yield
        return
    saved = getattr(deepspeed, "_hf_deepspeed_config_weak_ref", None)
    deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved
