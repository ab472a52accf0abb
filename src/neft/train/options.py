"""TrainConfig: every option of `neft train` (flags and YAML keys), checked on creation."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..config import option, refuse_ignored
from ..core.model import MODES
from ..data.options import DataOptions
from ..errors import NeftError
from ..select import SCORERS
from ..select.budget import parse_layers, parse_quota
from ..select.massive import DEFAULT_AVOID, parse_avoid
from ..select.registry import DEFAULT_SCORER, check_scorer_options
from .methods import METHODS

# The options that shape a selection made on the fly (not one read from --neurons).
SELECTION_SHAPES = ("select_layers", "select_quota", "select_avoid")
AUTO_AVOID = "auto"  # select_avoid's default: each method's own rule (Method.avoid)
# Options added after runs were first recorded, with the value that gives the behaviour
# from before: a record without one (neft_run.json, a compare spec) was made with it.
ADDED_OPTIONS: dict[str, Any] = {"torch_compile": False}  # 2026-12-08


def recorded_option(record: dict[str, Any], name: str) -> Any:
    """An option's value in a run's record, reading one the record predates as made with
    the behaviour from before it existed."""
    return record[name] if name in record else ADDED_OPTIONS.get(name)


@dataclass
class TrainConfig(DataOptions):
    """Every option of `neft train` (flags and YAML keys); the data options come from
    DataOptions."""

    model: str = option("model name or path; smollm2-135m is the embedded default",
                        "smollm2-135m")
    method: str = option(f"one of {', '.join(METHODS)}", "neft")
    train_file: str | None = option("training data: JSONL/CSV/TSV/Parquet file, folder or "
                                    "hub dataset")
    eval_file: str | None = option("dev data for evaluation loss and best-checkpoint choice")
    train_split: str | None = option("split of a folder or hub dataset", "train")
    eval_split: str | None = option("split of a folder or hub dataset", "dev")
    output_dir: str = option("where the adapter / model, log and plot go", "outputs/run")
    max_train_samples: int | None = option("use the first N training records")
    max_eval_samples: int | None = option("use the first N dev records", 200)
    max_length: int = option("tokens per example (prompt is cut first, never the target)", 256)
    # neurons
    neurons: str | None = option("NeuronSet file (from `neft select`) for method neft")
    scorer: str = option("scorer when selecting on the fly (no --neurons)", DEFAULT_SCORER)
    scorer_options: dict | None = option("the scorer's own settings, e.g. steps=40,"
                                         "learning_rate=1e-4 (names: neft select --help)")
    select_layers: str | None = option("select neurons only in these blocks: A-B, 3,5,7, "
                                       "upper:N or lower:N (the budget unchanged)")
    select_quota: str | None = option("rank within each layer, kind or module, the budget "
                                      "split by pool size (default: one global ranking)")
    select_avoid: str | None = option("leave out of the selection: massive (or massive:R), the "
                                      "units whose activation is R x their layer's median "
                                      "(R 40), or none; auto: the method's own, "
                                      f"{DEFAULT_AVOID or 'none'} for neft, none for random "
                                      "(the control)", AUTO_AVOID)
    match_lora: int | None = option("budget: parameters of LoRA rank R on "
                                    "--lora_target_modules (all linear layers)", 8)
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
    torch_compile: bool = option("compile the model with torch.compile (Trainer's option; "
                                 "the first steps compile)", False)
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

        self.check_data_options()
        choices = {"neft_mode": MODES, "scorer": tuple(SCORERS),
                   "lr_scheduler_type": tuple(t.value for t in SchedulerType)}
        self.select_quota = parse_quota(self.select_quota)
        if self.select_layers is not None:
            parse_layers(self.select_layers)  # the spelling; the model's blocks come later
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise NeftError(f"{name} {getattr(self, name)!r} is not known; use one of "
                                f"{', '.join(allowed)}")
        if self.scorer_options:
            check_scorer_options(self.scorer, self.scorer_options)
        method = METHODS.get(self.method)
        if (method is not None and method.selects_neurons and method.scorer is None
                and SCORERS[self.scorer].needs_reference and not self.neurons):
            raise NeftError(f"scorer {self.scorer} compares with a fine-tuned checkpoint, "
                            "which a training run does not take: select first (neft select "
                            f"--scorer {self.scorer} --reference PATH --output FILE), then "
                            "pass --neurons FILE")
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
                                "install 'neft[deepspeed]' (docs/distributed.md)")
        if self.fsdp_config and not fsdp_option(self.fsdp):
            raise NeftError("fsdp_config is used only with --fsdp true; pass both, or neither")
        if (self.neft_mode == "mask" and METHODS[self.method].selects_neurons
                and (fsdp_option(self.fsdp) or self.deepspeed)):
            raise NeftError("neft_mode mask (the paper's gradient masking of whole weights) "
                            "does not work on sharded weights; use neft_mode compact with "
                            "FSDP or DeepSpeed")
        if self.neurons and self.method != "neft":
            raise NeftError(f"neurons is used by method neft only, and method is "
                            f"{self.method}: drop --neurons or pass --method neft")
        if self.select_avoid == AUTO_AVOID:  # the method's own rule, where it selects here
            selecting = METHODS[self.method].selects_neurons and not self.neurons
            self.select_avoid = METHODS[self.method].avoid if selecting else None
        if parse_avoid(self.select_avoid, also="auto (the method's own)") is None:
            self.select_avoid = None  # 'none' and None mean the same: one value in specs
        selects = METHODS[self.method].selects_neurons and not self.neurons
        for name in SELECTION_SHAPES:
            if getattr(self, name) is None:
                continue
            if getattr(self, name) == _DEFAULTS[name]:
                if not selects:  # a default shapes what is selected here, and nothing else:
                    setattr(self, name, None)  # a run that selects none records none
                continue
            if not METHODS[self.method].selects_neurons:
                raise NeftError(f"{name} shapes a neuron selection, and method {self.method} "
                                f"selects none: drop --{name}")
            if self.neurons:
                raise NeftError(f"{name} shapes a selection made here, and --neurons gives "
                                f"one made earlier: drop --{name} (or pass it to neft select)")
        from transformers.integrations import get_available_reporting_integrations
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        loggers = ("none", "all", *INTEGRATION_TO_CALLBACK)
        for name in (n.strip() for n in str(self.report_to).split(",")):
            if name not in loggers:
                raise NeftError(f"report_to {name!r} is not known; use none or a "
                                f"comma-separated list of {', '.join(INTEGRATION_TO_CALLBACK)}")
            if name in INTEGRATION_TO_CALLBACK and name not in (
                    get_available_reporting_integrations()):
                package = {"azure_ml": "azureml-core", "flyte": "flytekit"}.get(name, name)
                raise NeftError(f"report_to {name} needs its package, which is not installed: "
                                f"pip install {package}, or pass --report_to none")

    def ignored_options(self) -> dict[str, str]:
        """The neuron options this run's method never reads, each with the reason.
        `neft train` refuses them when given (a flag meant for another method is a mistake);
        compare's shared `train:` block gives them to every cell, so it does not."""
        method = METHODS[self.method]
        ignored: dict[str, str] = {}
        budget = ("match_lora", "num_neurons", "percent")
        if not method.selects_neurons:
            ignored.update(dict.fromkeys(("scorer", "scorer_options", "neft_mode",
                                          "select_avoid"),
                                         f"method {self.method} selects no neurons"))
            if method.budget != "parameters":  # PEFT's peers are sized by the budget
                size = " (its size is --lora_r)" if self.method == "lora" else ""
                ignored.update(dict.fromkeys(
                    budget, f"method {self.method} has no neuron budget{size}"))
        elif self.neurons:
            ignored.update(dict.fromkeys(("scorer", "scorer_options", "select_avoid", *budget),
                                         "--neurons gives the set, made earlier"))
        elif method.scorer is not None and self.scorer != method.scorer:
            ignored.update(dict.fromkeys(("scorer", "scorer_options"),
                                         f"method {self.method} always uses scorer "
                                         f"{method.scorer}"))
        if self.train_file and os.path.isfile(os.path.expanduser(self.train_file)):
            ignored["train_split"] = f"--train_file {self.train_file} is one file, read whole"
            if not self.eval_file:
                ignored["eval_split"] = (f"--train_file {self.train_file} is one file, with no "
                                         "splits; pass --eval_file FILE to evaluate")
        if self.method != "lora":
            sized = " (its rank follows the budget)" if method.budget == "parameters" else ""
            ignored.update(dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout"),
                                         f"method {self.method} is not LoRA{sized}"))
            sizes = (method.budget in ("neurons", "parameters") and not self.neurons
                     and self.num_neurons is None and self.percent is None)
            if not sizes:  # it sizes a --match_lora budget, and nothing else
                ignored["lora_target_modules"] = (f"method {self.method} trains no LoRA and "
                                                  "has no --match_lora budget here")
        return ignored

    def refuse_ignored(self, given: Any) -> None:
        """One line for the first option in ``given`` that this method would not read
        (match_lora too when given beside the budget that wins over it)."""
        given = list(given)
        other = [name for name in ("num_neurons", "percent") if getattr(self, name) is not None]
        if "match_lora" in given and self.match_lora is not None and other:
            raise NeftError(f"give one budget: --match_lora or --{other[0]}, not both")
        refuse_ignored(given, self.ignored_options())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def fsdp_option(value: str | None) -> str | bool | None:
    """``--fsdp true`` as Trainer's bare ``--fsdp``; false or empty: no FSDP."""
    if value is None or value.strip().lower() in ("", "false", "no", "none"):
        return None
    return True if value.strip().lower() == "true" else value
