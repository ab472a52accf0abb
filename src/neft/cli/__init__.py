"""The `neft` command (main) and its subcommands (commands/)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
