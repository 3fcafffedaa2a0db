"""Where the demo draws: a refreshing table on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

__all__ = ["Screen"]


class Screen:
    """On a terminal, `show` redraws the whole screen; piped or redirected, it prints the
    status line every `plain_every` seconds, so logs and tests get readable text."""

    def __init__(self, out: TextIO, plain_every: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self._plain_every = plain_every
        self._last_plain = float("-inf")

    @property
    def width(self) -> int:
        """Columns to draw in: the terminal's, or 100 when not on one."""
        return shutil.get_terminal_size().columns if self.tty else 100

    def show(self, header: list[str], body: list[str], status: str) -> None:
        """Redraw `header`, `status` and as much of `body` as fits; off a terminal print only
        `status`, at most once every `plain_every` seconds.
        """
        if self.tty:
            size = shutil.get_terminal_size()
            lines = [*header, status, "", *body][: max(1, size.lines - 1)]
            text = "\n".join(line[: size.columns] for line in lines)
            self.out.write("\x1b[H\x1b[2J" + text + "\n")
            self.out.flush()
        elif time.monotonic() - self._last_plain >= self._plain_every:
            self._last_plain = time.monotonic()
            self.message(status)

    def message(self, text: str) -> None:
        """Print `text` as a line of its own, now."""
        print(text, file=self.out, flush=True)
