"""The `neft` command: one subcommand per module in neft.cli.commands.

Every subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed args and returning an exit status. Bad input
(NeftError, a usage error, or a file the system refuses) is one line on stderr and exit
status 2; ``--debug`` (before or after the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from ..errors import NeftError

COMMANDS = ("data", "select", "train", "eval", "merge", "export", "compare", "analyze", "bench",
            "demo")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line: argparse would print the whole usage first (30 lines for
    `neft train`), burying the one line that says what is wrong."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `--learning_rate -1e-4` is a value, not an option (argparse knows only -1 and -.5).
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Console(logging.Handler):
    """The library reports through logging; the command prints: INFO lines (what a run
    did) to stdout, warnings to stderr, as plain lines. The stream is looked up at each
    line, so a redirected sys.stdout (pytest's capsys, a notebook) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - as logging.StreamHandler does
            self.handleError(record)


def configure_logging() -> None:
    """neft's loggers print their lines under the CLI (once per process)."""
    logger = logging.getLogger("neft")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="neft", description="Neuron-level fine-tuning (NeFT).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"neft.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"neft.cli.commands.{name}":
                raise
            continue  # command not built yet
        module.register(subparsers)
    for sub in subparsers.choices.values():
        _add_debug(sub)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """`neft train --debug ...` is where users put it; SUPPRESS keeps `neft --debug train`.
    Nested commands (`neft data gettext`) get it too."""
    try:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks on errors")
    except argparse.ArgumentError:
        pass  # the command has its own --debug
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_debug(nested)


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  extras: list[str]) -> NoReturn:
    """Unknown flags fail in one line, with the closest known flag: typos are not ignored."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = subparsers.choices.get(getattr(args, "command", None) or "", parser)
    known = [s for a in sub._actions for s in a.option_strings]
    hint = ""
    flag = next((e.split("=")[0] for e in extras if e.startswith("-")), None)
    if flag:
        close = difflib.get_close_matches(flag, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
    sub.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM runs the same clean-up as Ctrl-C (temporary files removed), not a bare exit.
    `neft train` installs its own handler while training (checkpoint, then stop)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _os_error(exc: OSError) -> str:
    """'Permission denied: /x' rather than '[Errno 13] Permission denied: '/x''."""
    if exc.strerror:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{exc.strerror}: {where}" if where else exc.strerror
    return _first_line(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unrecognized(parser, args, extras)
    name = f"neft {args.command}"
    configure_logging()
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except NeftError as exc:
        if args.debug:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no file was left half-written", file=sys.stderr)
        return 130
    except OSError as exc:  # a path the system refuses: missing, a folder, no permission, full
        if args.debug:
            raise
        print(f"{name}: error: {_os_error(exc)}; check the path and its permissions "
              "(--debug shows where)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug, still one line; --debug has the traceback
        if args.debug:
            raise
        print(f"{name}: unexpected error: {type(exc).__name__}: {_first_line(exc)} (rerun with "
              "--debug for the traceback and please report it)", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Close a torch.distributed group that Trainer or accelerate opened, so that gloo's
    threads are joined now rather than torn down at interpreter exit (which can abort a
    rank with 'terminate called without an active exception')."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to check
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
