"""neft: neuron-level fine-tuning for Hugging Face causal language models."""

__version__ = "0.1.0"

from .errors import NeftError  # noqa: E402
from .export import export_lora  # noqa: E402
from .model import NeftConfig, NeftModel, get_neft_model  # noqa: E402
from .neurons import NeuronGroup, NeuronSet, find_neuron_groups  # noqa: E402

__all__ = [
    "NeftConfig",
    "NeftError",
    "NeftSFTTrainer",
    "NeftTrainerMixin",
    "NeftModel",
    "NeuronGroup",
    "NeuronSet",
    "find_neuron_groups",
    "export_lora",
    "get_neft_model",
]


def __getattr__(name: str) -> object:
    """NeftTrainerMixin and NeftSFTTrainer on first use: transformers' Trainer (and trl,
    an optional extra) are slow to import and not needed to load an adapter."""
    if name == "NeftTrainerMixin":
        from .train import NeftTrainerMixin

        return NeftTrainerMixin
    if name == "NeftSFTTrainer":
        from .sft import NeftSFTTrainer

        return NeftSFTTrainer
    raise AttributeError(f"module 'neft' has no attribute {name!r}")
