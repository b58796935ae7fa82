"""CLI command(s) for this pipeline stage (placeholder until the stage lands)."""

from agsevnet.cli import app  # noqa: F401
