"""Writing result files atomically: a temp file beside the target, then a rename, so that
an interrupted run never leaves a half-written file where a finished one is expected."""

from __future__ import annotations

import json
import os
import tempfile
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
