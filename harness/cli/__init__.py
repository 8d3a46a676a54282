"""The command line: ``commands`` (the subcommands as a table of small classes, each parsing and
calling one library function) and ``output`` (what ``query``, ``status``, ``compact`` and
``doctor`` print). Nothing heavy is imported here."""

from harness.cli.commands import main

__all__ = ["main"]
