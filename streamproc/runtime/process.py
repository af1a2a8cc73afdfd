"""``process``: user code with the record context, per-key state and (keyed process functions)
per-key timers.

State and timer changes a function makes apply only if it returns normally, so a record that
fails (and goes to the dead-letter topic) leaves nothing half-done behind.

Timers are entries of the ``{store}.timers`` store keyed by (domain, timestamp, key): they are
written back and changelogged at checkpoints like any state, and an in-memory heap of them is
rebuilt from the store when the task starts. Event-time timers fire when the watermark reaches
them, before the record that moved the watermark is processed (so output does not depend on how
the input was batched); processing-time timers fire when the wall clock does.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable
from typing import Any

from streamproc.errors import NullKeyError
from streamproc.graph.nodes import ProcessNode
from streamproc.runtime.context import TaskContext
from streamproc.runtime.limits import state_size_check
from streamproc.state.store import KeyValueStore
from streamproc.time.watermarks import TaskTime
from streamproc.types import Emitted, Record

Push = Callable[[list[Record]], None]

# Aggregates and state are treated as values: an accumulator or state object a user function
# mutates in place must not change what was already emitted, or leak from a failed record.
# A shallow copy of the built-in containers covers the common cases at a small cost.
MUTABLE = (list, dict, set, bytearray)
_ABSENT: Any = object()

EVENT_TIME = 0
PROCESSING_TIME = 1
_TIMER = struct.Struct(">Bq")


def snapshot(value: Any) -> Any:
    return value.copy() if type(value) in MUTABLE else value


def store_key(r: Record) -> bytes:
    # Keyed operators only ever follow a source or a repartition with the key unchanged, so the
    # consumed key bytes *are* the key's encoding: no re-encoding per record.
    kb = r.origin.key()
    if kb is None:
        raise NullKeyError("record has a null key; keyed operations need a key")
    return kb


class KeyState:
    """The state of the current record's key inside ``process``; writes apply only if the user
    function returns normally (so a failed record leaves no partial state behind). Only
    ``set``/``delete`` write: mutating what ``get`` returned changes nothing by itself."""

    __slots__ = ("_key", "_pending", "_read", "_store")
    _UNCHANGED: Any = object()
    _DELETE: Any = object()

    def __init__(self, store: Any) -> None:
        self._store = store
        self._key = b""
        self._pending: Any = KeyState._UNCHANGED
        self._read: Any = KeyState._UNCHANGED  # this record's snapshot of the stored value

    def get(self, default: Any = None) -> Any:
        p = self._pending
        if p is KeyState._DELETE:
            return default
        if p is not KeyState._UNCHANGED:
            return p
        if self._read is KeyState._UNCHANGED:
            # A copy, so that mutating it and then raising leaves the stored state untouched;
            # reading alone never marks the key dirty (no changelog record for a read).
            self._read = snapshot(self._store.get(self._key, _ABSENT))
        return default if self._read is _ABSENT else self._read

    def set(self, value: Any) -> None:
        self._pending = value

    def delete(self) -> None:
        self._pending = KeyState._DELETE

    def _bind(self, kb: bytes) -> None:
        self._key = kb
        self._pending = self._read = KeyState._UNCHANGED

    def _check(self, check: Callable[[bytes, Any], None]) -> None:
        """Raise (before :meth:`_apply`) when the pending value is over the size limit."""
        p = self._pending
        if p is not KeyState._UNCHANGED and p is not KeyState._DELETE:
            check(self._key, p)

    def _apply(self) -> None:
        if self._pending is KeyState._UNCHANGED:
            return
        if self._pending is KeyState._DELETE:
            self._store.delete(self._key)
        else:
            self._store.put(self._key, self._pending)


class TimerService:
    """``ctx.timers`` in a keyed process function: timers of the current key. Registering a
    timer twice (same domain and time) keeps one."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, bool]] = []

    def register_event_time(self, timestamp: int) -> None:
        """Call ``on_timer`` once the watermark reaches ``timestamp`` (ms)."""
        self._pending.append((EVENT_TIME, int(timestamp), True))

    def register_processing_time(self, timestamp: int) -> None:
        """Call ``on_timer`` once the wall clock reaches ``timestamp`` (ms)."""
        self._pending.append((PROCESSING_TIME, int(timestamp), True))

    def delete_event_time(self, timestamp: int) -> None:
        self._pending.append((EVENT_TIME, int(timestamp), False))

    def delete_processing_time(self, timestamp: int) -> None:
        self._pending.append((PROCESSING_TIME, int(timestamp), False))


class ProcessContext:
    """Passed to ``process`` functions: the current record's metadata, its key's state,
    ``timers`` (keyed process functions), the watermark, the wall clock and ``emit``."""

    __slots__ = ("_clock", "_out", "_record", "_time", "state", "timers")

    def __init__(self, state: KeyState | None, time: TaskTime, clock: Callable[[], int],
                 timers: TimerService | None = None) -> None:
        self.state = state
        self.timers = timers
        self._time = time
        self._clock = clock
        self._out: list[Record] = []
        self._record: Record | None = None

    @property
    def timestamp(self) -> int:
        assert self._record is not None
        return self._record.timestamp

    @property
    def topic(self) -> str | None:
        assert self._record is not None
        return self._record.origin.topic()

    @property
    def partition(self) -> int | None:
        assert self._record is not None
        return self._record.origin.partition()

    @property
    def offset(self) -> int | None:
        assert self._record is not None
        return self._record.origin.offset()

    @property
    def watermark(self) -> int:
        """The task's watermark as of the current record (or timer)."""
        assert self._record is not None
        return self._time.watermark_at(self._record.origin)

    @property
    def now(self) -> int:
        """The wall clock (ms)."""
        return self._clock()

    def emit(self, value: Any, *, key: Any = ..., timestamp: int | None = None) -> None:
        r = self._record
        assert r is not None
        self._out.append(Record(r.key if key is ... else key, value,
                                r.timestamp if timestamp is None else timestamp, r.origin))


def build_process(node: ProcessNode, down: Push, ctx: TaskContext) -> Push:
    if node.on_timer is not None:
        return TimerProcess(node, down, ctx).push
    fn, where, on_error = node.fn, node.name, ctx.on_error
    store = ctx.store(node.store.name) if node.store is not None else None
    state = KeyState(store) if store is not None else None
    pctx = ProcessContext(state, ctx.time, ctx.now_ms)
    guarded = ctx.guarded(node.store.name) if node.store is not None else frozenset()
    check = state_size_check(store, ctx.max_record_bytes) if guarded else None

    def push(batch: list[Record]) -> None:
        out: list[Record] = []
        for r in batch:
            pctx._record = r
            pctx._out = []
            try:
                if state is not None:
                    state._bind(kb := store_key(r))
                fn(pctx, r.key, r.value)
                if check is not None and state is not None and kb in guarded:
                    state._check(check)  # too large: dead-lettered, state unchanged
            except Exception as exc:
                on_error(r.origin, exc, where)
                continue
            if state is not None:
                state._apply()
            out.extend(pctx._out)
        pctx._record = None
        if out:
            down(out)

    return push


class TimerProcess:
    """A keyed process function: ``process`` with per-key event- and processing-time timers."""

    def __init__(self, node: ProcessNode, down: Push, ctx: TaskContext) -> None:
        assert node.store is not None and node.on_timer is not None
        assert node.timer_store is not None and node.key_codec is not None
        self.fn, self.on_timer = node.fn, node.on_timer
        self.where = node.name
        self.down = down
        self.ctx = ctx
        self.time = ctx.time
        self.key_decode = node.key_codec.decode
        self.state = KeyState(ctx.store(node.store.name))
        self.guarded = ctx.guarded(node.store.name)
        self.check = (state_size_check(ctx.store(node.store.name), ctx.max_record_bytes)
                      if self.guarded else None)
        self.timer_store: KeyValueStore = ctx.store(node.timer_store.name)
        self.service = TimerService()
        self.pctx = ProcessContext(self.state, ctx.time, ctx.now_ms, self.service)
        self.registered: set[bytes] = set()
        self.heaps: tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]] = ([], [])
        ctx.register_timed(self)

    def push(self, batch: list[Record]) -> None:
        out: list[Record] = []
        at, event = self.time.watermark_at, self.heaps[EVENT_TIME]
        for r in batch:
            if event and (wm := at(r.origin)) >= event[0][0]:
                self._fire(EVENT_TIME, wm, out)
            try:
                kb = store_key(r)
            except NullKeyError as exc:
                self.ctx.on_error(r.origin, exc, self.where)
                continue
            self._call(kb, r, self.fn, (r.key, r.value), out)
        self.pctx._record = None
        if out:
            self.down(out)

    def _call(self, kb: bytes, r: Record, fn: Callable[..., None], args: tuple[Any, ...],
              out: list[Record]) -> None:
        pctx, state, service = self.pctx, self.state, self.service
        pctx._record = r
        pctx._out = []
        service._pending = []
        state._bind(kb)
        try:
            fn(pctx, *args)
            if self.check is not None and kb in self.guarded:
                state._check(self.check)  # too large: dead-lettered, state unchanged
        except Exception as exc:
            self.ctx.on_error(r.origin, exc, self.where)
            return
        state._apply()
        for domain, ts, register in service._pending:
            tk = _TIMER.pack(domain, ts) + kb
            if register and tk not in self.registered:
                self.registered.add(tk)
                self.timer_store.put(tk, True)
                heapq.heappush(self.heaps[domain], (ts, kb))
            elif not register and tk in self.registered:
                self.registered.discard(tk)  # its heap entry is skipped when it comes up
                self.timer_store.delete(tk)
        out.extend(pctx._out)

    def _fire(self, domain: int, upto: int, out: list[Record]) -> None:
        heap = self.heaps[domain]
        wm = self.time.watermark if domain == PROCESSING_TIME else upto
        while heap and heap[0][0] <= upto:
            ts, kb = heapq.heappop(heap)
            tk = _TIMER.pack(domain, ts) + kb
            if tk not in self.registered:
                continue
            self.registered.discard(tk)
            self.timer_store.delete(tk)
            try:
                key = self.key_decode(kb)
            except Exception as exc:
                self.ctx.on_error(Emitted(kb, ts, wm), exc, self.where)
                continue
            r = Record(key, None, ts, Emitted(kb, ts, wm))
            self._call(kb, r, self.on_timer, (key, ts), out)

    # -- TimedOperator ---------------------------------------------------------------------------
    def start(self) -> None:
        self.registered.clear()
        for heap in self.heaps:
            heap.clear()
        for tk, _ in self.timer_store.items():
            domain, ts = _TIMER.unpack_from(tk)
            self.registered.add(tk)
            self.heaps[domain].append((ts, tk[_TIMER.size:]))
        for heap in self.heaps:
            heapq.heapify(heap)

    def advance(self, watermark: int, now_ms: int) -> None:
        out: list[Record] = []
        event, proc = self.heaps
        if event and watermark >= event[0][0]:
            self._fire(EVENT_TIME, watermark, out)
        if proc and now_ms >= proc[0][0]:
            self._fire(PROCESSING_TIME, now_ms, out)
        self.pctx._record = None
        if out:
            self.down(out)
