"""The paper's neuron analyses (section 6) as tools: where a set's neurons are, how sets
overlap (Table 6), and neuron utilization and how fine-tuning reorders it (Figure 2).

    dist = distribution({"magnitude": NeuronSet.load("m.safetensors"), ...})
    matrices = overlap_matrices(sets)
    result = analyze_utilization("data/gettext-en-de", "smollm2-135m", adapter="outputs/neft")
"""

from .plots import plot_distribution, plot_overlap, plot_utilization
from .sets import (
    distribution,
    format_distribution,
    format_overlap,
    kind_of,
    label_sets,
    layer_kind_counts,
    load_set,
    overlap_matrices,
)
from .utilization import (
    PAPER_POOL,
    PAPER_THRESHOLD,
    Utilization,
    UtilizationResult,
    analyze_utilization,
    compare,
    evaluation_examples,
    format_utilization,
    layer_means,
    mean_hidden_states,
    rank,
    scaled_threshold,
    trained_mask,
    utilization,
)

__all__ = [
    "PAPER_POOL", "PAPER_THRESHOLD", "Utilization", "UtilizationResult", "analyze_utilization",
    "compare", "distribution", "evaluation_examples", "format_distribution", "format_overlap",
    "format_utilization", "kind_of", "label_sets", "layer_kind_counts", "layer_means",
    "load_set", "mean_hidden_states", "overlap_matrices", "plot_distribution", "plot_overlap",
    "plot_utilization", "rank", "scaled_threshold", "trained_mask", "utilization",
]
