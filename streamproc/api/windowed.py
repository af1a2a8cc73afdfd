"""``WindowedStream``: keyed aggregations over event-time windows.

``stream.group_by(...).window(windows.tumbling(60_000)).count(store="per-minute")`` emits, per
key and window, ``{"start": ms, "end": ms, "value": result}`` keyed by the group key, with the
window end as the record timestamp. See :mod:`streamproc.time.windows` for the bounds of each
window type.

Emit strategies: ``emit="final"`` (default) emits each window once, when the watermark passes
its end + grace (``early_every_ms`` adds provisional results every so often of wall-clock time
for long windows); ``emit="update"`` emits the new result after every record.

Late records (their window already closed): ``late="drop"`` counts them, ``"side_output"``
writes the original record to ``late_topic`` (default ``{app}-late``) with headers naming the
window and the watermark, ``"update"`` keeps closed windows for ``allowed_lateness_ms`` more
and emits a corrected result for each late record within it (later ones are dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamproc.codecs.base import Codec
from streamproc.codecs.basic import JsonCodec
from streamproc.errors import TopologyError
from streamproc.graph.naming import check_store, default_late_topic, require_topic
from streamproc.graph.nodes import StoreSpec, WindowNode
from streamproc.state.windowed import WindowStateCodec
from streamproc.time.windows import (
    CountWindows,
    GlobalWindows,
    SessionWindows,
    SlidingWindows,
    WindowSpec,
)

if TYPE_CHECKING:
    from streamproc.api.stream import Stream

_EMITS = ("final", "update")
_LATES = ("drop", "side_output", "update")


class WindowedStream:
    def __init__(self, stream: Stream, window: WindowSpec) -> None:
        if not isinstance(window, WindowSpec):
            raise TopologyError("window() takes a window from streamproc.windows, e.g. "
                                "windows.tumbling(60_000)")
        self.stream = stream
        self.window = window

    # -- the built-in aggregations ---------------------------------------------------------
    def count(self, *, store: str, **options: Any) -> Stream:
        """The number of records per window."""
        return self._build("count", store, _zero, _count, _plus, None, None, options)

    def sum(self, fn: Callable[[Any], Any] | None = None, *, store: str,
            **options: Any) -> Stream:
        """The sum of the values (or of ``fn(value)``) per window."""
        get = fn or _identity
        return self._build("sum", store, _zero, lambda acc, v: acc + get(v), _plus, None, None,
                           options)

    def min(self, fn: Callable[[Any], Any] | None = None, *, store: str,
            **options: Any) -> Stream:
        """The smallest value (or ``fn(value)``) per window."""
        get = fn or _identity
        return self._build("min", store, _none, lambda acc, v: _pick(min, acc, get(v)),
                           lambda a, b: _pick(min, a, b), None, None, options)

    def max(self, fn: Callable[[Any], Any] | None = None, *, store: str,
            **options: Any) -> Stream:
        """The largest value (or ``fn(value)``) per window."""
        get = fn or _identity
        return self._build("max", store, _none, lambda acc, v: _pick(max, acc, get(v)),
                           lambda a, b: _pick(max, a, b), None, None, options)

    def mean(self, fn: Callable[[Any], Any] | None = None, *, store: str,
             **options: Any) -> Stream:
        """The arithmetic mean of the values (or of ``fn(value)``) per window."""
        get = fn or _identity
        return self._build("mean", store, _pair, lambda acc, v: [acc[0] + get(v), acc[1] + 1],
                           lambda a, b: [a[0] + b[0], a[1] + b[1]],
                           lambda acc: acc[0] / acc[1] if acc[1] else None, None, options)

    def reduce(self, fn: Callable[[Any, Any], Any], *, store: str, state: Codec | None = None,
               **options: Any) -> Stream:
        """Combine a window's values pairwise with ``fn(acc, value)`` (``fn`` must be
        associative for session windows, whose partial results merge)."""
        # The accumulator is [value] once a record arrived, so that None stays a valid value.
        return self._build("reduce", store, _none,
                           lambda acc, v: [v] if acc is None else [fn(acc[0], v)],
                           lambda a, b: a if b is None else b if a is None else [fn(a[0], b[0])],
                           lambda acc: None if acc is None else acc[0], state, options)

    def collect(self, fn: Callable[[Any], Any] | None = None, *, store: str,
                max_items: int = 1000, **options: Any) -> Stream:
        """The values (or ``fn(value)``) of a window as a list, in arrival order, keeping the
        first ``max_items`` (window state must stay bounded)."""
        if not isinstance(max_items, int) or max_items <= 0:
            raise TopologyError(f"max_items must be a positive integer, got {max_items!r}")
        get = fn or _identity
        limit = max_items
        return self._build("collect", store, list,
                           lambda acc, v: acc if len(acc) >= limit else [*acc, get(v)],
                           lambda a, b: (a + b)[:limit], None, None, options)

    def aggregate(self, initializer: Callable[[], Any], add: Callable[[Any, Any], Any], *,
                  store: str, merge: Callable[[Any, Any], Any] | None = None,
                  result: Callable[[Any], Any] | None = None, state: Codec | None = None,
                  **options: Any) -> Stream:
        """Fold a window's values: ``acc = add(acc, value)`` from ``initializer()``; the window
        emits ``result(acc)`` (default ``acc``). Session windows need ``merge(acc1, acc2)``.
        ``add`` must return the new accumulator and not mutate the old one's containers."""
        return self._build("aggregate", store, initializer, add, merge, result, state, options)

    # -- building ----------------------------------------------------------------------------
    def _build(self, operator: str, store: str, initializer: Callable[[], Any],
               add: Callable[[Any, Any], Any], merge: Callable[[Any, Any], Any] | None,
               result: Callable[[Any], Any] | None, state: Codec | None,
               options: dict[str, Any]) -> Stream:
        s = self.stream
        emit = options.pop("emit", "final")
        late = options.pop("late", "drop")
        lateness = options.pop("allowed_lateness_ms", 0)
        early = options.pop("early_every_ms", None)
        late_topic = options.pop("late_topic", None)
        name = options.pop("name", None)
        if options:
            raise TopologyError(f"{operator}() got unknown options {sorted(options)}; known: "
                                "emit, late, allowed_lateness_ms, early_every_ms, late_topic, "
                                "name")
        if emit not in _EMITS:
            raise TopologyError(f"emit must be one of {_EMITS}, got {emit!r}")
        if late not in _LATES:
            raise TopologyError(f"late must be one of {_LATES}, got {late!r}")
        if not isinstance(lateness, int) or lateness < 0:
            raise TopologyError(f"allowed_lateness_ms must be >= 0, got {lateness!r}")
        if late == "update" and lateness == 0:
            raise TopologyError('late="update" needs allowed_lateness_ms > 0: how long closed '
                                "windows stay correctable")
        if late != "update" and lateness:
            raise TopologyError('allowed_lateness_ms only applies with late="update"')
        if early is not None and (emit != "final" or not isinstance(early, int) or early <= 0):
            raise TopologyError('early_every_ms must be a positive integer, with emit="final"')
        w = self.window
        if isinstance(w, SessionWindows) and merge is None:
            raise TopologyError(f"{operator}() over session windows needs merge=: sessions "
                                "merge when a record bridges two of them")
        if isinstance(w, CountWindows | GlobalWindows) and (late != "drop" or early):
            raise TopologyError(f"{w.kind} windows have no late records and no early firings")
        if isinstance(w, SlidingWindows) and early:
            raise TopologyError("sliding windows have no early firings")
        topology = s._topology
        check_store(topology.application_id, store)
        if late_topic is not None:
            require_topic("late_topic", late_topic)
        node = WindowNode(
            s._name(f"window_{operator}", name), window=w,
            store=StoreSpec(store, WindowStateCodec(state or JsonCodec())),
            initializer=initializer,
            adder=add, merger=merge, result=result, operator=operator, emit=emit, late=late,
            allowed_lateness_ms=lateness, early_every_ms=early,
            late_topic=(late_topic or default_late_topic(topology.application_id))
            if late == "side_output" else None,
            key_codec=s._key_codec or JsonCodec(),
        )
        return s._then(node)


def _zero() -> int:
    return 0


def _none() -> Any:
    return None


def _pair() -> list[Any]:
    return [0, 0]


def _count(acc: int, _v: Any) -> int:
    return acc + 1


def _plus(a: Any, b: Any) -> Any:
    return a + b


def _identity(v: Any) -> Any:
    return v


def _pick(choose: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return choose(a, b)
