"""The oracle: what the committed input says every output must be, read from outside.

- :func:`read_input` recounts the input topic as it is on the cluster (what the feeder's
  producer actually wrote), so the expected results never trust the harness's bookkeeping.
- :class:`Outputs` reads the outputs with ``read_committed`` incrementally (one consumer for
  the whole run, O(keys + windows) memory), flagging each duplicate and gap as it arrives.
- :func:`verdict` compares the two: records in, outputs, duplicates, losses.
- :func:`stores_match_changelog` checks invariant 2 of the engine contract on every local
  store left behind: its RocksDB content equals its changelog applied up to the offset stored
  with it.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from reliability.harness import App, quiet
from reliability.topology import FLUSH_GROUP, window_of


def _reader(bootstrap: str) -> Consumer:
    return Consumer(quiet({"bootstrap.servers": bootstrap, "group.id": "reliability-reader",
                           "enable.auto.commit": False, "isolation.level": "read_committed",
                           "enable.partition.eof": False, "fetch.max.bytes": 52_428_800}))


def _assign_all(c: Consumer, topics: list[str]) -> list[TopicPartition]:
    parts = []
    md = c.list_topics(timeout=30)
    for t in topics:
        info = md.topics.get(t)
        if info is None or info.error is not None:
            continue  # e.g. the late topic before anything was late: read as empty
        parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in info.partitions]
    c.assign(parts)
    return parts


def _ends(c: Consumer, parts: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """High watermarks (for read_committed reads, up to the last stable offset: we stop when
    the position reaches it, control records included)."""
    return {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=30)[1] for tp in parts}


@dataclass
class Truth:
    records: int = 0
    per_key: Counter[str] = field(default_factory=Counter)
    per_window: Counter[tuple[str, int]] = field(default_factory=Counter)


def read_input(app: App, timeout_s: float = 300) -> Truth:
    """Every record of the input topic, counted per key and per (group, window)."""
    c = _reader(app.bootstrap)
    truth = Truth()
    try:
        parts = _assign_all(c, [app.source])
        ends = _ends(c, parts)
        pos = {k: 0 for k in ends}
        deadline = time.monotonic() + timeout_s
        while any(pos[k] < e for k, e in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"input {app.source} not read in {timeout_s:.0f} s")
            for m in c.consume(10_000, 1.0):
                if m.error() is not None:
                    continue
                pos[(m.topic(), m.partition())] = m.offset() + 1
                truth.records += 1
                truth.per_key[(m.key() or b"").decode()] += 1
                e = json.loads(m.value())
                if e["g"] != FLUSH_GROUP:
                    truth.per_window[(e["g"], window_of(e["ts"]))] += 1
    finally:
        c.close()
    return truth


class Outputs:
    """The committed outputs so far; call :meth:`poll` to read what arrived since."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.last: dict[str, int] = {}  # key -> last running count seen
        self.count_records = 0
        self.count_duplicates = 0  # a running count that does not move past the last one
        self.count_gaps = 0  # a running count that skips past last + 1 (a lost update)
        self.windows: dict[tuple[str, int], int] = {}
        self.window_duplicates = 0
        self.late: Counter[tuple[str, int]] = Counter()
        self.dead_letters = 0
        self.examples: list[str] = []
        self._consumer = _reader(app.bootstrap)
        self._assigned: set[str] = set()

    def _assign(self) -> None:
        # The late and dead-letter topics exist once the application has started: assign
        # them once they do (incremental_assign keeps the positions of the others).
        want = [t for t in (self.app.counts, self.app.windows, self.app.late, self.app.dlq)
                if t not in self._assigned]
        md = self._consumer.list_topics(timeout=10)
        new = []
        for t in want:
            info = md.topics.get(t)
            if info is not None and info.error is None:
                new += [TopicPartition(t, p, OFFSET_BEGINNING) for p in info.partitions]
                self._assigned.add(t)
        if new:
            self._consumer.incremental_assign(new)

    def _note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def poll(self, seconds: float = 1.0) -> int:
        """Read for up to ``seconds``; the number of records read."""
        if len(self._assigned) < 4:
            self._assign()
        n = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msgs = self._consumer.consume(10_000, 0.2)
            if not msgs:
                break
            for m in msgs:
                if m.error() is None:
                    n += 1
                    self._record(m)
        return n

    def _record(self, m: Any) -> None:
        topic = m.topic()
        if topic == self.app.counts:
            key = (m.key() or b"").decode()
            value = json.loads(m.value())
            last = self.last.get(key, 0)
            self.count_records += 1
            if value <= last:
                self.count_duplicates += 1
                self._note(f"count of {key} went {last} -> {value} (a duplicate)")
            else:
                if value > last + 1:
                    self.count_gaps += value - last - 1
                    self._note(f"count of {key} went {last} -> {value} (updates lost)")
                self.last[key] = value
        elif topic == self.app.windows:
            w = json.loads(m.value())
            where = ((m.key() or b"").decode(), w["start"])
            if where in self.windows:
                self.window_duplicates += 1
                self._note(f"window {where} emitted twice: {self.windows[where]}, {w['value']}")
            self.windows[where] = w["value"]
        elif topic == self.app.late:
            e = json.loads(m.value())
            self.late[(e["g"], window_of(e["ts"]))] += 1
        else:
            self.dead_letters += 1
            self._note(f"dead letter: {dict(m.headers() or [])}")

    def complete(self, truth: Truth) -> bool:
        """Every key at its final count and every window accounted for (emitted or late)."""
        if any(self.last.get(k, 0) < n for k, n in truth.per_key.items()):
            return False
        return all(self.windows.get(w, 0) + self.late[w] >= n
                   for w, n in truth.per_window.items())

    def close(self) -> None:
        self._consumer.close()


def verdict(truth: Truth, out: Outputs) -> dict[str, Any]:
    """The scenario's figures; ``exact`` when nothing was lost, duplicated or dead-lettered."""
    lost_updates = sum(max(0, n - out.last.get(k, 0)) for k, n in truth.per_key.items())
    unknown_keys = sorted(set(out.last) - set(truth.per_key))
    window_wrong = {w: (out.windows.get(w, 0), out.late[w], n)
                    for w, n in truth.per_window.items()
                    if out.windows.get(w, 0) + out.late[w] != n}
    extra_windows = sorted(set(out.windows) - set(truth.per_window)
                           - {w for w in out.windows if w[0] == FLUSH_GROUP})
    duplicates = out.count_duplicates + out.window_duplicates
    losses = lost_updates + out.count_gaps + sum(max(0, n - got - late) for got, late, n
                                                 in window_wrong.values())
    examples = list(out.examples)
    examples += [f"window {w}: emitted {g}, late {lt}, input {n}"
                 for w, (g, lt, n) in list(window_wrong.items())[:5]]
    examples += [f"output for a key not in the input: {k}" for k in unknown_keys[:3]]
    return {
        "records_in": truth.records, "count_outputs": out.count_records,
        "windows_expected": len(truth.per_window), "windows_emitted": len(out.windows),
        "late_records": sum(out.late.values()), "dead_letters": out.dead_letters,
        "duplicates": duplicates, "losses": losses,
        "wrong_windows": len(window_wrong) + len(extra_windows),
        "exact": (duplicates == 0 and losses == 0 and not window_wrong and not extra_windows
                  and not unknown_keys and out.dead_letters == 0
                  and out.count_records == truth.records),
        "problems": examples}


# --------------------------------------------------------------------------- stores
_OFFSET = struct.Struct(">q")


def _changelog(app: App, store: str, partition: int, upto: int) -> dict[bytes, bytes]:
    """The changelog partition applied (last write wins, tombstones delete) below ``upto``."""
    topic = f"{app.app_id}-{store}-changelog"
    c = _reader(app.bootstrap)
    state: dict[bytes, bytes] = {}
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        end = min(upto, c.get_watermark_offsets(TopicPartition(topic, partition), 30)[1])
        pos = 0
        deadline = time.monotonic() + 120
        while pos < end and time.monotonic() < deadline:
            # position() passes the control records that consume() never returns
            for m in c.consume(10_000, 0.5):
                if m.error() is not None or m.offset() >= upto:
                    continue
                if m.value() is None:
                    state.pop(m.key(), None)
                else:
                    state[m.key()] = m.value()
            got = c.position([TopicPartition(topic, partition)])[0].offset
            pos = max(pos, got)
    finally:
        c.close()
    return state


def stores_match_changelog(app: App, state_dirs: list[Path]) -> dict[str, Any]:
    """Every (store, partition) database under the stopped instances' state dirs against its
    changelog up to the offset stored with it."""
    import rocksdict

    checked, mismatched, problems = 0, 0, []
    for root in state_dirs:
        base = root / app.app_id
        if not base.is_dir():
            continue
        for store_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for part_dir in sorted(p for p in store_dir.iterdir() if p.name.isdigit()):
                opts = rocksdict.Options(raw_mode=True)
                db = rocksdict.Rdict(str(part_dir), options=opts,
                                     column_families={"meta": rocksdict.Options(raw_mode=True)},
                                     access_type=rocksdict.AccessType.read_only())
                try:
                    raw = db.get_column_family("meta").get(b"changelog-next-offset")
                    upto = 0 if raw is None else _OFFSET.unpack(raw)[0]
                    local = dict(db.items())
                finally:
                    db.close()
                expected = _changelog(app, store_dir.name, int(part_dir.name), upto)
                checked += 1
                if local != expected:
                    mismatched += 1
                    diff = sorted(set(local.items()) ^ set(expected.items()))[:3]
                    problems.append(f"{part_dir}: {len(local)} keys in RocksDB, {len(expected)} "
                                    f"in the changelog below {upto}; e.g. {diff}")
    return {"stores_checked": checked, "stores_mismatched": mismatched,
            "store_problems": problems}
