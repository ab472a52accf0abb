"""DataOptions: how records become prompts, the options `neft train`, `neft eval` and
`neft compare` share (declared once, checked once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import option
from ..errors import NeftError
from .prompts import TEMPLATES, language_name
from .records import TASKS

DATA_OPTIONS = ("task", "template", "source_lang", "target_lang", "source_field",
                "target_field")


@dataclass
class DataOptions:
    """The task, its prompt template, the languages and the record fields to read."""

    task: str = option("translation, summarization, instruction or completion", "translation")
    template: str = option("prompt template: auto, chat, plain or llama2", "auto")
    source_lang: str | None = option("source language code, for records without a src_lang "
                                     "field (a record's own wins)")
    target_lang: str | None = option("target language code, for records without a tgt_lang "
                                     "field (a record's own wins); in eval it also picks the "
                                     "BLEU tokenizer")
    source_field: str | None = option("record field holding the source text")
    target_field: str | None = option("record field holding the target (reference) text")

    def check_data_options(self) -> None:
        """Unknown tasks, templates and language codes fail before any loading."""
        for name, allowed in (("task", TASKS), ("template", TEMPLATES)):
            if getattr(self, name) not in allowed:
                raise NeftError(f"{name} {getattr(self, name)!r} is not known; use one of "
                                f"{', '.join(allowed)}")
        for lang in (self.source_lang, self.target_lang):
            if lang:
                language_name(lang)

    def field_map(self) -> dict[str, str]:
        """{record field: standard field} for load_records."""
        return field_map(self.source_field, self.target_field)

    def data_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DATA_OPTIONS}


def field_map(source_field: str | None, target_field: str | None) -> dict[str, str]:
    """{record field: standard field} for the fields a user named."""
    return {name: standard for name, standard in ((source_field, "source"),
                                                   (target_field, "target")) if name}
