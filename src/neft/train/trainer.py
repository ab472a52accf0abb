"""NeftTrainer (Trainer that checkpoints a NeftModel as its adapter), the signal handler
that stops at a step boundary, TrainingArguments from a TrainConfig, the loss plot."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..core.io import save_figure
from ..core.model import NeftModel
from ..errors import NeftError
from .options import TrainConfig, fsdp_option

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
            torch_compile=config.torch_compile,
            report_to=[] if config.report_to == "none" else config.report_to.split(","),
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            fsdp=fsdp_option(config.fsdp),
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
    save_figure(fig, path, dpi=120)
