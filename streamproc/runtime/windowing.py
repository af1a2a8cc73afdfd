"""The window operator: keyed aggregation per event-time window, closed by the watermark.

Window state lives in the operator's store (state/windowed.py: one entry per key and window,
written back at checkpoints with its changelog). An in-memory index of the *open* entries (a
heap ordered by the watermark at which each must fire or be purged) is rebuilt from the store
when the task starts, so memory grows with the number of open windows, never with the number
that have passed: a closed window is deleted as soon as it can no longer change.

Every decision uses the watermark as of the record being processed (``TaskTime.watermark_at``),
and due windows fire before the record that moved the watermark is added: the output is the
same however the input was batched, which is what makes a replay after a crash reproduce it.
"""

from __future__ import annotations

import copy
import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

import structlog

from streamproc.errors import NullKeyError
from streamproc.graph.nodes import WindowNode
from streamproc.runtime.context import TaskContext
from streamproc.runtime.limits import state_size_check, strip_reserved
from streamproc.state.windowed import WindowState, split_window_key, window_key
from streamproc.time.windows import (
    END_OF_TIME,
    CountWindows,
    GlobalWindows,
    HoppingWindows,
    SessionWindows,
    SlidingWindows,
)
from streamproc.types import Emitted, Record

log = structlog.get_logger(__name__)

Push = Callable[[list[Record]], None]
_NEVER = 2**64  # beyond any watermark, END_OF_TIME included


class WindowOperator:
    def __init__(self, node: WindowNode, down: Push, ctx: TaskContext) -> None:
        assert node.store is not None and node.window is not None
        assert node.key_codec is not None
        self.node = node
        self.spec = node.window
        self.down = down
        self.ctx = ctx
        self.time = ctx.time
        self.store = ctx.store(node.store.name)
        self.init, self.add = node.initializer, node.adder
        self.merge = node.merger
        self.result = node.result or (lambda acc: acc)
        self.final = node.emit == "final"
        self.lateness = node.allowed_lateness_ms
        self.key_decode = node.key_codec.decode
        self.where = node.name
        # Record keys with a window value that outgrew max_record_bytes at a checkpoint: their
        # new window states are size-checked before anything is written (runtime/limits.py).
        self.guarded = {split_window_key(sk)[2] for sk in ctx.guarded(node.store.name)}
        self._check = (state_size_check(self.store, ctx.max_record_bytes) if self.guarded
                       else None)
        # store key -> (start, end, key bytes, the watermark at which it is next due)
        self.open: dict[bytes, tuple[int, int, bytes, int]] = {}
        self.due: list[tuple[int, bytes]] = []  # heap; stale entries are skipped when popped
        self.sessions: dict[bytes, set[bytes]] = {}  # session windows: key -> its store keys
        self.times: dict[bytes, list[int]] = {}  # sliding windows: key -> its record times
        self.changed: set[bytes] = set()  # windows updated since the last early firing
        self.next_early: int | None = None
        spec = self.spec
        if isinstance(spec, HoppingWindows):
            self._add_record: Callable[[Record, bytes, int, list[Record]], None] = self._hopping
        elif isinstance(spec, SlidingWindows):
            self._add_record = self._sliding
        elif isinstance(spec, SessionWindows):
            self._add_record = self._session
        elif isinstance(spec, CountWindows):
            self._add_record = self._count
        else:
            assert isinstance(spec, GlobalWindows)
            self._add_record = self._global
        ctx.register_timed(self)

    # -- when windows close ----------------------------------------------------------------------
    def _close_at(self, start: int, end: int, st: WindowState) -> int:
        # A watermark W means "records before W are late". [start, end) windows are complete at
        # W >= end; windows whose end is a record's own timestamp (inclusive) at W > end.
        spec = self.spec
        if isinstance(spec, HoppingWindows):
            return end + spec.grace_ms
        if isinstance(spec, SlidingWindows):
            return end + 1 + spec.grace_ms
        if isinstance(spec, SessionWindows):
            return end + spec.gap_ms + 1 + spec.grace_ms
        if isinstance(spec, CountWindows) and spec.timeout_ms is not None:
            return st.first + spec.timeout_ms
        return END_OF_TIME  # count without timeout, global: at the end of a bounded input

    def _purge_at(self, start: int, end: int, st: WindowState) -> int:
        spec = self.spec
        if isinstance(spec, SlidingWindows):
            # A record's values take part in every window ending up to size_ms after it.
            return end + spec.size_ms + 1 + spec.grace_ms + self.lateness
        return self._close_at(start, end, st) + self.lateness

    def _due_at(self, start: int, end: int, st: WindowState) -> int:
        if self.final and not st.fired:
            return self._close_at(start, end, st)
        return self._purge_at(start, end, st)

    # -- state -------------------------------------------------------------------------------------
    def _fits(self, kb: bytes, sk: bytes, st: WindowState) -> None:
        """Raise RecordTooLarge (nothing written yet) if a guarded key's new state is too
        large for the changelog."""
        if self._check is not None and kb in self.guarded:
            self._check(sk, st)

    def _load(self, sk: bytes) -> WindowState | None:
        st: WindowState | None = self.store.get(sk)
        if st is not None and self._check is not None and split_window_key(sk)[2] in \
                self.guarded:
            # An adder may mutate the accumulator in place: a guarded key's update works on a
            # copy, so a record refused as too large leaves the stored state as it was.
            st = copy.deepcopy(st)
        return st

    def _save(self, sk: bytes, start: int, end: int, kb: bytes, st: WindowState) -> None:
        self.store.put(sk, st)
        due = self._due_at(start, end, st)
        entry = self.open.get(sk)
        if entry is None or entry[3] != due:
            self.open[sk] = (start, end, kb, due)
            heapq.heappush(self.due, (due, sk))

    def _drop(self, sk: bytes) -> None:
        entry = self.open.pop(sk, None)
        self.store.delete(sk)
        self.changed.discard(sk)
        if entry is None:
            return
        kb = entry[2]
        if kb in self.sessions:
            keys = self.sessions[kb]
            keys.discard(sk)
            if not keys:
                del self.sessions[kb]
        elif kb in self.times:
            times = self.times[kb]
            i = bisect_left(times, entry[1])
            if i < len(times) and times[i] == entry[1]:
                del times[i]
            if not times:
                del self.times[kb]

    def _emit(self, out: list[Record], kb: bytes, key: Any, start: int, end: int, value: Any,
              wm: int) -> None:
        out.append(Record(self.key_decode(kb) if key is ... else key,
                          {"start": start, "end": end, "value": self.result(value)}, end,
                          Emitted(kb, end, wm)))

    # -- the pipeline step -----------------------------------------------------------------------
    def push(self, batch: list[Record]) -> None:
        out: list[Record] = []
        at, on_error, where = self.time.watermark_at, self.ctx.on_error, self.where
        due = self.due
        for r in batch:
            origin = r.origin
            wm = at(origin)
            if due and wm >= due[0][0]:
                self._fire_due(wm, out)
            kb = origin.key()
            try:
                if kb is None:
                    raise NullKeyError("record has a null key; windowed aggregations need a key")
                self._add_record(r, kb, wm, out)
            except Exception as exc:
                on_error(origin, exc, where)
        if out:
            self.down(out)

    def _closed(self, close: int, wm: int) -> bool | None:
        """None: the window is open. False: closed but correctable (late="update" within the
        allowed lateness). True: closed for good, so the record is late."""
        if wm < close:
            return None
        return not (self.node.late == "update" and wm < close + self.lateness)

    def _hopping(self, r: Record, kb: bytes, wm: int, out: list[Record]) -> None:
        spec = self.spec
        assert isinstance(spec, HoppingWindows)
        t, value = r.timestamp, r.value
        late: tuple[int, int] | None = None
        updates: list[tuple[bytes, int, int, WindowState, bool]] = []
        for start, end in spec.assign(t):
            closed = self._closed(end + spec.grace_ms, wm)
            if closed:
                late = late or (start, end)
                continue
            sk = window_key(start, end, kb)
            st = self._load(sk) or WindowState(self.init(), 0, t, t)
            # All windows' new states are computed before any is written: a failing add() must
            # not leave the record in some of its windows only. A correction counts as fired:
            # the closed window must not fire a second time.
            updates.append((sk, start, end, WindowState(
                self.add(st.acc, value), st.count + 1, min(st.first, t), max(st.last, t),
                st.fired or closed is False), closed is False))
        for sk, _, _, st, _ in updates:
            self._fits(kb, sk, st)
        for sk, start, end, st, correction in updates:
            self._save(sk, start, end, kb, st)
            self._updated(out, sk, kb, r.key, start, end, st, wm, correction)
        if late is not None:
            self._late(r, late, wm)

    def _updated(self, out: list[Record], sk: bytes, kb: bytes, key: Any, start: int, end: int,
                 st: WindowState, wm: int, correction: bool) -> None:
        if correction or not self.final:
            self._emit(out, kb, key, start, end, st.acc, wm)
        elif self.node.early_every_ms is not None:
            self.changed.add(sk)

    def _session(self, r: Record, kb: bytes, wm: int, out: list[Record]) -> None:
        spec = self.spec
        assert isinstance(spec, SessionWindows) and self.merge is not None
        t, gap = r.timestamp, spec.gap_ms
        absorbed: list[tuple[bytes, WindowState]] = []
        for sk in sorted(self.sessions.get(kb, ())):
            entry = self.open[sk]
            if entry[0] - gap <= t <= entry[1] + gap:
                st = self._load(sk)
                assert st is not None
                absorbed.append((sk, st))
        # Late only if the session the record would be part of has closed: a record inside (or
        # extending) a session that is still open joins it, whatever its own timestamp.
        first = min([t, *(st.first for _, st in absorbed)])
        last = max([t, *(st.last for _, st in absorbed)])
        closed = self._closed(last + gap + 1 + spec.grace_ms, wm)
        if closed:
            self._late(r, (first, last), wm)
            return
        if absorbed:
            acc = absorbed[0][1].acc
            for _, st in absorbed[1:]:
                acc = self.merge(acc, st.acc)
        else:
            acc = self.init()
        acc = self.add(acc, r.value)
        merged = WindowState(acc, 1 + sum(st.count for _, st in absorbed), first, last,
                             closed is False or any(st.fired for _, st in absorbed))
        sk = window_key(first, last, kb)
        self._fits(kb, sk, merged)
        for old, _ in absorbed:
            self._drop(old)
        self._save(sk, first, last, kb, merged)
        self.sessions.setdefault(kb, set()).add(sk)
        self._updated(out, sk, kb, r.key, first, last, merged, wm, closed is False)

    def _sliding(self, r: Record, kb: bytes, wm: int, out: list[Record]) -> None:
        spec = self.spec
        assert isinstance(spec, SlidingWindows)
        t, size, grace = r.timestamp, spec.size_ms, spec.grace_ms
        own = self._closed(t + 1 + grace, wm)
        if own:
            self._late(r, (t - size, t), wm)
            return
        self.add(self.init(), r.value)  # fail here, before anything is written
        sk = window_key(t, t, kb)
        st = self._load(sk)
        values = [*(st.acc if st is not None else []), r.value]
        st = WindowState(values, len(values), t, t,
                         own is False or (st.fired if st is not None else False))
        self._fits(kb, sk, st)
        times = self.times.setdefault(kb, [])
        if sk not in self.open:
            insort(times, t)
        self._save(sk, t, t, kb, st)
        # The record is in the window ending at itself and in every later one within size.
        for end in times[bisect_left(times, t):bisect_right(times, t + size)]:
            esk = window_key(end, end, kb)
            est = self._load(esk)
            assert est is not None
            closed = self._closed(end + 1 + grace, wm)
            if closed:
                continue
            if closed is False or not self.final:
                self._emit(out, kb, r.key, end - size, end, self._slide(kb, end), wm)
            elif self.node.early_every_ms is not None:
                self.changed.add(esk)

    def _slide(self, kb: bytes, end: int) -> Any:
        """The aggregate of the sliding window ``[end - size, end]`` of one key."""
        spec = self.spec
        assert isinstance(spec, SlidingWindows)
        times = self.times.get(kb, [])
        acc = self.init()
        for t in times[bisect_left(times, end - spec.size_ms):bisect_right(times, end)]:
            st = self._load(window_key(t, t, kb))
            assert st is not None
            for v in st.acc:
                acc = self.add(acc, v)
        return acc

    def _count(self, r: Record, kb: bytes, wm: int, out: list[Record]) -> None:
        spec = self.spec
        assert isinstance(spec, CountWindows)
        t = r.timestamp
        sk = window_key(0, 0, kb)
        st = self._load(sk) or WindowState(self.init(), 0, t, t)
        st = WindowState(self.add(st.acc, r.value), st.count + 1, min(st.first, t),
                         max(st.last, t))
        if st.count >= spec.size:
            self._emit(out, kb, r.key, st.first, st.last, st.acc, wm)
            self._drop(sk)
            return
        self._fits(kb, sk, st)
        self._save(sk, 0, 0, kb, st)
        if not self.final:
            self._emit(out, kb, r.key, st.first, st.last, st.acc, wm)

    def _global(self, r: Record, kb: bytes, wm: int, out: list[Record]) -> None:
        t = r.timestamp
        sk = window_key(0, 0, kb)
        st = self._load(sk) or WindowState(self.init(), 0, t, t)
        st = WindowState(self.add(st.acc, r.value), st.count + 1, min(st.first, t),
                         max(st.last, t))
        self._fits(kb, sk, st)
        self._save(sk, 0, 0, kb, st)
        self._updated(out, sk, kb, r.key, st.first, st.last, st.acc, wm, False)

    # -- late records ---------------------------------------------------------------------------
    def _late(self, r: Record, window: tuple[int, int], wm: int) -> None:
        node, origin = self.node, r.origin
        side = node.late == "side_output" and origin.offset() is not None
        self.ctx.count("late_records_total", policy="side_output" if side else "drop",
                       operator=self.where)
        if not side:
            log.debug("record.late_dropped", topic=origin.topic(), partition=origin.partition(),
                      offset=origin.offset(), operator=self.where, timestamp=r.timestamp,
                      window_start=window[0], window_end=window[1], watermark=wm)
            return
        assert node.late_topic is not None
        topic = origin.topic() or ""
        own = origin.headers() or []
        clean = strip_reserved(own)
        headers = [*(own if clean is None else clean),
                   ("streamproc.topic", topic.encode()),
                   ("streamproc.partition", str(origin.partition()).encode()),
                   ("streamproc.offset", str(origin.offset()).encode()),
                   # The late topic is LogAppendTime (retention from when it was written): the
                   # record's own timestamp survives here.
                   ("streamproc.timestamp", str(origin.timestamp()[1]).encode()),
                   ("streamproc.operator", self.where.encode()),
                   ("streamproc.window.start", str(window[0]).encode()),
                   ("streamproc.window.end", str(window[1]).encode()),
                   ("streamproc.watermark", str(wm).encode())]
        produce, full = self.ctx.producer()
        while True:
            try:
                produce(node.late_topic, origin.value(), origin.key(),
                        timestamp=origin.timestamp()[1], headers=headers)
                break
            except BufferError:
                full()
        self.ctx.produced(1)

    # -- time -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.open.clear()
        self.due.clear()
        self.sessions.clear()
        self.times.clear()
        self.changed.clear()
        sliding = isinstance(self.spec, SlidingWindows)
        for sk, st in self.store.items():
            start, end, kb = split_window_key(sk)
            due = self._due_at(start, end, st)
            self.open[sk] = (start, end, kb, due)
            self.due.append((due, sk))
            if sliding:
                insort(self.times.setdefault(kb, []), end)
            elif isinstance(self.spec, SessionWindows):
                self.sessions.setdefault(kb, set()).add(sk)
        heapq.heapify(self.due)

    def advance(self, watermark: int, now_ms: int) -> None:
        out: list[Record] = []
        if self.due and watermark >= self.due[0][0]:
            self._fire_due(watermark, out)
        every = self.node.early_every_ms
        if every is not None:
            if self.next_early is None:
                self.next_early = now_ms + every
            elif now_ms >= self.next_early:
                self.next_early = now_ms + every
                self._fire_early(watermark, out)
        if out:
            self.down(out)

    def _fire_due(self, wm: int, out: list[Record]) -> None:
        due = self.due
        while due and due[0][0] <= wm:
            at, sk = heapq.heappop(due)
            entry = self.open.get(sk)
            if entry is None or entry[3] != at:
                continue  # merged away, re-scheduled or already purged
            start, end, kb, _ = entry
            st = self._load(sk)
            assert st is not None
            if self.final and not st.fired:
                self._emit_current(out, kb, start, end, st, wm)
                self.changed.discard(sk)
                if self._purge_at(start, end, st) > wm:
                    # Kept for late corrections (or, sliding, for the windows after it).
                    self._save(sk, start, end, kb, WindowState(st.acc, st.count, st.first,
                                                               st.last, True))
                    continue
            self._drop(sk)

    def _fire_early(self, wm: int, out: list[Record]) -> None:
        for sk in sorted(self.changed):
            entry = self.open.get(sk)
            if entry is None:
                continue
            start, end, kb, _ = entry
            st = self._load(sk)
            if st is None or st.fired:
                continue
            self._emit_current(out, kb, start, end, st, wm)
        self.changed.clear()

    def _emit_current(self, out: list[Record], kb: bytes, start: int, end: int,
                      st: WindowState, wm: int) -> None:
        """Emit a window's current result (when it fires, or early) with its reported bounds."""
        if isinstance(self.spec, SlidingWindows):
            self._emit(out, kb, ..., end - self.spec.size_ms, end, self._slide(kb, end), wm)
        elif isinstance(self.spec, HoppingWindows):
            self._emit(out, kb, ..., start, end, st.acc, wm)
        else:  # session, count, global: bounded by their records
            self._emit(out, kb, ..., st.first, st.last, st.acc, wm)
