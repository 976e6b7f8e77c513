"""How long-running work reports stages and byte progress, without knowing who listens.

The daemon's operations implement :class:`Reporter`; pure builders take one and call it. A builder
that is cancelled simply sees ``asyncio.CancelledError`` at its next await.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Receives stage changes and progress of one long operation."""

    def stage(self, name: str) -> None:
        """A new stage began (e.g. ``"downloading linux-image"``)."""

    def progress(self, done: int, total: int | None = None) -> None:
        """Units (usually bytes) done in the current stage; ``total`` when known."""

    def log(self, message: str) -> None:
        """A line worth keeping in the operation's history (decisions, timings)."""

    def note(self, message: str) -> None:
        """A line the user should see when the operation ends (the VMM chosen, a fallback, a warning)."""


class NullReporter:
    """A Reporter that drops everything (for tests and one-shot calls)."""

    def stage(self, name: str) -> None:
        pass

    def progress(self, done: int, total: int | None = None) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        self.log(message)


class RecordingReporter(NullReporter):
    """A Reporter that remembers stages and log lines (tests assert on them)."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.lines: list[str] = []

    def stage(self, name: str) -> None:
        self.stages.append(name)

    def log(self, message: str) -> None:
        self.lines.append(message)
