"""neft: neuron-level fine-tuning for Hugging Face causal language models."""

__version__ = "0.1.0"

from .core.export import export_lora  # noqa: E402
from .core.model import NeftConfig, NeftModel, get_neft_model  # noqa: E402
from .core.neuron_set import NeuronSet
from .core.neurons import NeuronGroup, find_neuron_groups  # noqa: E402
from .errors import NeftError  # noqa: E402
from .select import score_neurons, select_neurons  # noqa: E402

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
    "score_neurons",
    "select_neurons",
]


def __getattr__(name: str) -> object:
    """NeftTrainerMixin and NeftSFTTrainer on first use: transformers' Trainer (and trl,
    an optional extra) are slow to import and not needed to load an adapter."""
    if name == "NeftTrainerMixin":
        from .train.trainer import NeftTrainerMixin

        return NeftTrainerMixin
    if name == "NeftSFTTrainer":
        from .train.sft import NeftSFTTrainer

        return NeftSFTTrainer
    raise AttributeError(f"module 'neft' has no attribute {name!r}")
