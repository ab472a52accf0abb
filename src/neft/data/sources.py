"""Text sources on every Linux machine: gettext catalogues as translation pairs
(``harvest_gettext``; ``placeholders`` finds the format strings they hold), and general
English text that no task trains on, for measuring drift from the base model.

Two sets of real human-written English that every Debian-based machine carries:

- ``manpages``: prose paragraphs of the DESCRIPTION sections of the English manual pages
  (technical English, close to software descriptions such as DDTP's);
- ``licenses``: the paragraphs of the licence texts in /usr/share/common-licenses
  (legal English, far from every task here).

Each set is a deterministic sample: paragraphs are deduplicated, ordered by a seeded hash
and taken until a word budget is reached, so the same machine image gives the same set.
A set's fingerprint (a hash of its texts) travels with every drift score made from it.
"""

from __future__ import annotations

import gettext
import glob
import gzip
import hashlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from ..errors import NeftError
from .records import load_records

logger = logging.getLogger(__name__)

MAN_DIR = "/usr/share/man"
LICENSE_DIR = "/usr/share/common-licenses"
GENERAL_SETS = ("manpages", "licenses")
# Pages of one installed cloud SDK: thousands of generated pages of one machine's make.
MACHINE_SPECIFIC_PAGES = ("gcloud", "bq", "gsutil")
DEFAULT_WORDS = 25_000  # about 33,000 SmolLM2 tokens

_ROFF_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_ROFF_SPECIAL = re.compile(r"\\\[[^\]]*\]|\\\(..|\\\*(?:\[[^\]]*\]|\(..|.)")
_ROFF_SIZE = re.compile(r"\\s[+-]?\d+")
_ROFF_OTHER = re.compile(r"\\[&/,|^%:!]|\\[hvwlLNDxX]'[^']*'|\\[kn](?:\(..|\[[^\]]*\]|.)")
_ROFF_CHARS = {"\\-": "-", "\\e": "\\", "\\ ": " ", "\\~": " ", "\\0": " ", "\\(em": "—",
               "\\(en": "–", "\\(aq": "'", "\\(dq": '"', "\\(lq": '"', "\\(rq": '"',
               "\\(oq": "'", "\\(cq": "'", "\\(bu": "•", "\\(co": "©", "\\.": "."}
_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}
_BREAK_MACROS = {"PP", "P", "LP", "TP", "IP", "HP", "SS", "SH", "br", "sp", "RS", "RE",
                 "nf", "fi", "TS", "TE", "EX", "EE", "in", "ti", "ne"}


def _words(text: str) -> int:
    return len(text.split())


def _is_prose(text: str, min_words: int) -> bool:
    """A paragraph of sentences, not a list of options, a table or code."""
    words = text.split()
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() for c in text)
    return letters > 0.6 * len(text) and text.count("  ") < 3 and any(
        text.rstrip().endswith(p) for p in ".:;)")


def roff_to_text(line: str) -> str:
    """One roff text line without its escapes: fonts, sizes, special characters."""
    for escape, char in _ROFF_CHARS.items():
        line = line.replace(escape, char)
    for pattern in (_ROFF_FONT, _ROFF_SIZE, _ROFF_SPECIAL, _ROFF_OTHER):
        line = pattern.sub("", line)
    return line.replace("\\", "")


def _macro_text(macro: str, rest: str) -> str | None:
    """The text a font macro (.B a b) prints; None for requests that print nothing."""
    if macro not in _FONT_MACROS:
        return None
    parts = re.findall(r'"[^"]*"|\S+', rest)
    joined = "" if macro in ("B", "I", "SM", "SB") else None
    if joined is None:  # alternating fonts: the words are written together
        return "".join(p.strip('"') for p in parts)
    return " ".join(p.strip('"') for p in parts)


def description_paragraphs(source: str) -> list[str]:
    """Paragraphs of a man page's DESCRIPTION section, as plain text."""
    paragraphs: list[str] = []
    current: list[str] = []
    inside = False

    def flush() -> None:
        if current:
            paragraphs.append(" ".join(" ".join(current).split()))
            current.clear()

    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            macro = parts[0] if parts else ""
            rest = parts[1] if len(parts) > 1 else ""
            if macro == "SH":
                flush()
                if inside:
                    break
                inside = rest.strip('"').strip().upper() == "DESCRIPTION"
                continue
            if not inside or macro.startswith('\\"'):
                continue
            if macro in _BREAK_MACROS:
                flush()
                continue
            text = _macro_text(macro, rest)
            if text:
                current.append(roff_to_text(text))
            continue
        if inside:
            if not line.strip():
                flush()
            else:
                current.append(roff_to_text(line))
    flush()
    return [p for p in paragraphs if p]


def _read_page(path: str) -> str | None:
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (OSError, EOFError) as exc:
        logger.warning("neft: skipping unreadable man page %s (%s)", path, exc)
        return None
    return None if text.lstrip().startswith(".so ") else text  # a redirect to another page


def man_pages(man_dir: str = MAN_DIR) -> list[str]:
    """English pages of sections 1-8, without the machine-specific cloud SDK ones."""
    pages = []
    for path in sorted(glob.glob(os.path.join(man_dir, "man[1-8]", "*"))):
        name = os.path.basename(path)
        if not name.startswith(MACHINE_SPECIFIC_PAGES) and os.path.isfile(path):
            pages.append(path)
    return pages


def manpage_paragraphs(man_dir: str = MAN_DIR, min_words: int = 20) -> Iterator[tuple[str, str]]:
    """(page name, paragraph) of every prose paragraph in the pages' DESCRIPTION sections."""
    for path in man_pages(man_dir):
        text = _read_page(path)
        if text is None:
            continue
        name = os.path.basename(path).removesuffix(".gz")
        for paragraph in description_paragraphs(text):
            if _is_prose(paragraph, min_words):
                yield name, paragraph


def license_paragraphs(license_dir: str = LICENSE_DIR,
                       min_words: int = 12) -> Iterator[tuple[str, str]]:
    """(licence name, paragraph) of every licence text; symlinked duplicates read once."""
    seen: set[str] = set()
    for path in sorted(glob.glob(os.path.join(license_dir, "*"))):
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        try:
            with open(real, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            logger.warning("neft: skipping unreadable licence %s (%s)", path, exc)
            continue
        for block in re.split(r"\n\s*\n", text):
            paragraph = " ".join(block.split())
            if _is_prose(paragraph, min_words):
                yield os.path.basename(real), paragraph


def _sample(paragraphs: Iterable[tuple[str, str]], kind: str, max_words: int,
            seed: int) -> list[dict]:
    """Distinct paragraphs in seeded-hash order until max_words: a fixed sample."""
    unique: dict[str, str] = {}
    for origin, text in paragraphs:
        unique.setdefault(text, origin)
    order = sorted(unique, key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).hexdigest())
    records, words = [], 0
    for text in order:
        if words >= max_words:
            break
        words += _words(text)
        records.append({"id": f"{kind}-{hashlib.sha1(text.encode()).hexdigest()[:12]}",
                        "kind": kind, "origin": unique[text], "text": text})
    return records


def harvest_general_text(kind: str, max_words: int = DEFAULT_WORDS, seed: int = 0,
                         man_dir: str = MAN_DIR, license_dir: str = LICENSE_DIR) -> list[dict]:
    """A fixed sample of one general-text set (see the module docstring)."""
    if kind not in GENERAL_SETS:
        raise NeftError(f"unknown general-text set {kind!r}: use one of {', '.join(GENERAL_SETS)}")
    if max_words < 1:
        raise NeftError(f"max_words must be at least 1, not {max_words}")
    if kind == "manpages":
        paragraphs = manpage_paragraphs(man_dir)
        where = man_dir
    else:
        paragraphs = license_paragraphs(license_dir)
        where = license_dir
    records = _sample(paragraphs, kind, max_words, seed)
    if not records:
        raise NeftError(f"no {kind} text found in {where}: this machine has none installed; "
                        "pass another folder or use a set made on another machine")
    return records


def fingerprint(texts: Iterable[str]) -> str:
    """Short hash of a text set: drift scores are comparable only on the same set."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def load_drift_sets(spec: str | Sequence[str] | None) -> dict[str, list[str]]:
    """{set name: texts} for drift. None: this machine's sets, harvested now (a second or
    two). Else JSONL files (`neft data general` writes them) or folders of them, given as
    a list or comma-separated; a set is named by its file name."""

    if spec is None:
        return {kind: [r["text"] for r in harvest_general_text(kind)] for kind in GENERAL_SETS}
    items = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for item in filter(None, items):
        path = os.path.expanduser(item)
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
            if not found:
                raise NeftError(f"drift data folder {item} holds no .jsonl files; make them "
                                "with `neft data general --output_dir " + item + "`")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise NeftError(f"drift data {item} does not exist: pass JSONL files of "
                            "{\"text\": ...} lines or make them with `neft data general`")
    if not files:
        raise NeftError("no drift data given: pass JSONL files or a folder of them")
    sets: dict[str, list[str]] = {}
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in sets:
            raise NeftError(f"two drift sets are named {name!r}: give the files distinct names")
        records = load_records(path)
        texts = [r.get("text") for r in records]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise NeftError(f"{path}: every line needs a non-empty \"text\" field")
        sets[name] = texts
    return sets


# ----------------------------------------------------------------------------- placeholders

_PRINTF = (r"%(?:\d+\$)?[-+#0']*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?"
           r"(?:hh|ll|[hlLqjzZt])?[diouxXeEfFgGaAcCsSpnm]")
_PYTHON_NAMED = r"%\([^()\s]+\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
_BRACE = r"\{[A-Za-z0-9_.\[\]]*(?:![rsa])?(?::[^{}\s]*)?\}"
# Escapes (%%, {{, }}) are matched first so that they are skipped, not half-matched.
_PLACEHOLDER = re.compile(rf"%%|\{{\{{|\}}\}}|{_PYTHON_NAMED}|{_PRINTF}|{_BRACE}")
_ESCAPES = ("%%", "{{", "}}")


def placeholders(text: str) -> list[str]:
    """Format placeholders in text, in order: printf (%s, %-10lu, %1$s, %.*s), Python
    (%(name)s) and brace ({}, {0}, {name}, {name:>8}). %% and {{ }} are escapes, not
    placeholders; a space flag is not recognised, so '50% of' is not a placeholder."""
    return [m for m in _PLACEHOLDER.findall(text) if m not in _ESCAPES]


# ----------------------------------------------------------------------------- gettext

def placeholder_survival(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Share of the references' placeholders that the hypotheses reproduce exactly.

    Per pair, the multiset intersection of placeholders(ref) and placeholders(hyp),
    summed over pairs and divided by the total count in the references. Extra placeholders
    in a hypothesis are not penalised. NaN when the references hold none.
    """
    if len(hyps) != len(refs):
        raise NeftError(f"{len(hyps)} hypotheses but {len(refs)} references: pass one each")
    kept = total = 0
    for hyp, ref in zip(hyps, refs, strict=True):
        wanted = Counter(placeholders(ref))
        total += sum(wanted.values())
        kept += sum((wanted & Counter(placeholders(hyp))).values())
    return kept / total if total else math.nan


GETTEXT_LOCALE_DIR = "/usr/share/locale"


def _words(text: str) -> int:
    """Words with a letter in them, placeholders not counted."""
    return sum(any(c.isalpha() for c in word) for word in _PLACEHOLDER.sub(" ", text).split())


def _placeholder_kinds(text: str) -> Counter:
    """Placeholders without positions: '%2$s und %1$s' matches '%s and %s'."""
    return Counter(re.sub(r"(?<=%)\d+\$|(?<=\*)\d+\$", "", p) for p in placeholders(text))


def _keep_message(source: str, target: str, min_words: int) -> bool:
    return (bool(target) and target != source and "\n" not in source and "\n" not in target
            and _words(source) >= min_words
            and _placeholder_kinds(source) == _placeholder_kinds(target))


def _catalog(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return gettext.GNUTranslations(f)._catalog
    except (OSError, ValueError) as exc:  # bad magic number, or text not in its charset
        logger.warning("neft: skipping unreadable catalog %s (%s)", path, exc)
        return {}


def gettext_languages(locale_dir: str = GETTEXT_LOCALE_DIR) -> list[str]:
    """Locales with .mo catalogs, those with the most catalogs first."""
    counts = Counter(os.path.basename(os.path.dirname(os.path.dirname(path)))
                     for path in glob.glob(os.path.join(locale_dir, "*", "LC_MESSAGES", "*.mo")))
    return sorted(counts, key=lambda lang: (-counts[lang], lang))


def _split_key(source: str) -> str:
    """Near-duplicates ('Cannot open file' / 'cannot open file.') share a key, so a split."""
    return " ".join(source.casefold().split()).rstrip(".:!?… ")


def harvest_gettext(
    target_lang: str,
    locale_dir: str = GETTEXT_LOCALE_DIR,
    min_words: int = 4,
    seed: int = 0,
    dev_size: int = 500,
    test_size: int = 1000,
) -> dict[str, list[dict]]:
    """English -> target_lang pairs from the installed programs' gettext catalogs.

    Reads <locale_dir>/<target_lang>/LC_MESSAGES/*.mo. Keeps singular messages without
    context (no header, plural or msgctxt entries) that are one line after stripping the
    surrounding whitespace, have at least min_words words, a non-empty translation that
    differs from the source, and the same placeholders (positions aside) on both sides.
    Text, placeholders included, is kept as written. One record per source: its most
    common translation, ties to the first seen (catalogs in name order).
    Splits: groups of near-identical sources (see _split_key) are ordered by a seeded
    hash and dealt to test, then dev, until each has its size (a group is never divided),
    then the rest to train. So no source is in two splits and the result is deterministic.
    """
    for name, value in (("min_words", min_words), ("dev_size", dev_size),
                        ("test_size", test_size)):
        if value < 0:
            raise NeftError(f"{name} must be >= 0, got {value}")
    files = sorted(glob.glob(os.path.join(locale_dir, target_lang, "LC_MESSAGES", "*.mo")))
    if not files:
        available = gettext_languages(locale_dir)
        shown = ", ".join(available[:30]) + (f" (+{len(available) - 30} more)"
                                             if len(available) > 30 else "")
        raise NeftError(f"no gettext catalogs for {target_lang!r} in {locale_dir}; languages "
                        f"with the most catalogs: {shown or 'none'}")
    translations: dict[str, Counter] = {}
    domains: dict[tuple[str, str], str] = {}
    for path in files:
        domain = os.path.splitext(os.path.basename(path))[0]
        for msgid, msgstr in _catalog(path).items():
            if not isinstance(msgid, str) or not msgid or "\x04" in msgid:
                continue  # plural entries have tuple keys, the header "", contexts ctx\x04id
            source, target = msgid.strip(), msgstr.strip()
            if _keep_message(source, target, min_words):
                translations.setdefault(source, Counter())[target] += 1
                domains.setdefault((source, target), domain)
    groups: dict[str, list[str]] = {}
    for source in translations:
        groups.setdefault(_split_key(source), []).append(source)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for key in order:
        split = ("test" if len(splits["test"]) < test_size else
                 "dev" if len(splits["dev"]) < dev_size else "train")
        for source in groups[key]:
            target = translations[source].most_common(1)[0][0]
            splits[split].append({
                "id": f"gettext-{target_lang}-{hashlib.sha1(source.encode()).hexdigest()[:12]}",
                "kind": "gettext", "src_lang": "en", "tgt_lang": target_lang,
                "source": source, "target": target, "domain": domains[(source, target)],
            })
    if not splits["train"]:
        raise NeftError(f"only {len(translations)} usable messages for {target_lang!r}, none left "
                        "for train: lower dev_size/test_size or min_words")
    return splits
