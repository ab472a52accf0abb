"""Data: records from files or the Hub, prompt templates, tokenisation and the collator,
and text sources (gettext catalogues, general-English sets)."""

from .records import (
    FILE_FORMATS,
    GETTEXT_LOCALE_DIR,
    IGNORE_INDEX,
    LANGUAGE_NAMES,
    TASK_FIELDS,
    TASKS,
    TEMPLATES,
    DataCollator,
    TokenizedDataset,
    build_dataset,
    encode_prompt,
    format_length_stats,
    gettext_languages,
    harvest_gettext,
    language_name,
    length_stats,
    load_records,
    placeholder_survival,
    placeholders,
    render_example,
    resolve_template,
    tokenize_example,
    write_jsonl,
)
from .sources import GENERAL_SETS, harvest_general_text, load_drift_sets

__all__ = [
    "FILE_FORMATS", "GENERAL_SETS", "GETTEXT_LOCALE_DIR", "IGNORE_INDEX", "LANGUAGE_NAMES",
    "TASKS", "TASK_FIELDS", "TEMPLATES", "DataCollator", "TokenizedDataset", "build_dataset",
    "encode_prompt", "format_length_stats", "gettext_languages", "harvest_general_text",
    "harvest_gettext", "language_name", "length_stats", "load_drift_sets", "load_records",
    "placeholder_survival", "placeholders", "render_example", "resolve_template",
    "tokenize_example", "write_jsonl",
]
