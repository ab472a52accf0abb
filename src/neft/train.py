"""Training: NeFT and the paper's baselines in one pipeline on transformers' Trainer.

Methods: ``neft`` (neurons from a NeuronSet file, or selected on the fly), ``random``
(random neurons at the same budget, the control), ``lora`` (peft), ``full``,
``ft-inout`` (every MLP in-row and out-column: all up/down weights), and PEFT's peers
at the neft budget's parameter count (``lora-mlp``, ``shira``, ``supertuning`` and their
MLP-only forms: neft.peers). Trainer brings
distributed launch (torchrun / accelerate), checkpoints, resume, bf16 and evaluation;
``NeftTrainer`` only teaches it to save and load neft adapters instead of whole models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .config import option
from .data import (
    FILE_FORMATS,
    DataCollator,
    build_dataset,
    format_length_stats,
    length_stats,
    load_records,
)
from .errors import NeftError
from .files import apply_umask, check_output_folder, folder_lock, is_lock_file, write_json
from .model import NeftConfig, NeftModel, get_neft_model
from .models import check_length, load_model, recorded_name
from .neurons import NeuronSet, count_parameters, find_neuron_groups
from .peers import PEERS

METHODS = ("neft", "random", "lora", "full", "ft-inout", *PEERS)
RUN_FILE = "neft_run.json"
LOG_FILE = "training_log.json"
PLOT_FILE = "loss_curve.png"
# Options that may differ between a run and its resumption.
RESUME_FREE = ("resume", "overwrite", "max_steps", "num_train_epochs", "save_steps",
               "eval_steps", "logging_steps")


@dataclass
class TrainConfig:
    """Every option of `neft train` (flags and YAML keys)."""

    model: str = option("model name or path; smollm2-135m is the embedded default",
                        "smollm2-135m")
    method: str = option(f"one of {', '.join(METHODS)}", "neft")
    train_file: str | None = option("training data: JSONL/CSV/TSV/Parquet file, folder or "
                                    "hub dataset")
    eval_file: str | None = option("dev data for evaluation loss and best-checkpoint choice")
    train_split: str | None = option("split of a folder or hub dataset", "train")
    eval_split: str | None = option("split of a folder or hub dataset", "dev")
    output_dir: str = option("where the adapter / model, log and plot go", "outputs/run")
    task: str = option("translation, summarization, instruction or completion", "translation")
    template: str = option("prompt template: auto, chat, plain or llama2", "auto")
    source_lang: str | None = option("source language code (else each record's src_lang)")
    target_lang: str | None = option("target language code (else each record's tgt_lang)")
    source_field: str | None = option("record field holding the source text")
    target_field: str | None = option("record field holding the target text")
    max_train_samples: int | None = option("use the first N training records")
    max_eval_samples: int | None = option("use the first N dev records", 200)
    max_length: int = option("tokens per example (prompt is cut first, never the target)", 256)
    # neurons
    neurons: str | None = option("NeuronSet file (from `neft select`) for method neft")
    scorer: str = option("scorer when selecting on the fly (no --neurons)", "fast-probe")
    match_lora: int | None = option("budget: parameters of LoRA rank R on all linear layers", 8)
    num_neurons: int | None = option("budget: this many neurons")
    percent: float | None = option("budget: % of all model parameters (the paper's unit)")
    neft_mode: str = option("compact (small deltas) or mask (the paper's gradient masking)",
                            "compact")
    # lora
    lora_r: int = option("LoRA rank", 8)
    lora_alpha: int = option("LoRA alpha (the paper: 16)", 16)
    lora_dropout: float = option("LoRA dropout (the paper: 0)", 0.0)
    lora_target_modules: str = option("comma-separated module names or all-linear",
                                      "all-linear")
    # optimisation (Trainer names)
    learning_rate: float = option("peak learning rate", 5e-4)
    lr_scheduler_type: str = option("Trainer scheduler name", "linear")
    warmup_steps: float = option("linear warm-up: steps, or a share of all steps when < 1", 0.0)
    weight_decay: float = option("AdamW weight decay", 0.0)
    max_grad_norm: float = option("gradient clipping norm", 1.0)
    per_device_train_batch_size: int = option("batch size per device", 8)
    per_device_eval_batch_size: int = option("eval batch size per device", 16)
    gradient_accumulation_steps: int = option("micro-batches per optimizer step", 1)
    max_steps: int = option("optimizer steps (overrides epochs when > 0)", -1)
    num_train_epochs: float = option("epochs when max_steps <= 0", 1.0)
    seed: int = option("random seed (the paper: 1234)", 1234)
    logging_steps: int = option("log the loss every N steps", 10)
    eval_steps: int | None = option("evaluate (and checkpoint) every N steps", 50)
    save_steps: int | None = option("checkpoint every N steps (default: eval_steps)")
    save_total_limit: int | None = option("keep at most N checkpoints (best kept too)", 2)
    bf16: str = option("auto (on GPUs that support it), true or false", "auto")
    gradient_checkpointing: bool = option("recompute activations to save memory", False)
    resume: bool = option("continue from the last checkpoint in output_dir", False)
    overwrite: bool = option("replace an earlier run in output_dir", False)
    report_to: str = option("Trainer loggers (none, tensorboard, wandb, ...)", "none")
    # scaling out (Trainer names; launch with torchrun or accelerate launch)
    fsdp: str | None = option("shard the model with FSDP (Trainer's option): true or e.g. "
                              "'full_shard auto_wrap'")
    fsdp_config: str | None = option("FSDP settings: a JSON file, as Trainer's fsdp_config "
                                     "(examples/fsdp/fsdp2.json)")
    deepspeed: str | None = option("DeepSpeed config JSON (examples/deepspeed/zero2.json, "
                                   "zero3.json); needs pip install 'neft[deepspeed]'")
    trust_remote_code: bool = option("allow model code from the hub (off for safety)", False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise NeftError(f"method {self.method!r} is not known; use one of "
                            f"{', '.join(METHODS)}")
        if not self.train_file:
            raise NeftError("no training data: pass --train_file (a JSONL file, a folder of "
                            "train/dev files, or a dataset name); `neft data gettext` makes one")
        if self.bf16 not in ("auto", "true", "false", True, False):
            raise NeftError(f"bf16 must be auto, true or false, not {self.bf16!r}")
        self._check_values()

    def _check_values(self) -> None:
        """Values that cannot work fail here, in one line, before a model is loaded or a
        folder is made (Trainer and torch would fail later, with a traceback)."""
        from transformers import SchedulerType

        from .data import TASKS, TEMPLATES, language_name
        from .model import MODES
        from .select import SCORERS

        choices = {"task": TASKS, "template": TEMPLATES, "neft_mode": MODES,
                   "scorer": tuple(SCORERS),
                   "lr_scheduler_type": tuple(t.value for t in SchedulerType)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise NeftError(f"{name} {getattr(self, name)!r} is not known; use one of "
                                f"{', '.join(allowed)}")
        if not self.output_dir:
            raise NeftError("output_dir is empty; pass --output_dir FOLDER")
        at_least = {"per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                    "gradient_accumulation_steps": 1, "logging_steps": 1, "eval_steps": 1,
                    "save_steps": 1, "save_total_limit": 1, "max_train_samples": 1,
                    "max_eval_samples": 1, "max_length": 2, "lora_r": 1, "lora_alpha": 1,
                    "num_neurons": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise NeftError(f"{name} must be at least {low}, not {value}")
        for name in ("learning_rate", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise NeftError(f"{name} must not be negative, not {getattr(self, name)} "
                                f"(the default is {_DEFAULTS[name]})")
        if not 0 <= self.lora_dropout < 1:
            raise NeftError(f"lora_dropout must be in [0, 1), not {self.lora_dropout}")
        if self.max_steps == 0:
            raise NeftError("max_steps 0 trains nothing: pass a number of optimizer steps, or "
                            "-1 to train for num_train_epochs")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            raise NeftError(f"num_train_epochs must be positive, not {self.num_train_epochs} "
                            "(or pass --max_steps N)")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise NeftError(f"percent must be in (0, 100], not {self.percent}")
        if self.num_neurons is not None and self.percent is not None:
            raise NeftError("give one budget, num_neurons or percent, not both "
                            "(match_lora is used when neither is given)")
        if (self.num_neurons is None and self.percent is None and self.match_lora is not None
                and self.match_lora < 1):
            raise NeftError(f"match_lora must be at least 1, not {self.match_lora} "
                            "(or give num_neurons or percent)")
        for name in ("fsdp_config", "deepspeed"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise NeftError(f"{name} {path} is not a file; pass a JSON config (see "
                                f"examples/{'fsdp' if name == 'fsdp_config' else name}/)")
        if self.deepspeed:
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise NeftError("--deepspeed needs DeepSpeed, which is not installed: pip "
                                "install 'neft[deepspeed]' (README, Scaling out)")
        if self.fsdp_config and not _fsdp_option(self.fsdp):
            raise NeftError("fsdp_config is used only with --fsdp true; pass both, or neither")
        if (self.neft_mode == "mask" and self.method in ("neft", "random")
                and (_fsdp_option(self.fsdp) or self.deepspeed)):
            raise NeftError("neft_mode mask (the paper's gradient masking of whole weights) "
                            "does not work on sharded weights; use neft_mode compact with "
                            "FSDP or DeepSpeed")
        if self.neurons and self.method != "neft":
            raise NeftError(f"neurons is used by method neft only, and method is "
                            f"{self.method}: drop --neurons or pass --method neft")
        for lang in (self.source_lang, self.target_lang):
            if lang:
                language_name(lang)
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        loggers = ("none", "all", *INTEGRATION_TO_CALLBACK)
        for name in str(self.report_to).split(","):
            if name.strip() not in loggers:
                raise NeftError(f"report_to {name.strip()!r} is not known; use none or a "
                                f"comma-separated list of {', '.join(INTEGRATION_TO_CALLBACK)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


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
    changed = [k for k in current if k not in RESUME_FREE and previous.get(k) != current[k]]
    if changed:
        raise NeftError(f"--resume: option {changed[0]} differs from the run in {path} "
                        f"({previous.get(changed[0])!r} vs {current[changed[0]]!r}); resume "
                        "with the same options or use --overwrite")
    return any(name.startswith("checkpoint-") for name in os.listdir(path))


def _occupied(path: str) -> bool:
    """Whether ``path`` holds anything but this run's lock."""
    return os.path.isdir(path) and any(not is_lock_file(n) for n in os.listdir(path))


def _clear(path: str) -> None:
    """Remove everything in ``path`` but the lock that this process holds on it."""
    for name in os.listdir(path):
        if is_lock_file(name):
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)


def _claim_output_dir(config: TrainConfig, resume: bool) -> bool:
    """Make output_dir this run's, removing an old run under --overwrite; called once every
    check has passed. Returns True when the folder is new (so it can go on failure)."""
    path = config.output_dir
    if config.overwrite and not config.resume and os.path.isfile(os.path.join(path, RUN_FILE)):
        _clear(path)
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
    print(f"neft train: the run in {config.output_dir} is finished (step {step} of "
          f"max_steps {config.max_steps}); nothing to resume, no file changed (pass a larger "
          "--max_steps to train on, or --overwrite to start again)", file=sys.stderr,
          flush=True)
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
            print(f"neft train: {folder} is incomplete (killed while saving); removing it",
                  file=sys.stderr, flush=True)
            shutil.rmtree(folder)
    return None


def _discard_run(path: str) -> None:
    """A run that failed before its first checkpoint leaves nothing to resume: remove it, so
    that the next try needs neither --resume nor --overwrite."""
    if os.path.isdir(path) and not any(n.startswith("checkpoint-") for n in os.listdir(path)):
        _clear(path)  # the folder itself goes with the lock, if the run made it


# ----------------------------------------------------------------------------- models


def _budget(config: TrainConfig) -> dict[str, Any]:
    if config.num_neurons is not None:
        return {"neurons": config.num_neurons}
    if config.percent is not None:
        return {"percent": config.percent}
    return {"match_lora": config.match_lora}


def select_for_training(model: nn.Module, config: TrainConfig, dataset: Any) -> NeuronSet:
    """Neurons for methods neft (file or on-the-fly scorer) and random."""
    from .select import NEEDS_DATA, select_neurons

    if config.method == "neft" and config.neurons:
        return NeuronSet.load(config.neurons)
    scorer = "random" if config.method == "random" else config.scorer
    # reversed has no --reference here, so it runs a probe on the training data
    data = list(dataset) if scorer in NEEDS_DATA or scorer == "reversed" else None
    return _on_rank_zero(lambda: select_neurons(model, scorer=scorer, data=data,
                                                seed=config.seed, **_budget(config)))


def _on_rank_zero(select: Any) -> NeuronSet:
    """Under torchrun / accelerate launch, rank 0 selects (on the whole, not yet wrapped
    model) and sends the set to the other ranks, which wait: every rank must train the same
    neurons, and recomputing them on each rank could differ by a tie flipped by float
    noise, while N processes scoring at once would compete for one host's cores."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return select()
    box = [select() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def budget_parameters(model: nn.Module, config: TrainConfig) -> int:
    """The parameters neft trains at this budget (neurons x neuron size), which PEFT's
    peers are sized to."""
    from .select.budget import linear_shapes, lora_parameters, resolve_budget

    budget = _budget(config)
    if "match_lora" in budget:
        budget = {"lora_params": lora_parameters(linear_shapes(model), budget["match_lora"]),
                  "lora_rank": budget["match_lora"]}
    return resolve_budget(find_neuron_groups(model), count_parameters(model), **budget).parameters


def prepare_model(model: nn.Module, config: TrainConfig, dataset: Any) -> nn.Module:
    """Make exactly the method's parameters trainable."""
    if config.method in ("neft", "random"):
        neurons = select_for_training(model, config, dataset)
        neft_config = NeftConfig(neurons=neurons, mode=config.neft_mode,
                                 base_model_name_or_path=config.model)
        return get_neft_model(model, neft_config)
    if config.method in PEERS:
        from .peers import apply_peer

        return apply_peer(model, config.method, budget_parameters(model, config), config.seed)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
                          target_modules=targets if targets == "all-linear"
                          else [t.strip() for t in targets.split(",")])
        try:
            wrapped = get_peft_model(model, lora)
            # the adapter works from any working directory (peft records the path as typed)
            wrapped.peft_config["default"].base_model_name_or_path = recorded_name(config.model)
            return wrapped
        except ValueError as exc:  # e.g. target modules the model does not have
            text = str(exc).strip()
            raise NeftError(f"LoRA cannot be applied: {text.splitlines()[0] if text else exc!r}"
                            "; name lora_target_modules as in model.named_modules() (e.g. "
                            "q_proj,v_proj) or use all-linear") from exc
    trainable = None
    if config.method == "ft-inout":
        trainable = {g.module for g in find_neuron_groups(model)}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            param.requires_grad_(trainable is None or name in trainable)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- trainer


class NeftTrainerMixin:
    """Teaches any transformers Trainer (e.g. trl's SFTTrainer) to checkpoint, save and
    reload a NeftModel as its small adapter: Trainer itself saves only PreTrainedModel and
    PeftModel properly and would write a NeftModel's whole state dict instead. Put it
    first: ``class MyTrainer(NeftTrainerMixin, SFTTrainer)``. Other models pass through.
    Each save also records steps and losses for the adapter card."""

    def _neft_model(self) -> NeftModel | None:
        model = self.accelerator.unwrap_model(self.model)
        return model if isinstance(model, NeftModel) else None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Every rank comes here (checkpoints, the end of training): sharded deltas (FSDP2,
        ZeRO-3) are gathered by all, rank 0 writes. Trainer's own FSDP/DeepSpeed path would
        first gather the whole model's state dict, for a few delta tensors."""
        model = self._neft_model()
        if model is None:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        model.training_info = training_info(self.state)
        model.save_pretrained(output_dir, is_main_process=self.args.should_save)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP, Trainer also writes the whole model's state dict into every checkpoint
        (for resuming); a NeftModel's checkpoint needs its adapter, optimizer and scheduler
        only."""
        if self._neft_model() is None or not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import save_fsdp_optimizer
        from transformers.trainer import SCHEDULER_NAME

        save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator,
                            self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._neft_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            model.training_info = training_info(self.state)
            model.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None
                              ) -> None:
        target = self._neft_model()
        if target is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target.load_adapter_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        target = self._neft_model()
        if target is None:
            return super()._load_best_model()
        target.load_adapter_weights(self.state.best_model_checkpoint)


class NeftTrainer(NeftTrainerMixin, Trainer):
    """Trainer that checkpoints a NeftModel as its small adapter, not the whole model."""


def training_info(state: Any) -> dict[str, Any]:
    """Steps and losses so far, from a TrainerState, for the adapter card."""
    history = state.log_history or []
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    mean = next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None)
    return {"global_step": state.global_step, "train_loss": losses[-1] if losses else None,
            "mean_train_loss": mean, "eval_loss": evals[-1] if evals else None,
            "best_eval_loss": state.best_metric}


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: checkpoint at the end of the current step, then stop cleanly."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nneft train: got signal {signum}; saving a checkpoint and stopping "
              "(again to stop at once)", flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _fsdp_option(value: str | None) -> str | bool | None:
    """``--fsdp true`` as Trainer's bare ``--fsdp``; false or empty: no FSDP."""
    if value is None or value.strip().lower() in ("", "false", "no", "none"):
        return None
    return True if value.strip().lower() == "true" else value


def _use_bf16(setting: str | bool) -> bool:
    if setting in (True, "true"):
        return True
    if setting in (False, "false"):
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def training_arguments(config: TrainConfig, has_eval: bool) -> TrainingArguments:
    eval_steps = config.eval_steps or 50
    save_steps = config.save_steps or eval_steps
    if has_eval and save_steps % eval_steps:
        raise NeftError(f"save_steps ({save_steps}) must be a multiple of eval_steps "
                        f"({eval_steps}) to keep the best checkpoint by dev loss")
    try:
        return TrainingArguments(
            output_dir=config.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_scheduler_type,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            per_device_train_batch_size=config.per_device_train_batch_size,
            per_device_eval_batch_size=config.per_device_eval_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_steps=config.max_steps,
            num_train_epochs=config.num_train_epochs,
            seed=config.seed,
            data_seed=config.seed,
            logging_steps=config.logging_steps,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=eval_steps if has_eval else None,
            save_strategy="steps",
            save_steps=save_steps,
            save_total_limit=config.save_total_limit,
            load_best_model_at_end=has_eval,
            metric_for_best_model="eval_loss" if has_eval else None,
            greater_is_better=False if has_eval else None,
            bf16=_use_bf16(config.bf16),
            activation_checkpointing=config.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            report_to=[] if config.report_to == "none" else config.report_to.split(","),
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            fsdp=_fsdp_option(config.fsdp),
            fsdp_config=config.fsdp_config,
            deepspeed=config.deepspeed,
            disable_tqdm=False,
        )
    except ValueError as exc:  # a combination Trainer refuses (e.g. bf16 without support)
        text = str(exc).strip()
        raise NeftError(f"Trainer refuses these options: "
                        f"{text.splitlines()[0] if text else exc!r}") from exc


def plot_losses(log_history: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("eval_loss", "dev")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (target tokens)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # a run too short to log has no curve
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _field_map(config: TrainConfig) -> dict[str, str]:
    mapping = {}
    if config.source_field:
        mapping[config.source_field] = "source"
    if config.target_field:
        mapping[config.target_field] = "target"
    return mapping


def load_split(config: TrainConfig, source: str, split: str | None, limit: int | None,
               tokenizer: Any) -> Any:
    return _build(config, _records(config, source, split, limit), tokenizer)


def _records(config: TrainConfig, source: str, split: str | None,
             limit: int | None) -> list[dict]:
    return load_records(source, split=split, field_map=_field_map(config), limit=limit,
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
    print(f"neft train: {config.train_file} has no {config.eval_split} split; training without "
          "evaluation (pass --eval_file to evaluate)", file=sys.stderr, flush=True)
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
        print("train data: " + format_length_stats(length_stats(train_data)), flush=True)
        eval_data = None
        if eval_records is not None:
            eval_data = _build(config, eval_records, tokenizer)
            print("dev data: " + format_length_stats(length_stats(eval_data)), flush=True)
        for name, data in (("training", train_data), ("dev", eval_data)):
            if data is not None:
                longest = max((len(e["input_ids"]) for e in data.examples), default=0)
                check_length(model, longest, f"the longest {name} example (max_length "
                             f"{config.max_length})", "pass --max_length {room} or less")
        total_params = count_parameters(model)
        model = prepare_model(model, config, train_data)
    trainable = trainable_parameters(model)
    print(f"method {config.method}: {trainable:,} trainable parameters "
          f"({100 * trainable / total_params:.3f}% of {total_params:,})", flush=True)

    fresh = False
    if _is_main_process():
        fresh = _claim_output_dir(config, resume)
        write_json(os.path.join(config.output_dir, RUN_FILE), _run_record(config, fingerprint))
    checkpoint = last_checkpoint(config.output_dir) if resume else None
    if config.resume and checkpoint is None:
        print(f"neft train: no complete checkpoint in {config.output_dir}; starting at step 0",
              file=sys.stderr, flush=True)
    stopper = StopOnSignal()
    try:
        trainer = NeftTrainer(model=model, args=args, train_dataset=train_data,
                              eval_dataset=eval_data,
                              data_collator=DataCollator(tokenizer.pad_token_id),
                              processing_class=tokenizer, callbacks=[stopper, *callbacks])
        if (config.neft_mode == "mask" and config.method in ("neft", "random")
                and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)):
            # set by `accelerate launch --use_fsdp / --use_deepspeed` rather than our flags
            raise NeftError("neft_mode mask does not work on sharded weights; use neft_mode "
                            "compact with FSDP or DeepSpeed")
        if _fsdp_option(config.fsdp) and not trainer.is_fsdp_enabled:
            print("neft train: FSDP is not active (accelerate shards on GPUs and other "
                  "accelerators only; CPU processes train with DDP)", file=sys.stderr,
                  flush=True)
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
        if not interrupted and config.method in ("full", "ft-inout"):
            tokenizer.save_pretrained(config.output_dir)
        write_json(os.path.join(config.output_dir, LOG_FILE), trainer.state.log_history,
                   allow_nan=True)
        plot_losses(trainer.state.log_history, os.path.join(config.output_dir, PLOT_FILE),
                    f"{config.method} on {os.path.basename(config.train_file.rstrip('/'))}")
        write_json(os.path.join(config.output_dir, RUN_FILE),
                   {**_run_record(config, fingerprint), "result": summary}, allow_nan=True)
        apply_umask(config.output_dir)  # Trainer's safetensors are written 0600
    if interrupted:
        print(f"neft train: stopped at step {trainer.state.global_step}; its checkpoint is in "
              f"{config.output_dir}: rerun with --resume (same options) to continue",
              file=sys.stderr, flush=True)
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


def peak_memory_mb() -> float:
    """Peak RSS of this process (CPU) or peak allocated CUDA memory, in MB."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

