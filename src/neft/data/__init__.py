"""Data: records from files or the Hub (records), prompt templates (prompts), tokenisation
and the collator (tokenize), and text sources (gettext catalogues, general-English sets).

Flow: ``load_records`` -> ``render_example`` (a task template turns a record into a prompt
and a target) -> ``tokenize_example`` / ``build_dataset`` (loss on the target only) ->
``DataCollator`` (batches). ``harvest_gettext`` makes real translation data from the
gettext catalogues installed on any Linux machine.
"""

from .prompts import LANGUAGE_NAMES, TEMPLATES, language_name, render_example, resolve_template
from .records import FILE_FORMATS, TASK_FIELDS, TASKS, load_records, write_jsonl
from .sources import (
    GENERAL_SETS,
    GETTEXT_LOCALE_DIR,
    gettext_languages,
    harvest_general_text,
    harvest_gettext,
    load_drift_sets,
    placeholder_survival,
    placeholders,
)
from .tokenize import (
    IGNORE_INDEX,
    DataCollator,
    TokenizedDataset,
    build_dataset,
    encode_prompt,
    format_length_stats,
    length_stats,
    tokenize_example,
)

__all__ = [
    "FILE_FORMATS", "GENERAL_SETS", "GETTEXT_LOCALE_DIR", "IGNORE_INDEX", "LANGUAGE_NAMES",
    "TASKS", "TASK_FIELDS", "TEMPLATES", "DataCollator", "TokenizedDataset", "build_dataset",
    "encode_prompt", "format_length_stats", "gettext_languages", "harvest_general_text",
    "harvest_gettext", "language_name", "length_stats", "load_drift_sets", "load_records",
    "placeholder_survival", "placeholders", "render_example", "resolve_template",
    "tokenize_example", "write_jsonl",
]
