"""Window specifications: which windows a record of timestamp ``t`` belongs to, and when each
window closes.

Time-driven windows (tumbling, hopping) are ``[start, end)`` with an exclusive end. Data-driven
windows report the timestamps of their own records, both inclusive: a sliding window is
``[t - size, t]`` for a record at ``t``; a session, count or global window is ``[first record,
last record]``. Every window result carries its ``end`` as the output timestamp.

A watermark ``W`` means that records before ``W`` are late. A ``[start, end)`` window closes
when ``W >= end + grace``. A window whose end is a record's own timestamp closes once ``W``
passes it: ``W > end + grace`` for sliding windows, ``W > end + gap + grace`` for sessions.
After that, a record for it is late (see ``late=`` on the window operators;
docs/event-time.md has the full rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.errors import TopologyError

END_OF_TIME = 2**63 - 1  # the watermark of a finished (bounded) input: every window closes


@dataclass(frozen=True)
class WindowSpec:
    grace_ms: int = 0

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Windows").lower()

    def describe(self) -> dict[str, int | str]:
        return {"type": self.kind, "grace_ms": self.grace_ms}


@dataclass(frozen=True)
class HoppingWindows(WindowSpec):
    """Fixed-size windows every ``advance_ms``; tumbling when ``advance_ms == size_ms``."""

    size_ms: int = 0
    advance_ms: int = 0

    @property
    def kind(self) -> str:
        return "tumbling" if self.advance_ms == self.size_ms else "hopping"

    def assign(self, t: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` of every window containing ``t``, earliest first."""
        size, adv = self.size_ms, self.advance_ms
        start = t - t % adv  # the latest window start <= t (Python's % floors for t < 0 too)
        out = []
        while start + size > t:
            out.append((start, start + size))
            start -= adv
        out.reverse()
        return out

    def describe(self) -> dict[str, int | str]:
        return {**super().describe(), "size_ms": self.size_ms, "advance_ms": self.advance_ms}


@dataclass(frozen=True)
class SlidingWindows(WindowSpec):
    """Difference-based: for every record at ``t`` one window ``[t - size, t]`` with every record
    of the key whose timestamp lies in it (records at most ``size_ms`` apart share a window)."""

    size_ms: int = 0

    def describe(self) -> dict[str, int | str]:
        return {**super().describe(), "size_ms": self.size_ms}


@dataclass(frozen=True)
class SessionWindows(WindowSpec):
    """Records of a key at most ``gap_ms`` apart form one session; a record that bridges two
    sessions merges them."""

    gap_ms: int = 0

    def describe(self) -> dict[str, int | str]:
        return {**super().describe(), "gap_ms": self.gap_ms}


@dataclass(frozen=True)
class CountWindows(WindowSpec):
    """Every ``size`` records of a key; with ``timeout_ms`` an incomplete window fires once the
    watermark passes its first record's timestamp + timeout (event time, so replays agree)."""

    size: int = 0
    timeout_ms: int | None = None

    def describe(self) -> dict[str, int | str]:
        d: dict[str, int | str] = {**super().describe(), "size": self.size}
        if self.timeout_ms is not None:
            d["timeout_ms"] = self.timeout_ms
        return d


@dataclass(frozen=True)
class GlobalWindows(WindowSpec):
    """One window per key over the whole input; a final result is emitted when the input ends
    (a bounded run, or the test driver's ``finish()``)."""


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TopologyError(f"{name} must be a positive integer (milliseconds), got {value!r}")
    return value


def _grace(grace_ms: int) -> int:
    if not isinstance(grace_ms, int) or grace_ms < 0:
        raise TopologyError(f"grace_ms must be >= 0, got {grace_ms!r}")
    return grace_ms


def tumbling(size_ms: int, *, grace_ms: int = 0) -> HoppingWindows:
    """Back-to-back windows ``[k*size, (k+1)*size)``."""
    size = _positive("size_ms", size_ms)
    return HoppingWindows(grace_ms=_grace(grace_ms), size_ms=size, advance_ms=size)


def hopping(size_ms: int, advance_ms: int, *, grace_ms: int = 0) -> HoppingWindows:
    """Windows of ``size_ms`` starting every ``advance_ms`` (a record is in size/advance)."""
    size, adv = _positive("size_ms", size_ms), _positive("advance_ms", advance_ms)
    if adv > size:
        raise TopologyError(f"advance_ms ({adv}) must not exceed size_ms ({size}): records "
                            "between windows would belong to none")
    return HoppingWindows(grace_ms=_grace(grace_ms), size_ms=size, advance_ms=adv)


def sliding(size_ms: int, *, grace_ms: int = 0) -> SlidingWindows:
    """A window ``[t - size_ms, t]`` ending at every record (e.g. "more than N in any minute")."""
    return SlidingWindows(grace_ms=_grace(grace_ms), size_ms=_positive("size_ms", size_ms))


def session(gap_ms: int, *, grace_ms: int = 0) -> SessionWindows:
    """Activity sessions separated by at least ``gap_ms`` of inactivity."""
    return SessionWindows(grace_ms=_grace(grace_ms), gap_ms=_positive("gap_ms", gap_ms))


def count(size: int, *, timeout_ms: int | None = None) -> CountWindows:
    """Every ``size`` records per key (and what has gathered after ``timeout_ms``, if set)."""
    if timeout_ms is not None:
        _positive("timeout_ms", timeout_ms)
    return CountWindows(size=_positive("size", size), timeout_ms=timeout_ms)


def global_() -> GlobalWindows:
    """A single window per key, closed only by the end of a bounded input."""
    return GlobalWindows()
