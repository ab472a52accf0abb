"""Evaluation: generate from a model or adapter, score with the metrics, and the
likelihood measures (test loss, drift on general text)."""

from .likelihood import drift, target_loss
from .metrics import METRICS, paired_bootstrap, parse_metrics, score
from .run import (
    ADAPTER_CONFIG,
    EvalConfig,
    StopAtNewline,
    end_of_turn_token_id,
    evaluate_model,
    format_table,
    generate,
    load_for_eval,
    newline_token_ids,
    run_eval,
    stop_token_ids,
)

__all__ = [
    "ADAPTER_CONFIG", "METRICS", "EvalConfig", "StopAtNewline", "drift",
    "end_of_turn_token_id", "evaluate_model", "format_table", "generate", "load_for_eval",
    "newline_token_ids", "paired_bootstrap", "parse_metrics", "run_eval", "score",
    "stop_token_ids", "target_loss",
]
