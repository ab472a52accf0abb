"""Output files: checked before any work, written atomically, with ordinary permissions,
and output folders locked against a second process.

Every command that writes goes through here, so that one rule holds everywhere: an
existing output is replaced only with ``--overwrite``, an unwritable path fails before
minutes of work, an interrupted write never leaves a half-written file (a temp file beside
the target, then a rename), and what is written gets the user's umask (temp files and
safetensors are created private, 0600, which a result must not be).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..errors import NeftError


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_json(path: str, data: Any, *, allow_nan: bool = False) -> None:
    """Write ``data`` as indented UTF-8 JSON. Values JSON cannot hold are written with
    ``str``; NaN is refused unless ``allow_nan`` (a training log may hold a NaN loss)."""
    with atomic_text(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, allow_nan=allow_nan,
                  default=str)
        handle.write("\n")


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike) -> Iterator[Any]:
    """A UTF-8 text handle on a temp file beside ``path``, renamed onto it on success,
    removed on any failure; the file gets the user's umask."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` (ending in ``suffix``, for writers that go by the
    extension) for any writer; on success it is published onto ``path`` (umask, rename),
    on any failure removed. The one way neft writes a file that others may read."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110, **savefig: Any) -> None:
    """A matplotlib figure as a PNG, atomically (never a half-written file); closed after."""
    import matplotlib.pyplot as plt  # matplotlib is slow to import: only when plotting

    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, **savefig)
    finally:
        plt.close(fig)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """safetensors.save_file to a temporary name in the same folder, then rename."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise NeftError(f"{path} is a folder; give a file name such as "
                        f"{os.path.join(path, 'neurons.safetensors')}")
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)  # made 0600; publish applies the umask
    except SafetensorError as exc:  # e.g. an unwritable folder or a full disk
        raise NeftError(f"cannot write {path} ({str(exc).strip().splitlines()[0]}); check "
                        "that its folder is writable and has space") from exc



def publish(tmp: str, path: str) -> None:
    """Give a finished temp file (or folder tree) the user's umask, then rename it onto
    ``path``. mkstemp, mkdtemp and safetensors make everything private."""
    apply_umask(tmp)
    os.replace(tmp, path)


def apply_umask(path: str | os.PathLike) -> None:
    """chmod a file, or a folder and everything in it, as if created under the umask."""
    mask = _umask()
    path = os.fspath(path)
    if not os.path.isdir(path) or os.path.islink(path):
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- checks


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """The nearest existing folder above ``path`` must be a writable folder: checked before
    the work, so that it is not lost to a bad path afterwards."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NeftError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NeftError(f"cannot write {what} {path}: folder {parent} is not writable; choose "
                        "another path or fix its permissions")


def check_output_file(path: str | os.PathLike, overwrite: bool, what: str = "output",
                      example: str = "out.json") -> None:
    """One output file, before any work: not a folder, not an existing file unless
    ``overwrite`` (a user's file, or a result that took an hour, is never replaced without
    being asked), and in a writable place."""
    path = os.fspath(path)
    if not path:
        raise NeftError(f"{what} is empty; give a file name")
    if os.path.isdir(path):
        raise NeftError(f"{what} {path} is a folder; give a file name such as "
                        f"{os.path.join(path, example)}")
    if os.path.lexists(path) and not overwrite:
        raise NeftError(f"{what} {path} already exists; pass --overwrite to replace it or "
                        "choose another name")
    check_writable(path, what)


def check_output_files(paths: Iterable[str], overwrite: bool, what: str = "output") -> None:
    """Several outputs written together (e.g. <name>.json and <name>.png): all or none."""
    for path in paths:
        check_output_file(path, overwrite, what)


def check_output_folder(folder: str | os.PathLike, what: str = "output_dir") -> None:
    """A folder the outputs go into: not a file, and creatable or writable."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NeftError(f"{what} {folder} is a file; pass a folder")
    if os.path.isdir(folder):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise NeftError(f"cannot write into {what} {folder}: it is not writable; choose "
                            "another folder or fix its permissions")
    else:
        check_writable(folder, what)


# ----------------------------------------------------------------------------- locks


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, busy: str, name: str = ".neft.lock",
                remove: bool = True) -> Iterator[int]:
    """Hold an exclusive lock on ``folder`` (made if missing) until the block ends, so
    that two processes never write into one output folder; ``busy`` is the one-line error
    for the second. Yields the lock's file descriptor (children may inherit it).

    The lock is ``flock`` on ``<folder>/<name>``: the kernel releases it when the process
    dies, so a killed run never leaves a stale lock. With ``remove`` the lock file goes
    when released; a process that opened it just before is told to try again by the
    inode check. A folder this call made is removed again if it holds nothing else (bad
    input leaves nothing behind).
    """
    folder = os.fspath(folder)
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NeftError(busy) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it between our open and flock: lock the new one
    try:
        yield fd
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
        os.close(fd)
        if made and os.path.isdir(folder) and not os.listdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


def is_lock_file(name: str) -> bool:
    """Lock files are not a run's contents (an output folder holding only one is empty)."""
    return name == ".neft.lock"


def clear_folder(folder: str, keep: Callable[[str], bool] = is_lock_file) -> None:
    """Remove everything in ``folder`` but the entries whose name ``keep`` accepts (by
    default the lock this process may hold on it)."""
    for name in os.listdir(folder):
        if keep(name):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


# ----------------------------------------------------------------------------- folders


def check_output_dir(output_dir: str, overwrite: bool, inputs: list[str], *,
                     marker: str, what: str, verb: str, kind: str) -> None:
    """Where a written folder (a merged model, an exported adapter) may go. --overwrite
    replaces an earlier folder that this kind of command wrote (it holds ``marker``), never
    an input being read or a folder holding one, nor a folder of other files (nothing is
    lost)."""
    for source in inputs:
        if os.path.exists(os.path.expanduser(source)) and is_within(source, output_dir):
            raise NeftError(f"output_dir {output_dir} holds {source}, which is being {verb} "
                            f"from; write the {what} to a new folder")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NeftError(f"output_dir {output_dir} is a file; pass a folder for the {what}")
    check_writable(os.path.abspath(output_dir), "output_dir")  # its parent: staged beside it
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise NeftError(f"output_dir {output_dir} is not empty; pass --overwrite to "
                            "replace it")
        if not os.path.isfile(os.path.join(output_dir, marker)):
            raise NeftError(f"output_dir {output_dir} is not {kind}; "
                            f"--overwrite replaces only an earlier {what}: choose another "
                            "folder")


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
    path = os.path.realpath(os.path.expanduser(path))
    folder = os.path.realpath(os.path.expanduser(folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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
        apply_umask(staging)  # mkdtemp and safetensors make everything private
        old = f"{staging}.old"
        if os.path.exists(output_dir):
            os.replace(output_dir, old)  # set aside, not deleted, until the new one is in
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str, text: str) -> None:
    """Write UTF-8 text atomically (temp file beside it, then rename)."""
    with atomic_text(path) as handle:
        handle.write(text)
