"""Batch computations of what each example topology must output for a given input, written
from the documented semantics and independent of the engine's code (no streamproc imports).

Shared rules (per input partition, records in the order they were appended):

- the watermark as of a record = the largest event timestamp so far, that record included,
  minus the source's max out-of-orderness;
- ``[start, end)`` windows (tumbling, hopping) close when the watermark reaches ``end + grace``;
  windows with an inclusive end (sliding ``[t - size, t]``, sessions ``[first, last]``) when it
  passes it: ``end + 1 + grace`` (sessions ``last + gap + 1 + grace``);
- windows due at a record close before the record is added; a record whose window has closed is
  late; at the end of a bounded input (``finish``) every window closes.

Each function returns ``{output topic: {key: [(value, timestamp), ...]}}``: the per-key
sequence is the order a consumer of the output sees (order across keys is not defined).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

Event = tuple[str, dict[str, Any], int]
PerKey = dict[str, list[tuple[Any, int]]]
Output = dict[str, PerKey]


def by_partition(events: Iterable[Event], partition: Callable[[str], int]) -> list[list[Event]]:
    parts: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        parts[partition(e[0])].append(e)
    return [parts[p] for p in sorted(parts)]


def _emit(out: PerKey, key: str, value: Any, ts: int) -> None:
    out.setdefault(key, []).append((value, ts))


def _close_due(windows: dict[tuple[str, int, int], list[Any]], close_at: Callable[[int], int],
               wm: float, emit: Callable[[str, int, int, list[Any]], None]) -> None:
    """Emit and forget every window due at ``wm``, earliest close first."""
    due = sorted((close_at(end), end, start, key) for (key, start, end) in windows
                 if close_at(end) <= wm)
    for _, end, start, key in due:
        emit(key, start, end, windows.pop((key, start, end)))


def hopping(events: Iterable[Event], partition: Callable[[str], int], *, size: int,
            advance: int, grace: int, ooo: int,
            event_time: Callable[[Event], int] = lambda e: e[2],
            finish: bool = True) -> tuple[PerKey, list[tuple[Event, int, int, int]]]:
    """Window contents (the values of each window's records, in arrival order) per key, emitted
    as ``({"start", "end", "values"}, end)``, plus the late records as ``(event, window start,
    window end, watermark)`` naming the first closed window of each."""
    out: PerKey = {}
    late: list[tuple[Event, int, int, int]] = []

    def emit(key: str, start: int, end: int, values: list[Any]) -> None:
        _emit(out, key, {"start": start, "end": end, "values": values}, end)

    for records in by_partition(events, partition):
        open_: dict[tuple[str, int, int], list[Any]] = {}
        high: int | None = None
        for e in records:
            t = event_time(e)
            high = t if high is None else max(high, t)
            wm = high - ooo
            _close_due(open_, lambda end: end + grace, wm, emit)
            starts = [s for s in range(t - t % advance - size + advance, t + 1, advance)
                      if s <= t < s + size]
            closed = [s for s in starts if s + size + grace <= wm]
            for s in starts:
                if s not in closed:
                    open_.setdefault((e[0], s, s + size), []).append(e[1])
            if closed:
                late.append((e, closed[0], closed[0] + size, wm))
        _close_due(open_, lambda end: end + grace, float("inf") if finish else -float("inf"),
                   emit)
    return out, late


def sessions(events: Iterable[Event], partition: Callable[[str], int], *, gap: int, grace: int,
             ooo: int, finish: bool = True) -> tuple[PerKey, list[Event]]:
    """Sessions per key: records at most ``gap`` apart (inclusive) share one; a record that
    bridges two sessions merges them. A record is late only if no open session takes it in and
    its own one-record session would already be closed. Emitted as ``({"start": first, "end":
    last, "count": n}, last)``."""
    out: PerKey = {}
    late: list[Event] = []

    def emit(key: str, first: int, last: int, counts: list[Any]) -> None:
        _emit(out, key, {"start": first, "end": last, "count": counts[0]}, last)

    for records in by_partition(events, partition):
        open_: dict[tuple[str, int, int], list[Any]] = {}  # (key, first, last) -> [count]
        high: int | None = None
        for e in records:
            key, t = e[0], e[2]
            high = t if high is None else max(high, t)
            wm = high - ooo
            _close_due(open_, lambda last: last + gap + 1 + grace, wm, emit)
            absorbed = [(k, f, la) for (k, f, la) in open_ if k == key and f - gap <= t <= la + gap]
            if not absorbed and t + gap + 1 + grace <= wm:
                late.append(e)
                continue
            first = min([t, *(f for _, f, _ in absorbed)])
            last = max([t, *(la for _, _, la in absorbed)])
            count = 1 + sum(open_.pop(s)[0] for s in absorbed)
            open_[(key, first, last)] = [count]
        _close_due(open_, lambda last: last + gap + 1 + grace,
                   float("inf") if finish else -float("inf"), emit)
    return out, late


def sliding_counts(events: Iterable[Event], partition: Callable[[str], int], *, size: int,
                   ooo: int) -> tuple[PerKey, list[Event]]:
    """Sliding windows ``[e - size, e]`` ending at each record, grace 0, emit on update: each
    on-time record at ``t`` emits, for every distinct record time ``e`` of its key with
    ``t <= e <= t + size`` whose window is still open (ascending), the number of the key's
    on-time records in ``[e - size, e]``, as ``({"start": e - size, "end": e, "count": n}, e)``."""
    out: PerKey = {}
    late: list[Event] = []
    for records in by_partition(events, partition):
        times: dict[str, list[int]] = defaultdict(list)
        high: int | None = None
        for e in records:
            key, t = e[0], e[2]
            high = t if high is None else max(high, t)
            wm = high - ooo
            if t + 1 <= wm:
                late.append(e)
                continue
            times[key].append(t)
            for end in sorted({x for x in times[key] if t <= x <= t + size}):
                if end + 1 <= wm:
                    continue
                n = sum(1 for x in times[key] if end - size <= x <= end)
                _emit(out, key, {"start": end - size, "end": end, "count": n}, end)
    return out, late


def small_then_large(events: list[Event], partition: Callable[[str], int], *, ooo: int,
                     small: float, large: float, within: int,
                     finish: bool = True) -> PerKey:
    """Per card, its on-time transactions (timestamp >= the watermark as of the transaction) in
    event-time order (ties: arrival order); an alert for every transaction of at least
    ``large`` whose predecessor in that order was below ``small`` and at most ``within`` ms
    earlier. Without ``finish`` only transactions the final watermark has passed count."""
    per_card: dict[str, list[tuple[int, int, Event]]] = defaultdict(list)
    arrival = 0
    for records in by_partition(events, partition):
        high: int | None = None
        kept: list[tuple[int, int, Event]] = []
        for e in records:
            high = e[2] if high is None else max(high, e[2])
            arrival += 1
            if e[2] >= high - ooo:
                kept.append((e[2], arrival, e))
        assert high is not None
        for t, i, e in kept:
            if finish or t <= high - ooo:
                per_card[e[0]].append((t, i, e))
    out: PerKey = {}
    for card, txns in per_card.items():
        prev: tuple[int, float] | None = None
        for t, _, (_, txn, _) in sorted(txns, key=lambda x: x[:2]):
            amount = txn["amount"]
            if prev is not None and amount >= large and t - prev[0] <= within:
                _emit(out, card, {"card": card, "rule": "small_then_large", "ts": t,
                                  "amount": amount, "merchant": txn["merchant"],
                                  "small_ts": prev[0], "small_amount": prev[1]}, t)
            prev = (t, amount) if amount < small else None
    return out
