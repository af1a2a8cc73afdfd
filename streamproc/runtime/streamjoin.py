"""The windowed stream-stream join (and the interval join, its general form).

A left record at ``t`` matches right records of its key at ``t + lower .. t + upper``. Each
record, when it arrives, is joined with the matching records of the other side that wait in
that side's store, then waits in its own store until no record of the other side can still
match it. A record is late when it is older than the watermark minus the grace, so:

- a left record waits until ``watermark > t + upper + grace``;
- a right record at ``t`` waits until ``watermark > t - lower + grace``.

Then it is deleted, and (``left``/``outer``) emitted with ``None`` if it never matched. Store
entries are keyed ``key bytes | timestamp | sequence`` and hold ``{"v": value, "m": matched}``.
An in-memory index per side (key -> sorted (timestamp, sequence)) and a heap of expiries are
rebuilt from the stores when the task starts. Decisions use the watermark as of each record, so
a replay from a checkpoint emits the same records.
"""

from __future__ import annotations

import heapq
import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

import structlog

from streamproc.errors import NullKeyError
from streamproc.graph.nodes import WindowJoinNode
from streamproc.runtime.context import TaskContext
from streamproc.types import Emitted, Record

log = structlog.get_logger(__name__)

Push = Callable[[list[Record]], None]
_SUFFIX = struct.Struct(">QQ")  # timestamp (sign bit flipped: byte order = time order), seq
_FLIP = 1 << 63
LEFT, RIGHT = 0, 1


def _entry_key(kb: bytes, ts: int, seq: int) -> bytes:
    return kb + _SUFFIX.pack((ts + _FLIP) & 0xFFFFFFFFFFFFFFFF, seq)


def split_entry_key(sk: bytes) -> tuple[bytes, int, int]:
    t, seq = _SUFFIX.unpack(sk[-16:])
    return sk[:-16], t - _FLIP, seq


class WindowJoinOperator:
    def __init__(self, node: WindowJoinNode, down: Push, ctx: TaskContext) -> None:
        assert node.key_codec is not None
        self.node, self.down, self.ctx, self.time = node, down, ctx, ctx.time
        self.stores = (ctx.store(f"{node.store}.left"), ctx.store(f"{node.store}.right"))
        self.joiner = node.joiner
        self.lower, self.upper, self.grace = node.lower_ms, node.upper_ms, node.grace_ms
        self.emit_unmatched = (node.how in ("left", "outer"), node.how == "outer")
        self.key_decode = node.key_codec.decode
        self.index: tuple[dict[bytes, list[tuple[int, int]]], ...] = ({}, {})
        self.expiry: list[tuple[int, int, bytes]] = []  # (watermark that expires, side, sk)
        self.seq = 0
        self.where = node.name
        ctx.register_timed(self)

    # -- the two inputs --------------------------------------------------------------------------
    def push_left(self, batch: list[Record]) -> None:
        self._push(batch, LEFT)

    def push_right(self, batch: list[Record]) -> None:
        self._push(batch, RIGHT)

    def _expires_at(self, side: int, ts: int) -> int:
        # The first watermark at which no record of the other side can still match it.
        return (ts + self.upper if side == LEFT else ts - self.lower) + self.grace + 1

    def _push(self, batch: list[Record], side: int) -> None:
        out: list[Record] = []
        at, on_error = self.time.watermark_at, self.ctx.on_error
        for r in batch:
            origin = r.origin
            wm = at(origin)
            if self.expiry and self.expiry[0][0] <= wm:
                self._expire(wm, out)
            kb = origin.key()
            try:
                if kb is None:
                    raise NullKeyError("record has a null key; stream-stream joins need a key")
                if r.timestamp < wm - self.grace:
                    self._late(r, side, wm)
                    continue
                self._arrive(r, kb, side, out)
            except Exception as exc:
                on_error(origin, exc, self.where)
        if out:
            self.down(out)

    def _arrive(self, r: Record, kb: bytes, side: int, out: list[Record]) -> None:
        ts, other = r.timestamp, 1 - side
        if side == LEFT:
            lo, hi = ts + self.lower, ts + self.upper
        else:
            lo, hi = ts - self.upper, ts - self.lower
        matched = False
        waiting = self.index[other].get(kb)
        if waiting:
            store = self.stores[other]
            joined: list[Any] = []
            for ots, oseq in waiting[bisect_left(waiting, (lo, -1)):
                                     bisect_right(waiting, (hi, 2**64))]:
                sk = _entry_key(kb, ots, oseq)
                entry = store.get(sk)
                if entry is None:
                    continue
                # Joined before anything is marked: a joiner that raises changes nothing.
                joined.append((self.joiner(r.value, entry["v"]) if side == LEFT
                               else self.joiner(entry["v"], r.value), max(ts, ots)))
                if not entry["m"]:
                    store.put(sk, {"v": entry["v"], "m": True})
                matched = True
            for value, t_out in joined:  # at the later of the two timestamps
                out.append(Record(r.key, value, t_out, r.origin))
        self._wait(kb, ts, side, {"v": r.value, "m": matched})

    def _wait(self, kb: bytes, ts: int, side: int, entry: dict[str, Any]) -> None:
        seq = self.seq
        self.seq += 1
        sk = _entry_key(kb, ts, seq)
        self.stores[side].put(sk, entry)
        insort(self.index[side].setdefault(kb, []), (ts, seq))
        heapq.heappush(self.expiry, (self._expires_at(side, ts), side, sk))

    def _late(self, r: Record, side: int, wm: int) -> None:
        self.ctx.count("late_records_total", policy="drop", operator=self.where)
        log.debug("record.late_dropped", topic=r.origin.topic(), partition=r.origin.partition(),
                  offset=r.origin.offset(), timestamp=r.timestamp, watermark=wm,
                  operator=self.where, side="left" if side == LEFT else "right")

    # -- time ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.index = ({}, {})
        self.expiry = []
        top = -1
        for side, store in enumerate(self.stores):
            for sk, _ in store.items():
                kb, ts, seq = split_entry_key(sk)
                insort(self.index[side].setdefault(kb, []), (ts, seq))
                self.expiry.append((self._expires_at(side, ts), side, sk))
                top = max(top, seq)
        heapq.heapify(self.expiry)
        self.seq = top + 1

    def advance(self, watermark: int, now_ms: int) -> None:
        out: list[Record] = []
        if self.expiry and self.expiry[0][0] <= watermark:
            self._expire(watermark, out)
        if out:
            self.down(out)

    def _expire(self, wm: int, out: list[Record]) -> None:
        expiry = self.expiry
        while expiry and expiry[0][0] <= wm:
            _, side, sk = heapq.heappop(expiry)
            store = self.stores[side]
            entry = store.get(sk)
            kb, ts, seq = split_entry_key(sk)
            waiting = self.index[side].get(kb)
            if waiting is not None:
                i = bisect_left(waiting, (ts, seq))
                if i < len(waiting) and waiting[i] == (ts, seq):
                    del waiting[i]
                if not waiting:
                    del self.index[side][kb]
            if entry is None:
                continue
            store.delete(sk)
            if not entry["m"] and self.emit_unmatched[side]:
                try:
                    value = (self.joiner(entry["v"], None) if side == LEFT
                             else self.joiner(None, entry["v"]))
                except Exception as exc:
                    self.ctx.on_error(Emitted(kb, ts, wm), exc, self.where)
                    continue
                out.append(Record(self.key_decode(kb), value, ts, Emitted(kb, ts, wm)))
