"""The `python -m core` command for one hybrid; its arguments and handler live together, apart from core/cli.py."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Registers the command's subparser on `sub` (argparse's subparsers)."""
