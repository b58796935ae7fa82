"""Helpers shared by test modules (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

from agsevnet.cli import main


def run_cli(argv: list[str]) -> int:
    """Run ``agsevnet ARGV`` in this process and return its exit code (0 when it returns normally)."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
