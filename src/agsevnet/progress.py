"""Progress reporting for training, preprocessing and prediction: a tqdm bar on a terminal, plain lines in logs.

A tqdm bar redraws itself with carriage returns; written to a file or a CI log (not a terminal) every redraw
becomes a partial line, thousands of them over a long run. :func:`progress_bar` therefore returns a tqdm bar
only when the stream is a terminal (or in a Jupyter kernel, where tqdm draws a widget), and otherwise a
:class:`LineProgress` that prints one complete line each time another ``every`` percent is done (default
:data:`DEFAULT_EVERY`, or ``AGSEVNET_PROGRESS_EVERY``), and at the end. Both offer the subset of tqdm's
interface agsevnet uses: iteration, ``update``, ``set_postfix_str``, ``write``, ``close`` and ``with``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

DEFAULT_EVERY = 5.0
"""Percent of the work between two lines of :class:`LineProgress`."""

_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _every() -> float:
    value = os.environ.get("AGSEVNET_PROGRESS_EVERY")
    try:
        every = float(value) if value else DEFAULT_EVERY
    except ValueError:
        every = DEFAULT_EVERY
    return every if every > 0 else DEFAULT_EVERY


class LineProgress:
    """A progress report of whole lines: one each time another ``every`` percent of ``total`` is done (and one
    at the end); for streams that are not terminals. Without a ``total`` it prints every ``100 / every`` items."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, file: IO[str] | None = None, every: float | None = None,
                 **_: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.disable = bool(disable)
        self.file = file
        self.every = float(every) if every else _every()
        self.postfix = ""
        self.start = time.monotonic()
        self._printed_at: int | None = None
        self._next = self._next_mark(self.n)
        self.closed = False

    def _stream(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def _next_mark(self, n: int) -> int:
        """The count at which the next line is due."""
        if not self.total:
            step = max(1, int(round(100 / self.every)))
            return (n // step + 1) * step
        step = self.total * self.every / 100.0
        k = int(n / step) + 1
        return min(self.total, max(n + 1, int(-(-k * step // 1))))

    def line(self) -> str:
        """The current progress as one line (tqdm's own formatting)."""
        from tqdm import tqdm

        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        postfix = f", {self.postfix}" if self.postfix else ""
        if self.total:
            return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, rate=rate,
                                     postfix=postfix, bar_format=_FORMAT, initial=self.initial)
        return f"{self.desc}: {self.n} {self.unit} [{tqdm.format_interval(elapsed)}{postfix}]"

    def _emit(self) -> None:
        print(self.line(), file=self._stream(), flush=True)
        self._printed_at = self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if not self.disable and self.n >= self._next:
            self._emit()
            self._next = self._next_mark(self.n)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = str(desc)

    def write(self, s: str, file: IO[str] | None = None, end: str = "\n") -> None:
        """Print a message (to stdout unless ``file`` is given, like ``tqdm.write``)."""
        print(s, file=file if file is not None else sys.stdout, end=end, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self._printed_at != self.n and self.n > self.initial:
            self._emit()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, file: IO[str] | None = None, every: float | None = None,
                 **tqdm_options: Any) -> Any:
    """A tqdm bar when ``file`` (default: stderr) is a terminal or in a Jupyter kernel, else a
    :class:`LineProgress` (a line every ``every`` percent); ``tqdm_options`` (``leave``, ``smoothing``...) go to
    tqdm only."""
    stream = file if file is not None else sys.stderr
    if disable or not (_is_terminal(stream) or _in_notebook()):
        return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                            file=file, every=every)
    from tqdm.auto import tqdm

    tqdm_options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, **tqdm_options)
