"""Records: task fields, and the readers of files (jsonl, json, csv, tsv, parquet) and
hub datasets behind ``load_records``; ``write_jsonl``."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..core import loading
from ..core.io import atomic_text
from ..errors import NeftError

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- records

TASK_FIELDS = {
    "translation": ("source", "target"),
    "summarization": ("source", "target"),
    "instruction": ("instruction", "output"),  # "input" is optional
    "completion": ("prompt", "completion"),
}
TASKS = tuple(TASK_FIELDS)
FILE_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise NeftError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def _field(record: Mapping[str, Any], name: str) -> Any:
    """record[name], where name may be a dotted path into nested dicts ('translation.de')."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _apply_field_map(record: dict, field_map: Mapping[str, str], where: str) -> dict:
    renamed = {key: value for key, value in record.items() if key not in field_map}
    for old, new in field_map.items():
        try:
            renamed[new] = _field(record, old)
        except KeyError:
            raise NeftError(f"{where}: no field {old!r} to map to {new!r}; fields present: "
                            f"{', '.join(record) or 'none'}") from None
    return renamed


def require_fields(record: Mapping[str, Any], task: str, where: str) -> None:
    for name in TASK_FIELDS[task]:
        value = record.get(name)
        if value is None:
            raise NeftError(f"{where}: missing field {name!r} for task {task}; fields present: "
                            f"{', '.join(record) or 'none'} (name yours with --source_field / "
                            "--target_field, or field_map in Python, e.g. {'de': 'target'})")
        if not isinstance(value, str):
            raise NeftError(f"{where}: field {name!r} is {type(value).__name__}, expected text")
        if not value.strip():
            raise NeftError(f"{where}: field {name!r} is empty; fill it in or remove that "
                            "record (an empty text trains or scores nothing)")


def _looks_like_file(source: str) -> bool:
    """Hub dataset ids are 'name' or 'org/name'; paths and file names are local."""
    return (source.startswith((".", "/", "~")) or source.lower().endswith(FILE_FORMATS)
            or source.count("/") > 1)


def _read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise NeftError(f"{path}:{lineno}: malformed JSON ({exc.msg}, column "
                                f"{exc.colno}); fix or delete that line") from None


def _read_json(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as exc:
            raise NeftError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json file "
                            "must hold one list of objects (use .jsonl for one a line)") from None
    if not isinstance(rows, list):
        raise NeftError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _read_delimited(path: str, delimiter: str) -> Iterator[tuple[str, Any]]:
    """CSV with its quoting; TSV as the format defines it, a tab between fields and no
    quoting, so that the quotes of a sentence stay in it (as in OPUS and Tatoeba files)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _read_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq  # a dependency of datasets

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise NeftError(f"{path} is not a readable Parquet file ({exc}); it may be truncated "
                        "or another format: check the file") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}[{i}]", row


def _read_file(path: str) -> Iterator[tuple[str, Any]]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".json":
        return _read_json(path)
    if ext in (".csv", ".tsv"):
        return _read_delimited(path, "\t" if ext == ".tsv" else ",")
    if ext == ".parquet":
        return _read_parquet(path)
    raise NeftError(f"{path}: unknown data file type {ext or '(none)'!r}; use one of "
                    f"{', '.join(FILE_FORMATS)}")


def _split_file(folder: str, split: str | None) -> str:
    """<folder>/<split>.<ext>: the layout neft data and the DDTP data use."""
    if split is None:
        raise NeftError(f"{folder} is a directory: pass a split (e.g. train) to read "
                        f"{folder}/train.jsonl")
    found = [os.path.join(folder, split + ext) for ext in FILE_FORMATS
             if os.path.isfile(os.path.join(folder, split + ext))]
    if not found:
        raise NeftError(f"{folder} has no {split}.jsonl (or .json/.csv/.tsv/.parquet); "
                        "pass an existing split or a file path")
    return found[0]


def split_fingerprints(source: str, splits: Iterable[str | None]) -> dict[str, str] | None:
    """{split: hash of its file's bytes} for a local data folder, so that a run made on
    other contents of the same path is not taken for a current one; None for anything else
    (a hub dataset is versioned by the hub). Splits without a file are left out (reading
    them fails in one line elsewhere)."""
    import hashlib

    folder = os.path.expanduser(source)
    if not os.path.isdir(folder):
        return None
    prints = {}
    for split in dict.fromkeys(s for s in splits if s):
        try:
            path = _split_file(folder, split)
        except NeftError:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        prints[split] = digest.hexdigest()[:16]
    return prints


def _read_hub(name: str, split: str | None) -> Iterator[tuple[str, Any]]:
    """A Hugging Face dataset, 'name' or 'name:config' (e.g. 'wmt16:de-en')."""
    if split is None:
        raise NeftError(f"{name!r} is not a local file, so it is read as a Hugging Face dataset, "
                        "which needs a split: pass split='train' (--split train)")

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and not loading.hub_reachable():  # else a minute of retries, then this
        raise NeftError(f"{name!r} is not a local file or folder, and the Hugging Face Hub "
                        "cannot be reached to load it as a dataset: check the path (a local "
                        f"one needs a form like ./{name} or {name}.jsonl)")
    import datasets

    repo, _, config = name.partition(":")
    try:
        rows = datasets.load_dataset(repo, config or None, split=split)
    except (OSError, ConnectionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeftError(f"cannot load {name!r} as a local file or a Hugging Face dataset "
                        f"({reason}); check the path, or the dataset name and split") from None
    for i, row in enumerate(rows):
        yield f"{name}[{split}][{i}]", row


def load_records(
    source: str,
    split: str | None = None,
    field_map: Mapping[str, str] | None = None,
    limit: int | None = None,
    task: str | None = None,
) -> list[dict]:
    """Records from a local file (by extension), a folder of <split> files, or a hub dataset.

    field_map renames fields to the standard names, like datasets' rename_columns:
    {your_field: standard_field}; your_field may be a dotted path ('translation.de').
    With a task, every record is checked for that task's fields. limit keeps the first N.
    """
    if task is not None:
        check_choice(task, TASKS, "task")
    if limit is not None and limit < 1:
        raise NeftError(f"a record limit of {limit} leaves no data; pass at least 1, or no "
                        "limit to use every record")
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        path = _split_file(path, split)
    if os.path.isfile(path):
        rows = _read_file(path)
    elif _looks_like_file(source):
        raise NeftError(f"data file {source!r} does not exist: check the path")
    else:
        rows = _read_hub(source, split)
    records = []
    try:
        for where, row in rows:
            if limit is not None and len(records) >= limit:
                break
            if not isinstance(row, Mapping):
                raise NeftError(f"{where}: expected an object with named fields, got "
                                f"{type(row).__name__}")
            record = _apply_field_map(dict(row), field_map or {}, where)
            if task is not None:
                require_fields(record, task, where)
            records.append(record)
    except UnicodeDecodeError as exc:
        raise NeftError(f"{source}: not UTF-8 text ({exc.reason}); re-encode it as UTF-8") from None
    if not records:
        where = source if os.path.isfile(path) or not split else f"{source} [{split}]"
        raise NeftError(f"{where} has no records: give it at least one (one JSON object a line "
                        "in .jsonl, a header and rows in .csv)")
    return records


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line, written to a temp file then renamed: never a half file."""
    with atomic_text(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
