# -*- test-case-name: tests.unit.test_client,tests.integration.test_client -*-
"""
How a transfer tells how far it is: L{IProgress}, with nothing shown
(L{NoProgress}, for pipes, scripts and the library's default) or a bar with
the rate and the time left on a terminal (L{TerminalProgress}, on tqdm).
"""

from __future__ import annotations

import os
from typing import NoReturn, Protocol, TextIO

from tqdm import tqdm


class IProgress(Protocol):
    """What a transfer reports as it goes: the bytes done, out of C{total}."""

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        """A transfer of C{total} bytes begins, C{done} of them already there (a resume)."""

    def update(self, done: int) -> None:
        """C{done} bytes are there now (fewer than before after a restart)."""

    def finish(self) -> None:
        """The transfer is over, done or not."""


class NoProgress:
    """Shows nothing."""

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalProgress:
    """A bar on C{stream} (a terminal), with bytes, rate and time left."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm[NoReturn] | None = None

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        self.finish()
        columns, lines = _size(self._stream)
        self._bar = tqdm(
            desc=label,
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            ncols=columns,
            nrows=lines,
            leave=True,
        )

    def update(self, done: int) -> None:
        if self._bar is None:
            return
        if done >= self._bar.n:
            self._bar.update(done - self._bar.n)
        else:
            self._bar.reset(self._bar.total)
            self._bar.update(done)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _size(stream: TextIO) -> tuple[int, int]:
    """
    The terminal's columns and lines; 80 by 24 if it does not say (a new
    pseudo-terminal says 0 by 0, where tqdm would draw nothing).
    """
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return (80, 24)
    return (size.columns or 80, size.lines or 24)
