"""Progress of a long operation: periodic log lines, and a deadline that follows progress.

Long operations (restore, savepoint create and seed, dead-letter replay) must neither die on a
fixed deadline when they are merely large, nor hang silently when they are stuck. So a
:class:`Progress` fails only when *no* progress was made for ``stall_s`` seconds, and logs a
line every ``every_s`` seconds with records, bytes, rate and, where the total is known, what
remains and an estimate of when it ends.

A leaf module: structlog and the errors module only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from streamproc.errors import StreamprocError

log = structlog.get_logger(__name__)


class Stalled(StreamprocError):
    """A long operation made no progress for its stall timeout (an expected failure: commands
    report it in one line, never with a traceback)."""


class Progress:
    """Counts records and bytes of one operation named ``event`` (e.g. ``restore``).

    Call :meth:`advance` whenever records were handled (also with 0 while waiting) and
    :meth:`done` at the end. ``total`` (records), when known, adds ``remaining`` and ``eta_s``
    to each line. ``fields`` are added to every line (e.g. the app id)."""

    def __init__(self, event: str, *, total: int | None = None, every_s: float = 5.0,
                 stall_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 logger: Any = None, **fields: Any) -> None:
        self.event = event
        self.total = total
        self.every_s = every_s
        self.stall_s = stall_s
        self._clock = clock
        self._log = logger if logger is not None else log
        self.fields = fields
        self.records = 0
        self.bytes = 0
        now = clock()
        self.started = now
        self._last_progress = now
        self._next_line = now + every_s
        self.lines = 0  # progress lines logged (tests assert on it)

    def advance(self, records: int = 0, nbytes: int = 0) -> None:
        """Add what was done since the last call; log a line when one is due; raise
        :class:`Stalled` when nothing was done for ``stall_s`` seconds."""
        now = self._clock()
        if records or nbytes:
            self.records += records
            self.bytes += nbytes
            self._last_progress = now
        elif now - self._last_progress >= self.stall_s:
            raise Stalled(f"{self.event}: no progress for {self.stall_s:g} s "
                          f"(after {self.records} records, {self.bytes} bytes)")
        if now >= self._next_line:
            self._next_line = now + self.every_s
            self.lines += 1
            self._log.info(f"{self.event}.progress", **self.figures(now))

    def set_total(self, total: int | None) -> None:
        self.total = total

    def figures(self, now: float | None = None) -> dict[str, Any]:
        """records, bytes, seconds, rate and (with a total) remaining and eta_s."""
        now = self._clock() if now is None else now
        secs = max(now - self.started, 1e-9)
        rate = self.records / secs
        out: dict[str, Any] = {**self.fields, "records": self.records, "bytes": self.bytes,
                               "seconds": round(secs, 3), "records_per_s": round(rate, 1)}
        if self.total is not None:
            remaining = max(self.total - self.records, 0)
            out["total"] = self.total
            out["remaining"] = remaining
            out["eta_s"] = round(remaining / rate, 1) if rate > 0 else None
        return out

    def done(self, **extra: Any) -> dict[str, Any]:
        """Log the final line (``{event}.completed``) and return its figures."""
        figures = {**self.figures(), **extra}
        figures.pop("remaining", None)
        figures.pop("eta_s", None)
        self._log.info(f"{self.event}.completed", **figures)
        return figures
