"""neft: neuron-level fine-tuning for Hugging Face causal language models."""

__version__ = "0.1.0"

from .core.model import NeftConfig, NeftModel, get_neft_model  # noqa: E402
from .core.neurons import NeuronGroup, NeuronSet, find_neuron_groups  # noqa: E402
from .errors import NeftError  # noqa: E402
from .select import score_neurons, select_neurons  # noqa: E402

__all__ = [
    "NeftConfig",
    "NeftError",
    "NeftModel",
    "NeuronGroup",
    "NeuronSet",
    "find_neuron_groups",
    "get_neft_model",
    "score_neurons",
    "select_neurons",
]
