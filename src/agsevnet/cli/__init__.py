"""The ``agsevnet`` command (Typer). Thin: every command parses options and calls into a pipeline module.

Commands are defined in the submodules below, one per pipeline stage; heavy imports (torch, MONAI) happen
inside the commands so that ``agsevnet --help`` is instant.

Errors: an :class:`agsevnet.errors.AgsevnetError` is printed as ``error: <file>: <what is wrong>`` and the
exit code is 1; ``--debug`` (or ``AGSEVNET_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from agsevnet import __version__
from agsevnet.errors import AgsevnetError

app = typer.Typer(
    name="agsevnet",
    help="AGSE-VNet brain-tumour segmentation: check, preprocess, train, predict, evaluate, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": os.environ.get("AGSEVNET_DEBUG", "") not in ("", "0")}


def debug_enabled() -> bool:
    return _state["debug"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agsevnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        _state["debug"] = True


# Register the commands (each module adds its own to `app`).
# in the order `agsevnet --help` lists them: the main job first, then the pipeline
from agsevnet.cli import demo, phantom, prepare, check, preprocess, model, train, crossval, predict, export, models, evaluate, robustness  # noqa: E402,F401,I001


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Typer runs in standalone mode (usage errors: exit 2; ``typer.Exit(code)``: that code); any other exception
    reaches this function and becomes one line on stderr and exit code 1, or a traceback with ``--debug``.
    """
    if argv is None:
        argv = sys.argv[1:]
    if "--debug" in argv:
        _state["debug"] = True
    try:
        app(args=argv, prog_name="agsevnet")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except AgsevnetError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if _state["debug"]:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
