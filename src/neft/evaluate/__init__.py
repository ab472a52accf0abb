"""Evaluation: generate from a model or adapter (generation), score with the metrics
(metrics), the likelihood measures (likelihood: test loss, drift on general text), the
model to evaluate (load), and `neft eval` (run: EvalConfig, run_eval)."""

from .generation import (
    StopAtNewline,
    end_of_turn_token_id,
    generate,
    newline_token_ids,
    prompt_token_ids,
    stop_token_ids,
)
from .likelihood import drift, target_loss
from .load import ADAPTER_CONFIG, load_for_eval
from .metrics import (
    METRICS,
    Metric,
    MetricInput,
    paired_bootstrap,
    parse_metrics,
    register_metric,
    score,
)
from .run import EvalConfig, evaluate_model, format_table, run_eval

__all__ = [
    "ADAPTER_CONFIG", "METRICS", "EvalConfig", "Metric", "MetricInput", "StopAtNewline",
    "drift", "end_of_turn_token_id", "evaluate_model", "format_table", "generate",
    "load_for_eval", "newline_token_ids", "paired_bootstrap", "parse_metrics",
    "prompt_token_ids", "register_metric", "run_eval", "score", "stop_token_ids",
    "target_loss",
]
