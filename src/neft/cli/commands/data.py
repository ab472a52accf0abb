"""`neft data`: prepare training and evaluation data: gettext catalogs (translation pairs)
and general English text (for drift)."""

from __future__ import annotations

import argparse
import json
import os

from ...core.io import check_output_folder
from ...data.records import write_jsonl
from ...data.sources import (
    DEFAULT_WORDS,
    GENERAL_SETS,
    GETTEXT_LOCALE_DIR,
    LICENSE_DIR,
    MAN_DIR,
    fingerprint,
    harvest_general_text,
    harvest_gettext,
    placeholders,
)
from ...errors import NeftError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training and evaluation data",
                                   description="Prepare training and evaluation data.")
    sources = parser.add_subparsers(dest="data_command", metavar="SOURCE", required=True)
    gettext = sources.add_parser(
        "gettext", help="English->LANG pairs from the installed gettext catalogs",
        description="Write train/dev/test.jsonl of English->LANG software messages harvested "
                    "from <locale_dir>/<LANG>/LC_MESSAGES/*.mo. No source is in two splits.")
    gettext.add_argument("--target", required=True, help="locale to translate into: de, fr, zh_CN")
    gettext.add_argument("--output_dir", help="default: data/gettext-en-<target>")
    gettext.add_argument("--locale_dir", default=GETTEXT_LOCALE_DIR)
    gettext.add_argument("--dev_size", type=int, default=500)
    gettext.add_argument("--test_size", type=int, default=1000)
    gettext.add_argument("--min_words", type=int, default=4, help="fewest words in a source")
    gettext.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    gettext.add_argument("--overwrite", action="store_true",
                         help="replace split files in output_dir that hold other records")
    gettext.set_defaults(func=run)
    general = sources.add_parser(
        "general", help="general English text for drift (manual pages, licences)",
        description="Write <output_dir>/manpages.jsonl (prose of the English manual pages' "
                    "DESCRIPTION sections) and licenses.jsonl (paragraphs of "
                    "/usr/share/common-licenses): fixed samples of real English that no task "
                    "trains on, for `neft eval --metrics drift --drift_data DIR`.")
    general.add_argument("--output_dir", default=os.path.join("data", "general"))
    general.add_argument("--sets", default=",".join(GENERAL_SETS),
                         help=f"comma-separated: {', '.join(GENERAL_SETS)}")
    general.add_argument("--max_words", type=int, default=DEFAULT_WORDS,
                         help="words per set (about 1.3 tokens each)")
    general.add_argument("--seed", type=int, default=0, help="seed of the sampling hash")
    general.add_argument("--man_dir", default=MAN_DIR)
    general.add_argument("--license_dir", default=LICENSE_DIR)
    general.add_argument("--overwrite", action="store_true",
                         help="replace set files in output_dir that hold other records")
    general.set_defaults(func=run_general)


def check_output(output_dir: str, splits: dict[str, list[dict]], overwrite: bool) -> None:
    """Refuse, before writing any, to replace <name>.jsonl files holding other records (the
    user's own data, or another language's): rerunning the same harvest is harmless."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NeftError(f"output_dir {output_dir} is a file; pass a folder")
    if overwrite:
        return
    for split, records in splits.items():
        path = os.path.join(output_dir, f"{split}.jsonl")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            same = handle.read() == "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                             for r in records)
        if not same:
            raise NeftError(f"{path} already exists with other records; pass --overwrite to "
                            "replace it or choose another --output_dir")


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.output_dir or os.path.join("data", f"gettext-en-{args.target}"))
    splits = harvest_gettext(args.target, locale_dir=args.locale_dir, min_words=args.min_words,
                             seed=args.seed, dev_size=args.dev_size, test_size=args.test_size)
    output_dir = args.output_dir or os.path.join("data", f"gettext-en-{args.target}")
    check_output(output_dir, splits, args.overwrite)
    for split, records in splits.items():
        write_jsonl(os.path.join(output_dir, f"{split}.jsonl"), records)
    total = sum(len(records) for records in splits.values())
    with_placeholders = sum(bool(placeholders(r["source"]))
                            for records in splits.values() for r in records)
    counts = "  ".join(f"{split} {len(records):,}" for split, records in splits.items())
    print(f"en->{args.target}: {counts} ({with_placeholders / total:.0%} with placeholders) "
          f"-> {output_dir}/{{train,dev,test}}.jsonl")
    return 0


def run_general(args: argparse.Namespace) -> int:
    check_output_folder(args.output_dir)
    kinds = [k.strip() for k in args.sets.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in GENERAL_SETS]
    if unknown or not kinds:
        raise NeftError(f"unknown set {', '.join(unknown) or '(none given)'}: use a comma-"
                        f"separated list of {', '.join(GENERAL_SETS)}")
    sets = {kind: harvest_general_text(kind, max_words=args.max_words, seed=args.seed,
                                       man_dir=args.man_dir, license_dir=args.license_dir)
            for kind in kinds}
    check_output(args.output_dir, sets, args.overwrite)
    for kind, records in sets.items():
        write_jsonl(os.path.join(args.output_dir, f"{kind}.jsonl"), records)
        words = sum(len(r["text"].split()) for r in records)
        print(f"{kind}: {len(records):,} paragraphs, {words:,} words, set "
              f"{fingerprint(r['text'] for r in records)} -> "
              f"{os.path.join(args.output_dir, kind + '.jsonl')}")
    return 0
