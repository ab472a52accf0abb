"""Training: one method (NeFT or a baseline) on one dataset with transformers' Trainer.

    from neft.train import TrainConfig, train
    summary = train(TrainConfig(data="data/gettext-en-de", output_dir="outputs/neft"))
"""

from .run import (
    LOG_FILE,
    METHODS,
    PLOT_FILE,
    RUN_FILE,
    NeftTrainer,
    StopOnSignal,
    TrainConfig,
    last_checkpoint,
    load_split,
    peak_memory_mb,
    prepare_model,
    select_for_training,
    train,
    trainable_parameters,
    training_arguments,
)

__all__ = [
    "LOG_FILE", "METHODS", "PLOT_FILE", "RUN_FILE", "NeftTrainer", "StopOnSignal",
    "TrainConfig", "last_checkpoint", "load_split", "peak_memory_mb", "prepare_model",
    "select_for_training", "train", "trainable_parameters", "training_arguments",
]
