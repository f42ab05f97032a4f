"""A progress bar on stderr for the CLI's long commands; stdlib only.

On a terminal it redraws one line in place; into a file or pipe (CI logs) it writes a plain
line at every tenth of the way instead of hundreds of carriage returns.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Call it with ``(done, total)``; ``finish()`` ends the line. ``total`` 0 means unknown."""

    def __init__(self, label: str, unit: str, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.label, self.unit, self.width = label, unit, width
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._shown = -1  # last tenth written when not a terminal
        self._last = (0, 0)

    def __call__(self, done: int, total: int) -> None:
        self._last = (done, total)
        if self._tty:
            self._stream.write("\r" + self._text(done, total))
            self._stream.flush()
        elif total and (tenth := 10 * done // total) > self._shown:
            self._shown = tenth
            self._stream.write(self._text(done, total) + "\n")

    def note(self, line: str) -> None:
        """A line of its own above the bar (why it waits): on a terminal the bar is drawn
        again under it."""
        if self._tty:
            self._stream.write("\r\033[K" + line + "\n" + self._text(*self._last))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        done, total = self._last
        if self._tty:
            self._stream.write("\r" + self._text(done, total) + "\n")
        elif self._shown < 10:
            self._stream.write(self._text(done, total) + "\n")
        self._stream.flush()

    def _text(self, done: int, total: int) -> str:
        if not total:
            return f"{self.label} {done:,} {self.unit}"
        frac = min(done / total, 1.0)
        bar = "#" * round(frac * self.width)
        return (f"{self.label} [{bar:<{self.width}}] {frac:4.0%} "
                f"{done:,}/{total:,} {self.unit}")
