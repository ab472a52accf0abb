"""Prompts: language names and the task templates that turn a record into a prompt and
a target (``render_example``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import NeftError
from .records import TASKS, check_choice, require_fields

# ----------------------------------------------------------------------------- languages

LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto",
    "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay", "nb": "Norwegian",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish",
    "ta": "Tamil", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "zh": "Chinese",
}
REGIONAL_NAMES = {
    "zh_TW": "Traditional Chinese", "zh_HK": "Traditional Chinese",
    "pt_BR": "Brazilian Portuguese",
}


def language_name(code: str) -> str:
    """English name for a language code as used in prompts: de -> German, zh_CN -> Chinese.

    A name passed instead of a code ("German") is returned as is.
    """
    lang, _, region = code.replace("-", "_").partition("_")
    regional = f"{lang.lower()}_{region.split('@')[0].upper()}"
    if regional in REGIONAL_NAMES:
        return REGIONAL_NAMES[regional]
    if lang.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[lang.lower()]
    if len(code) > 3 and code[0].isupper() and code.replace(" ", "").isalpha():
        return code
    raise NeftError(f"unknown language code {code!r}: pass its English name instead "
                    f"(e.g. 'Swahili') or one of {', '.join(sorted(LANGUAGE_NAMES))}")



# ----------------------------------------------------------------------------- templates

TEMPLATES = ("auto", "chat", "plain", "llama2")


def resolve_template(template: str, tokenizer: Any = None) -> str:
    """'auto' is 'chat' when the tokenizer has a chat template, else 'plain'."""
    check_choice(template, TEMPLATES, "template")
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise NeftError("the tokenizer has no chat template: use template 'plain' or 'llama2'")
    return template


def _languages(record: Mapping[str, Any], task: str, src_lang: str | None,
               tgt_lang: str | None) -> tuple[str, str]:
    """A record's own src_lang/tgt_lang fields win; the arguments fill in for records without.

    The source defaults to English; a summary defaults to the source language.
    """
    src = record.get("src_lang") or src_lang or "en"
    tgt = record.get("tgt_lang") or tgt_lang or (src if task == "summarization" else None)
    if tgt is None:
        raise NeftError("translation needs a target language: pass --target_lang de "
                        "(tgt_lang= in Python) or give records a tgt_lang field")
    return language_name(src), language_name(tgt)


def _task_text(record: Mapping[str, Any], task: str, template: str, src_lang: str | None,
               tgt_lang: str | None) -> tuple[str, str]:
    """(instruction, input text) that the template then wraps."""
    if task == "instruction":
        return record["instruction"], record.get("input") or ""
    src, tgt = _languages(record, task, src_lang, tgt_lang)
    if task == "translation":
        return f"Translate the following text from {src} to {tgt}.", record["source"]
    if template == "llama2":  # the paper's wording
        return (f"Given the below {src} article, generate a summary in {tgt}.",
                f"Article: {record['source']}")
    if src == tgt:
        return f"Summarize the following {src} text.", record["source"]
    return f"Summarize the following {src} text in {tgt}.", record["source"]


def render_example(
    record: Mapping[str, Any],
    task: str,
    tokenizer: Any = None,
    template: str = "auto",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> tuple[str, str]:
    """(prompt_text, target_text) for one record; the model trains on prompt + target + eos
    and evaluation generates from the same prompt.

    chat:   the tokenizer's chat template, user message "{instruction}\\n{text}",
            add_generation_prompt=True; target as is.
    plain:  "### Instruction:\\n{instruction}\\n\\n### Input:\\n{text}\\n\\n### Response:\\n"
            (no Input section when there is no text); target as is.
    llama2: the paper's "[INST] {instruction} {text} [/INST]" (a newline, not a space,
            before the text of summarization and instruction tasks); target " {target}",
            its leading space being what Llama-2's format puts after [/INST].
    completion records are never wrapped: prompt and completion are used verbatim.
    """
    check_choice(task, TASKS, "task")
    require_fields(record, task, f"record {record.get('id', '')}".strip())
    if task == "completion":
        return record["prompt"], record["completion"]
    template = resolve_template(template, tokenizer)
    instruction, text = _task_text(record, task, template, src_lang, tgt_lang)
    target = record["output"] if task == "instruction" else record["target"]
    if template == "chat":
        content = f"{instruction}\n{text}" if text else instruction
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                               tokenize=False, add_generation_prompt=True)
        return prompt, target
    if template == "llama2":
        separator = " " if task == "translation" else "\n"
        user = f"{instruction}{separator}{text}" if text else instruction
        return f"[INST] {user} [/INST]", f" {target}"
    prompt = f"### Instruction:\n{instruction}\n\n"
    if text:
        prompt += f"### Input:\n{text}\n\n"
    return prompt + "### Response:\n", target
