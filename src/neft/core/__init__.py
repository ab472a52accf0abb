"""The engine: which neurons a model has (neurons), a chosen set of them (NeuronSet), the
layers that train only those rows or columns (layers), the adapter that injects them
(model), model and tokenizer loading (loading) and the one file-writing helper (io)."""

from .model import NeftConfig, NeftModel, get_neft_model
from .neuron_set import NeuronSet
from .neurons import NeuronGroup, find_neuron_groups

__all__ = ["NeftConfig", "NeftModel", "NeuronGroup", "NeuronSet", "find_neuron_groups",
           "get_neft_model"]
