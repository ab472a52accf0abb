"""Training: one method (NeFT or a baseline) on one dataset with transformers' Trainer.

    from neft.train import TrainConfig, train
    summary = train(TrainConfig(train_file="data/gettext-en-de", output_dir="outputs/neft"))

options (TrainConfig), methods (what each method trains), trainer (NeftTrainer, signals,
TrainingArguments), run (the output folder, the data, ``train``).
"""

from .methods import (
    METHODS,
    Method,
    MethodSpec,
    get_method,
    prepare_model,
    register_method,
    select_for_training,
    trainable_parameters,
)
from .options import SELECTION_SHAPES, TrainConfig
from .run import (
    LOG_FILE,
    PLOT_FILE,
    RUN_FILE,
    last_checkpoint,
    load_split,
    peak_memory_mb,
    train,
)
from .trainer import NeftTrainer, StopOnSignal, training_arguments

__all__ = [
    "LOG_FILE", "METHODS", "PLOT_FILE", "RUN_FILE", "SELECTION_SHAPES", "Method", "MethodSpec",
    "NeftTrainer", "StopOnSignal", "TrainConfig", "get_method", "last_checkpoint", "load_split",
    "peak_memory_mb", "prepare_model", "register_method", "select_for_training", "train",
    "trainable_parameters", "training_arguments",
]
