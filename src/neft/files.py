"""Writing result files atomically: a temp file beside the target, then a rename, so that
an interrupted run never leaves a half-written file where a finished one is expected."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def write_json(path: str, data: Any, *, allow_nan: bool = False) -> None:
    """Write ``data`` as indented UTF-8 JSON. Values JSON cannot hold are written with
    ``str``; NaN is refused unless ``allow_nan`` (a training log may hold a NaN loss)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, allow_nan=allow_nan,
                      default=str)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a result is not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(output_dir: str, overwrite: bool, inputs: list[str], *,
                     marker: str = "config.json", what: str = "merged model",
                     verb: str = "merged", kind: str = "model") -> None:
    """Where a written folder (a merged model, an exported adapter) may go. --overwrite
    replaces an earlier folder of the same kind (it holds ``marker``), never an input being
    read, nor a folder of other files (nothing is lost)."""
    from .errors import NeftError

    for source in inputs:
        if os.path.isdir(os.path.expanduser(source)) and _same_folder(output_dir, source):
            raise NeftError(f"output_dir {output_dir} is the folder being {verb} from; "
                            f"write the {what} to a new folder")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NeftError(f"output_dir {output_dir} is a file; pass a folder for the {what}")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise NeftError(f"output_dir {output_dir} is not empty; pass --overwrite to "
                            "replace it")
        if not os.path.isfile(os.path.join(output_dir, marker)):
            raise NeftError(f"output_dir {output_dir} holds files that are not a {kind}; "
                            f"--overwrite replaces only an earlier {what}: choose another "
                            "folder")


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


@contextlib.contextmanager
def staged_folder(output_dir: str) -> Iterator[str]:
    """Yield a temporary folder beside ``output_dir``; when the block succeeds it takes
    ``output_dir``'s place (an old one is set aside, then removed), else it is removed:
    a reader never sees a half-written folder."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.",
                               dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
        old = f"{staging}.old"
        if os.path.exists(output_dir):
            os.replace(output_dir, old)  # set aside, not deleted, until the new one is in
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Write UTF-8 text atomically (temp file beside it, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
