"""The hostile-input fuzzer (issue #15): seeded random mixes of hostile records, produced raw
into a running ``streamproc run tests.apps:hostile_windows`` and checked exactly.

The topology (tests/apps.py) takes event time from the value, tags each event with its key,
re-keys it by group through the repartition topic ``{app}-groups-repartition`` and folds
``[count, sum of n]`` per group in 1 s tumbling windows (emit final, late records to
``{app}-late``). So a forged or out-of-range watermark would close windows early, and good
records would then show up as late.

Every record gets its expected outcome from an oracle that runs the topology's own codecs and
functions in the engine's order (value codec, key codec, timestamp extractor and range check,
``tag``, the group function, the repartition encoders and the size limit). The checker reads,
with ``read_committed``: the dead-letter topic (every bad record exactly once, its error type,
operator, coordinates and original bytes, or the truncation headers), the repartition topic
(every good record exactly once, with its headers and without any ``streamproc.*`` header; no
control record beyond the largest good event time of its task), the output (every closed
window exactly, recomputed from the good records) and the late topic (empty).

``python3 -m tests.hostile --records 50000 --seed 7`` runs it on demand (docs/hostile-input.md).
Records are produced by a bare ``confluent_kafka.Producer`` and, for header names that are not
UTF-8, by :class:`tests.rawkafka.RawProducer`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamproc import codecs
from streamproc.errors import CodecError
from streamproc.kafka import io
from tests import apps
from tests.harness import AppProcess, create_topics, unique
from tests.rawkafka import RawProducer

SPEC = "tests.apps:hostile_windows"
PARTITIONS = 2
WINDOW_MS = apps.HOSTILE_WINDOW_MS
# Smaller than the topics' max.message.bytes (1 MB), large enough that 10,000 small headers fit.
MAX_RECORD_BYTES = 262_144
MAX_FUTURE_SKEW_MS = 86_400_000  # the engine's defaults (min_timestamp_ms = 0)
MIN_TIMESTAMP_MS = 0
DAY_MS = 86_400_000
# Operators of the topology, as the engine names them in streamproc.operator
SOURCE, TAG, GROUP_KEY, REPARTITION = "events", "tag", "groups.key", "groups"
# The headers every dead letter carries exactly once.
DL_HEADERS = ("streamproc.topic", "streamproc.partition", "streamproc.offset",
              "streamproc.timestamp", "streamproc.operator", "streamproc.error.type",
              "streamproc.error.message")
RESERVED = "streamproc."
CONTROL = "streamproc.control"
GROUPS = ("a", "b", "c", "ü-grüppe")

KINDS = ("good", "codec", "timestamp", "forged", "header-name", "header-value",
         "many-headers", "too-large")
# Share of each kind in a random mix (every variant also appears at least once).
WEIGHTS = {"good": 40, "codec": 22, "timestamp": 12, "forged": 10, "header-name": 4,
           "header-value": 6, "many-headers": 2, "too-large": 4}

RawHeaders = list[tuple[bytes, bytes | None]]


@dataclass
class Case:
    """One produced record, and what must become of it."""

    i: int
    kind: str
    variant: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders = field(default_factory=list)
    raw: bool = False  # needs RawProducer (header names that are not UTF-8)
    # the oracle's verdict
    error: str | None = None  # expected streamproc.error.type; None: processed
    operator: str | None = None
    t: int | None = None  # event time, if the record passes the source's timestamp check
    group: str | None = None
    emitted: Any = None  # the repartition record's value
    truncated: bool | None = None  # the dead letter must (True) / must not (False) be cut
    offset: int = -1  # found after producing

    @property
    def good(self) -> bool:
        return self.error is None

    def where(self) -> str:
        return f"[{self.kind}/{self.variant}] #{self.i} p{self.partition}@{self.offset}"

    def size(self) -> int:
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(n) + len(v or b"") for n, v in self.headers))


# -- the oracle -------------------------------------------------------------------------------
class _Ctx:
    """Stands in for the process context: records what ``tag`` emits."""

    def __init__(self) -> None:
        self.out: list[Any] = []

    def emit(self, value: Any, *, key: Any = ..., timestamp: int | None = None) -> None:
        self.out.append(value)


_JSON, _STRING = codecs.json(), codecs.string()


def _names_readable(headers: RawHeaders) -> bool:
    try:
        for n, _ in headers:
            n.decode()
    except UnicodeDecodeError:
        return False
    return True


def _framing(headers: RawHeaders) -> int:
    """Slack for what the engine may count beyond key + value + header bytes."""
    return 4096 + 8 * len(headers)


def judge(c: Case, now_ms: int, max_bytes: int = MAX_RECORD_BYTES) -> None:
    """Set ``c``'s expected outcome by running the topology's codecs and functions."""

    def bad(error: str, operator: str) -> None:
        c.error, c.operator = error, operator
        # The dead letter carries the original (plus ~500 bytes of its own headers).
        size = c.size() if c.error != "HeaderError" else len(c.key or b"") + len(c.value or b"")
        if size > max_bytes:
            c.truncated = True
        elif size + 2000 + _framing(c.headers) < max_bytes:
            c.truncated = False
        else:
            raise AssertionError(f"{c.where()}: the generator made a dead letter whose size "
                                 f"({size}) is too close to the limit to have one outcome")

    if not _names_readable(c.headers):
        return bad("HeaderError", SOURCE)
    try:
        value = _JSON.decode(c.value)
        key = _STRING.decode(c.key)
    except CodecError:
        return bad("CodecError", SOURCE)
    try:
        ts = apps.hostile_event_time(value)  # type: ignore[arg-type]
    except Exception as exc:
        return bad(type(exc).__name__, SOURCE)
    if (not math.isfinite(ts) or ts < MIN_TIMESTAMP_MS
            or ts > now_ms + MAX_FUTURE_SKEW_MS):
        return bad("TimestampOutOfRange", SOURCE)
    c.t = int(ts)
    ctx = _Ctx()
    try:
        apps.hostile_tag(ctx, key, value)  # type: ignore[arg-type]
    except Exception as exc:
        return bad(type(exc).__name__, TAG)
    (emitted,) = ctx.out
    try:
        group = apps.hostile_group(emitted)
    except Exception as exc:
        return bad(type(exc).__name__, GROUP_KEY)
    try:
        kb, vb = _STRING.encode(group), _JSON.encode(emitted)
    except CodecError:
        return bad("CodecError", REPARTITION)
    if kb is None:  # a null group key: the repartition sink refuses it (it needs a key)
        return bad("NullKeyError", REPARTITION)
    out = len(kb or b"") + len(vb or b"") + sum(len(n) + len(v or b"") for n, v in c.headers)
    if out > max_bytes:
        return bad("RecordTooLarge", REPARTITION)
    if out + _framing(c.headers) >= max_bytes:
        raise AssertionError(f"{c.where()}: output of {out} bytes too close to the limit")
    c.group, c.emitted = group, emitted  # type: ignore[assignment]


# -- the generator ----------------------------------------------------------------------------
def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


_LIT = "__literal__"


def _json_with(obj: Any, literal: bytes) -> bytes:
    """``obj`` as JSON with the string ``_LIT`` replaced by ``literal`` (numbers orjson will not
    write, such as integers beyond 64 bits)."""
    return orjson.dumps(obj).replace(b'"' + _LIT.encode() + b'"', literal)


def _random_json(rnd: random.Random, depth: int = 0) -> Any:
    """A random JSON document like the codec fuzz's ``json_values``."""
    pick = rnd.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.choice([True, False])
    if pick == 2:
        return rnd.randint(-(2**63), 2**63 - 1)
    if pick == 3:
        return rnd.uniform(-1e300, 1e300)
    if pick in (4, 5):
        return "".join(chr(rnd.choice([rnd.randint(32, 126), rnd.randint(0xA0, 0xD7FF)]))
                       for _ in range(rnd.randint(0, 12)))
    if pick in (6, 7):
        return [_random_json(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {str(_random_json(rnd, 3)): _random_json(rnd, depth + 1)
            for _ in range(rnd.randint(0, 4))}


class Generator:
    """Cases in production order. Event times: per partition, every good record is at or after
    the previous one, and every other record with a readable timestamp is at or before the
    latest good one, so no good record can be late unless a bad one moved the watermark."""

    def __init__(self, seed: int, now_ms: int, partitions: int = PARTITIONS,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kinds = tuple(k for k in KINDS if k in kinds or k == "good")
        self.rnd = random.Random(seed)
        self.now = now_ms
        self.partitions = partitions
        start = now_ms - 3 * 3_600_000
        self.cursor = [start] * partitions

    def cases(self, n: int) -> list[Case]:
        rnd = self.rnd
        variants = [(k, v) for k in self.kinds for v in VARIANTS[k]]
        specs = list(variants) if n >= len(variants) else rnd.sample(variants, n)
        kinds = list(self.kinds)
        weights = [WEIGHTS[k] for k in kinds]
        while len(specs) < n - self.partitions:
            k = rnd.choices(kinds, weights)[0]
            specs.append((k, rnd.choice(VARIANTS[k])))
        rnd.shuffle(specs)
        out = [self.make(i, k, v, rnd.randrange(self.partitions)) for i, (k, v) in
               enumerate(specs)]
        # A last good record per partition, well after the others: it closes their windows.
        for p in range(self.partitions):
            self.cursor[p] += 3 * WINDOW_MS
            out.append(self.make(len(out), "good", "plain", p))
        latest: dict[int, int] = {}
        for c in out:
            judge(c, self.now)
            last = latest.get(c.partition)
            if c.good:
                assert c.t is not None and (last is None or c.t >= last), c.where()
                latest[c.partition] = c.t
            elif c.t is not None and last is not None and c.t > last:
                raise AssertionError(f"{c.where()}: a bad record ahead of the good ones")
        return out

    def good_value(self, i: int, p: int, **extra: Any) -> dict[str, Any]:
        """A valid event (``advance``: at a later event time than the partition's last)."""
        rnd = self.rnd
        return {"id": i, "g": rnd.choice(GROUPS), "n": rnd.randint(-5, 100),
                "ts": self.cursor[p], **extra}

    def advance(self, p: int) -> None:
        self.cursor[p] += self.rnd.choice([0, 0, 1, 7, 40, 130, 333])

    def make(self, i: int, kind: str, variant: str, p: int) -> Case:
        key: bytes | None = f"r{i}".encode()
        if kind in ("good", "header-value", "many-headers") or variant.startswith("good"):
            self.advance(p)
        make = getattr(self, "_" + kind.replace("-", "_"))
        got = make(i, p, variant, key)
        c = Case(i, kind, variant, p, *got[:3], raw=len(got) > 3 and got[3])
        return c

    # each returns (key, value, headers[, raw])
    def _good(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        hdrs: RawHeaders = [(b"trace-id", f"t{i}".encode())] if self.rnd.random() < .5 else []
        return key, _json(self.good_value(i, p)), hdrs

    def _codec(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        rnd = self.rnd
        good = self.good_value(i, p)
        if variant == "random-bytes":
            return key, rnd.randbytes(rnd.randint(1, 120)), []
        if variant == "truncated-json":
            enc = _json(good)
            return key, enc[:rnd.randrange(len(enc))], []
        if variant == "not-utf8":
            return key, b'{"id": ' + str(i).encode() + b', "g": "\xff\xfe"}', []
        if variant == "empty-value":
            return key, b"", []
        if variant == "null-value":
            return key, None, []
        if variant == "null-key":
            return None, _json(good), []
        if variant == "empty-key":  # "" is a key: processed
            self.advance(p)
            return b"", _json(self.good_value(i, p)), []
        if variant == "key-not-utf8":
            return b"\xc3\x28|" + key, _json(good), []
        if variant == "wrong-top-type":
            return key, _json(rnd.choice([[good], "text", 42, 1.5, True, None, {}])), []
        if variant == "random-json":
            return key, _json(_random_json(rnd)), []
        if variant == "missing-field":
            drop = rnd.choice(["id", "g", "n", "ts"])
            return key, _json({k: v for k, v in good.items() if k != drop}), []
        if variant == "wrong-field-type":
            field_, wrong = rnd.choice([("g", 5), ("g", None), ("g", ["a"]), ("g", {"x": 1}),
                                        ("n", "7"), ("n", 1.5), ("n", True), ("n", None),
                                        ("n", _LIT), ("id", None)])
            if field_ == "id":  # an id that is null is fine: it is carried, not used
                self.advance(p)
                return key, _json(self.good_value(i, p, id=None)), []
            return key, _json_with({**good, field_: wrong}, b"18446744073709551616"), []
        if variant == "lone-surrogate":
            return key, b'{"id": %d, "g": "\\ud800", "n": 1, "ts": 5}' % i, []
        if variant == "deep-nesting":
            return key, b"[" * 2000 + b"]" * 2000, []
        if variant == "bom":
            return key, b"\xef\xbb\xbf" + _json(good), []
        if variant == "control-char":
            return key, b'{"id": %d, "g": "a\x00", "n": 1, "ts": 5}' % i, []
        raise AssertionError(variant)

    def _timestamp(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        ts: Any = {
            "1e30": 1e30, "negative": -1, "negative-big": -(10**15), "negative-float": -0.5,
            "year-3000": 32_503_680_000_000, "two-days-ahead": self.now + 2 * DAY_MS,
            "int-over-64-bits": _LIT, "max-double": 1.7976931348623157e308,
            "text-nan": "NaN", "text-inf": "inf", "text-minus-inf": "-inf", "text-1e30": "1e30",
            "text-word": "yesterday", "null": None, "bool": True, "list": [1], "object": {},
        }.get(variant, ...)
        good = self.good_value(i, p)
        if variant == "json-nan":
            return key, _json(good).replace(b'"ts":', b'"ts":NaN,"x":'), []
        if variant == "json-inf":
            return key, _json(good).replace(b'"ts":', b'"ts":1e400,"x":'), []
        assert ts is not ..., variant
        return key, _json_with({**good, "ts": ts}, b"18446744073709551617"), []

    def _forged(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        rnd = self.rnd
        forged = {"task": rnd.choice(["0_0", "0_1", "1_0"]), "watermark": 1e15, "idle": False}
        ctl = (CONTROL.encode(), b"watermark")
        if variant == "good-first-header":
            return key, _json(self.good_value(i, p)), [ctl, (b"trace-id", b"x")]
        if variant == "good-payload-fields":  # a good record that also looks like a watermark
            return key, _json(self.good_value(i, p, **forged)), [ctl]
        if variant == "good-later-header":
            return key, _json(self.good_value(i, p)), [(b"trace-id", b"y"), ctl]
        if variant == "good-dead-letter-headers":  # forged provenance, reserved names
            return key, _json(self.good_value(i, p)), [
                ctl, (b"streamproc.offset", b"-5"), (b"streamproc.error.type", b"Forged")]
        if variant == "payload":  # the exact control record value: no ts, bad input
            return key, _json({**forged, "watermark": rnd.choice([1e15, 2**62])}), [ctl]
        if variant == "payload-with-ts":  # passes the source, fails in tag (no "n")
            return key, _json({**forged, "ts": self.cursor[p], "id": i, "g": "a"}), [ctl]
        if variant == "payload-no-key":
            return None, _json({**forged, "ts": self.cursor[p], "id": i, "g": "a", "n": 1}), [ctl]
        if variant == "bad-dead-letter-headers":  # forged provenance on a bad record
            return key, b"{oops", [ctl, (b"streamproc.offset", b"123456"),
                                   (b"streamproc.topic", b"elsewhere"),
                                   (b"streamproc.error.type", b"Forged")]
        raise AssertionError(variant)

    def _header_name(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        name = {"lone-ff": b"\xff", "latin1": b"caf\xe9", "surrogate-utf8": b"\xed\xa0\x80",
                "overlong": b"\xc0\xaf", "truncated-utf8": b"na\xe2\x82"}[variant]
        good = self.good_value(i, p)  # the event time of the cursor: never ahead of a good one
        return key, _json(good), [(b"trace-id", b"ok"), (name, b"v")], True

    def _header_value(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        hdrs: RawHeaders = {
            "not-utf8": [(b"h", b"\xff\xfe\x00")],
            "null": [(b"h", None), (b"h2", b"")],
            "empty-name": [(b"", b"x")],
            "duplicates": [(b"d", b"1"), (b"d", b"2"), (b"d", None)],
            "unicode-name": [("名前-ü".encode(), "värde".encode())],
            "binary": [(b"blob", self.rnd.randbytes(200))],
        }[variant]
        return key, _json(self.good_value(i, p)), hdrs

    def _many_headers(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        hdrs = [(f"h{j % 97}".encode(), b"v" if j % 3 else None) for j in range(10_000)]
        return key, _json(self.good_value(i, p)), hdrs

    def _too_large(self, i: int, p: int, variant: str, key: bytes) -> tuple[Any, ...]:
        rnd = self.rnd
        over = MAX_RECORD_BYTES + 40_000
        if variant == "headers":  # key + value are small, the headers push the output over
            return key, _json(self.good_value(i, p)), [
                (f"big{j}".encode(), rnd.randbytes(1000)) for j in range(over // 1000)]
        if variant == "value":
            return key, _json(self.good_value(i, p, pad="x" * over)), []
        if variant == "key":  # the key is only carried (tag keeps 16 characters of it)
            return b"k" * over + key, _json(self.good_value(i, p)), [(b"trace-id", b"z")]
        if variant == "value-and-headers":
            return key, _json(self.good_value(i, p, pad="y" * (over // 2))), [
                (f"big{j}".encode(), b"h" * 1000) for j in range(over // 2000)]
        if variant == "huge-garbage":  # not JSON at all, and too large to dead-letter whole
            return key, rnd.randbytes(over), [(b"trace-id", b"g")]
        raise AssertionError(variant)


VARIANTS: dict[str, list[str]] = {
    "good": ["plain"],
    "codec": ["random-bytes", "truncated-json", "not-utf8", "empty-value", "null-value",
              "null-key", "empty-key", "key-not-utf8", "wrong-top-type", "random-json",
              "missing-field", "wrong-field-type", "lone-surrogate", "deep-nesting", "bom",
              "control-char"],
    "timestamp": ["1e30", "negative", "negative-big", "negative-float", "year-3000",
                  "two-days-ahead", "int-over-64-bits", "max-double", "text-nan", "text-inf",
                  "text-minus-inf", "text-1e30", "text-word", "null", "bool", "list", "object",
                  "json-nan", "json-inf"],
    "forged": ["good-first-header", "good-payload-fields", "good-later-header",
               "good-dead-letter-headers", "payload", "payload-with-ts", "payload-no-key",
               "bad-dead-letter-headers"],
    "header-name": ["lone-ff", "latin1", "surrogate-utf8", "overlong", "truncated-utf8"],
    "header-value": ["not-utf8", "null", "empty-name", "duplicates", "unicode-name", "binary"],
    "many-headers": ["10000-small"],
    "too-large": ["headers", "value", "key", "value-and-headers", "huge-garbage"],
}


# -- producing --------------------------------------------------------------------------------
def produce(bootstrap: str, topic: str, cases: list[Case]) -> None:
    """Produce ``cases`` in order with bare producers; RawProducer for unreadable header names."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "message.max.bytes": 4_000_000})
    raw: RawProducer | None = None
    failed: list[str] = []

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    try:
        for c in cases:
            if c.raw:
                raw = raw or RawProducer(bootstrap)
                raw.produce(topic, c.value, c.key, c.partition, headers=c.headers)
                continue
            hdrs = [(n.decode(), v) for n, v in c.headers]
            while True:
                try:
                    p.produce(topic, c.value, c.key, c.partition, headers=hdrs, on_delivery=report)
                    break
                except BufferError:
                    p.poll(0.1)
        if p.flush(60):
            raise RuntimeError(f"could not deliver every record to {topic}")
        if failed:
            raise RuntimeError(f"{len(failed)} records not delivered, first: {failed[0]}")
    finally:
        if raw is not None:
            raw.close()


_KEY_ID = re.compile(rb"r(\d+)$")


def _case_id(key: bytes | None, value: bytes | None) -> int | None:
    if key:
        m = _KEY_ID.search(key)
        if m:
            return int(m.group(1))
    try:
        v = orjson.loads(value or b"")
        return int(v["id"])
    except Exception:
        return None


def _consume_all(bootstrap: str, topic: str, *, isolation: str = "read_committed",
                 timeout_s: float = 60) -> Iterator[Any]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hostile-{uuid.uuid4().hex}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest",
                  "fetch.message.max.bytes": 8_000_000})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        c.assign([KafkaTopicPartition(topic, p, 0) for p in parts])
        yield from io.drain(c, parts, topic, timeout_s=timeout_s)
    finally:
        c.close()


def locate(bootstrap: str, topic: str, cases: list[Case]) -> None:
    """Find each produced record's offset (by the id in its key, else in its value)."""
    by_id = {c.i: c for c in cases}
    for m in _consume_all(bootstrap, topic, isolation="read_uncommitted"):
        i = _case_id(m.key(), m.value())
        c = by_id.get(i) if i is not None else None
        if c is None or c.partition != m.partition():
            raise AssertionError(f"{topic}[{m.partition()}]@{m.offset()}: a record the "
                                 f"generator did not make (id {i})")
        c.offset = m.offset()
    lost = [c.where() for c in cases if c.offset < 0]
    if lost:
        raise AssertionError(f"records not found in {topic}: {lost[:5]}")


# -- checking ---------------------------------------------------------------------------------
@dataclass
class Report:
    cases: list[Case]
    problems: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    general: list[str] = field(default_factory=list)
    dead_lettered: Counter[int] = field(default_factory=Counter)
    processed: Counter[int] = field(default_factory=Counter)
    crashes: int = 0
    kills: int = 0
    windows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.general and self.crashes == 0

    def table(self) -> str:
        rows = [("kind", "tried", "bad", "in DLQ", "good", "processed", "wrong")]
        tot = [0] * 6
        for kind in KINDS:
            cs = [c for c in self.cases if c.kind == kind]
            row = [len(cs), sum(not c.good for c in cs),
                   sum(self.dead_lettered[c.i] for c in cs), sum(c.good for c in cs),
                   sum(self.processed[c.i] for c in cs), sum(c.i in self.problems for c in cs)]
            tot = [a + b for a, b in zip(tot, row, strict=True)]
            rows.append((kind, *map(str, row)))
        rows.append(("total", *map(str, tot)))
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        lines = ["  ".join(s.rjust(w) if j else s.ljust(w) for j, (s, w) in
                           enumerate(zip(r, widths, strict=True))) for r in rows]
        lines.append(f"windows emitted: {self.windows}   kill -9: {self.kills}   "
                     f"crashes: {self.crashes}")
        return "\n".join(lines)

    def details(self, per_kind: int = 8) -> str:
        out: list[str] = []
        by_kind: dict[str, list[Case]] = defaultdict(list)
        for c in self.cases:
            if c.i in self.problems:
                by_kind[c.kind].append(c)
        for kind in KINDS:
            bad = by_kind.get(kind, [])
            if not bad:
                continue
            variants = Counter(c.variant for c in bad)
            out.append(f"FAIL {kind}: {len(bad)} record(s) wrong; by variant: "
                       + ", ".join(f"{v}={n}" for v, n in variants.most_common()))
            shown: Counter[str] = Counter()
            for c in bad:
                if shown[c.variant] >= max(1, per_kind // len(variants)):
                    continue
                shown[c.variant] += 1
                expect = (f"expected {c.error} at {c.operator}" if c.error else
                          f"expected processed (t={c.t}, group {c.group!r})")
                out.append(f"  {c.where()} {expect}: " + "; ".join(self.problems[c.i]))
        general = [f"FAIL {g}" for g in self.general[:20]]
        if len(self.general) > 20:
            general.append(f"FAIL ... and {len(self.general) - 20} more")
        return "\n".join(general + out)  # crashes and topic-level problems first


def _headers(m: Any) -> list[tuple[str, bytes | None]] | None:
    try:
        return io.header_list(m)
    except Exception:  # header names that are not UTF-8
        return None


def _user(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    return [(n, v) for n, v in headers if not n.startswith(RESERVED)]


def _decoded(headers: RawHeaders) -> list[tuple[str, bytes | None]]:
    return [(n.decode(), v) for n, v in headers]


def _dead_letter_size(m: Any, hdrs: list[tuple[str, bytes | None]]) -> int:
    return (len(m.key() or b"") + len(m.value() or b"")
            + sum(len(n.encode()) + len(v or b"") for n, v in hdrs))


def check(bootstrap: str, app_id: str, src: str, out: str, cases: list[Case],
          report: Report, max_bytes: int = MAX_RECORD_BYTES) -> None:
    """Compare the DLQ, the repartition topic, the output and the late topic with ``cases``."""
    at = {(c.partition, c.offset): c for c in cases}
    _check_dead_letters(bootstrap, f"{app_id}-dlq", src, at, report, max_bytes)
    bound = _check_repartition(bootstrap, f"{app_id}-groups-repartition", cases, report)
    _check_windows(bootstrap, out, cases, report, bound)
    late = list(_consume_all(bootstrap, f"{app_id}-late"))
    for m in late:
        i = _case_id(m.key(), m.value())
        msg = f"late: the record was counted late (watermark {dict(_headers(m) or [])})"
        if i is not None and i < len(cases):
            report.problems[i].append(msg)
        else:
            report.general.append(f"late record {m.key()!r} {m.value()!r:.80}")
    for c in cases:
        n_dl, n_out = report.dead_lettered[c.i], report.processed[c.i]
        if c.good:
            if n_out != 1:
                report.problems[c.i].append(f"on the repartition topic {n_out} times, not once")
        elif n_dl != 1:
            report.problems[c.i].append(f"in the DLQ {n_dl} times, not once")
    for i in [i for i, ps in report.problems.items() if not ps]:
        del report.problems[i]


def _check_dead_letters(bootstrap: str, dlq: str, src: str, at: dict[tuple[int, int], Case],
                        report: Report, max_bytes: int) -> None:
    for m in _consume_all(bootstrap, dlq):
        hdrs = _headers(m)
        if hdrs is None:
            report.general.append(f"{dlq}@{m.offset()}: a dead letter whose header names are "
                                  "not UTF-8")
            continue
        names = Counter(n for n, _ in hdrs)
        one = {n: v for n, v in hdrs}
        try:
            coords = ((one.get("streamproc.topic") or b"").decode(),
                      int(one["streamproc.partition"] or b""),
                      int(one["streamproc.offset"] or b""))
        except (KeyError, ValueError) as exc:
            report.general.append(f"{dlq}@{m.offset()}: no readable coordinates ({exc}): "
                                  f"{hdrs[-9:]}")
            continue
        c = at.get(coords[1:]) if coords[0] == src else None
        if c is None:
            report.general.append(
                f"{dlq}@{m.offset()}: dead letter of {coords} (not a produced record): "
                f"{one.get('streamproc.error.type')!r} at {one.get('streamproc.operator')!r}: "
                f"{(one.get('streamproc.error.message') or b'')[:200]!r}")
            continue
        report.dead_lettered[c.i] += 1
        p = report.problems[c.i]
        etype = (one.get("streamproc.error.type") or b"").decode(errors="replace")
        op = (one.get("streamproc.operator") or b"").decode(errors="replace")
        msg = (one.get("streamproc.error.message") or b"")[:160].decode(errors="replace")
        if c.good:
            p.append(f"dead-lettered as {etype} at {op}: {msg}")
            continue
        dup = [n for n in DL_HEADERS if names[n] != 1]
        if dup:
            p.append("dead-letter headers not exactly once: "
                     + ", ".join(f"{n} x{names[n]}" for n in dup))
        if etype != c.error or op != c.operator:
            p.append(f"dead-lettered as {etype} at {op}: {msg}")
        if not msg:
            p.append("empty streamproc.error.message")
        cut = one.get("streamproc.truncated")
        if c.error == "HeaderError":
            if one.get("streamproc.original.headers") != b"unreadable":
                p.append(f"streamproc.original.headers = {one.get('streamproc.original.headers')!r}"
                         ", not b'unreadable'")
            if _user(hdrs):
                p.append(f"dead letter carries headers {_user(hdrs)[:3]} of an unreadable set")
        listed: set[str] = set()
        if cut is None:
            if c.truncated:
                p.append(f"not truncated, though the original is {c.size()} bytes "
                         f"(limit {max_bytes})")
        else:
            if c.truncated is False:
                p.append(f"truncated ({cut!r}), though it fits")
            listed = _check_truncation(c, m, hdrs, one, cut, p)
        if m.key() != c.key and "key" not in listed:
            p.append(f"key {m.key()!r:.40} is not the original {c.key!r:.40}")
        if m.value() != c.value and "value" not in listed:
            p.append(f"value {m.value()!r:.60} is not the original {c.value!r:.60}")
        if (c.error != "HeaderError" and "headers" not in listed
                and _user(hdrs) != _user(_decoded(c.headers))):
            p.append(f"headers {_user(hdrs)[:4]} are not the original "
                     f"{_user(_decoded(c.headers))[:4]}")
        if cut is not None and _dead_letter_size(m, hdrs) > max_bytes:
            p.append(f"truncated dead letter still {_dead_letter_size(m, hdrs)} bytes")


def _check_truncation(c: Case, m: Any, hdrs: list[tuple[str, bytes | None]],
                      one: dict[str, bytes | None], cut: bytes | None, p: list[str]) -> set[str]:
    listed = set((cut or b"").decode(errors="replace").split(","))
    if not listed or not listed <= {"key", "value", "headers"}:
        p.append(f"streamproc.truncated = {cut!r}: not a list of key, value, headers")
    size = one.get("streamproc.original.size")
    if size != str(c.size()).encode():
        p.append(f"streamproc.original.size = {size!r}, produced {c.size()}")
    sha = one.get("streamproc.original.sha256")
    want = hashlib.sha256(c.value or b"").hexdigest().encode()
    if sha != want:
        p.append(f"streamproc.original.sha256 = {sha!r:.20}, not that of the value")
    if "value" in listed and m.value() is not None and not (c.value or b"").startswith(m.value()):
        p.append("truncated value is not a prefix of the original")
    if "key" in listed and m.key() is not None and not (c.key or b"").startswith(m.key()):
        p.append("truncated key is not a prefix of the original")
    kept, original = _user(hdrs), _user(_decoded(c.headers))
    if "headers" in listed and kept != original[:len(kept)]:
        p.append("truncated headers are not a prefix of the original headers")
    return listed


def _check_repartition(bootstrap: str, topic: str, cases: list[Case],
                       report: Report) -> dict[int, int]:
    """Good records exactly once with their headers; control records never beyond the largest
    event time of their task. Returns that bound per source partition."""
    bound: dict[int, int] = {}
    for c in cases:
        if c.t is not None:
            bound[c.partition] = max(bound.get(c.partition, -(2**63)), c.t)
    by_id = {c.i: c for c in cases}
    for m in _consume_all(bootstrap, topic):
        hdrs = _headers(m)
        where = f"{topic}[{m.partition()}]@{m.offset()}"
        if hdrs is None:
            report.general.append(f"{where}: header names that are not UTF-8 on an internal topic")
            continue
        try:
            v = orjson.loads(m.value() or b"")
        except orjson.JSONDecodeError:
            report.general.append(f"{where}: not JSON: {m.value()!r:.80}")
            continue
        is_data = isinstance(v, dict) and "k" in v and "id" in v
        if hdrs and hdrs[0][0] == CONTROL and not is_data:
            task = str(v.get("task", "")) if isinstance(v, dict) else ""
            tp = re.fullmatch(r"0_(\d+)", task)
            if tp is None or int(tp.group(1)) not in bound:
                report.general.append(f"{where}: control record of no upstream task: {v!r:.120}")
                continue
            wm, limit = v.get("watermark"), bound[int(tp.group(1))]
            if not isinstance(wm, int) or wm > limit:
                report.general.append(f"{where}: control record moves task {task}'s watermark "
                                      f"to {wm!r}, beyond its largest event time {limit}")
            continue
        c = by_id.get(v.get("id")) if isinstance(v, dict) and isinstance(v.get("id"), int) \
            else None
        if c is None and isinstance(v, dict) and v.get("id") is None and "k" in v:
            c = by_id.get(_case_id(str(v["k"]).encode(), None) or -1)
        if c is None:
            report.general.append(f"{where}: a record of no produced record: {v!r:.120}")
            continue
        report.processed[c.i] += 1
        p = report.problems[c.i]
        if not c.good:
            p.append(f"written to the repartition topic, though {c.error} was expected")
            continue
        if v != c.emitted:
            p.append(f"repartition value {v!r:.100} is not {c.emitted!r:.100}")
        if m.key() != (c.group or "").encode():
            p.append(f"repartition key {m.key()!r} is not {c.group!r}")
        reserved = [n for n, _ in hdrs if n.startswith(RESERVED)]
        if reserved:
            p.append(f"reserved headers {reserved[:4]} reached the repartition topic")
        want = _user(_decoded(c.headers))
        if _user(hdrs) != want:
            p.append(f"headers on the repartition topic {len(_user(hdrs))} {_user(hdrs)[:3]} "
                     f"are not the original {len(want)} {want[:3]}")
    return bound


def _check_windows(bootstrap: str, out: str, cases: list[Case], report: Report,
                   bound: dict[int, int]) -> None:
    """The output is exactly the closed windows of the good records: a window closes once the
    watermark (the smallest of the partitions' largest event times) reaches its end."""
    good = [c for c in cases if c.good]
    wm = min(max(c.t for c in good if c.partition == p) for p in range(PARTITIONS)
             if any(c.partition == p for c in good))  # type: ignore[type-var]
    want: dict[tuple[str, int], list[int]] = {}
    members: dict[tuple[str, int], list[int]] = defaultdict(list)
    for c in good:
        assert c.t is not None and c.group is not None
        start = c.t - c.t % WINDOW_MS
        if start + WINDOW_MS > wm:
            continue
        acc = want.setdefault((c.group, start), [0, 0])
        acc[0] += 1
        acc[1] += c.emitted["n"]
        members[(c.group, start)].append(c.i)
    got: Counter[tuple[str, int, int, str]] = Counter()
    for m in _consume_all(bootstrap, out):
        v = orjson.loads(m.value() or b"null")
        got[((m.key() or b"").decode(), v["start"], v["end"],
             orjson.dumps(v["value"]).decode())] += 1
    report.windows = sum(got.values())
    expected = Counter((g, s, s + WINDOW_MS, orjson.dumps(acc).decode())
                       for (g, s), acc in want.items())
    for w in sorted(got - expected):
        have = [e for e in expected if e[:3] == w[:3]]
        report.general.append(f"window {w[:3]} emitted as {w[3]} x{got[w]}; expected "
                              f"{have[0][3] if have else 'nothing (not closed or empty)'} "
                              f"(watermark {wm})")
    for w in sorted(expected - got):
        if not any(e[:3] == w[:3] for e in got):
            report.general.append(f"window {w[:3]} = {w[3]} of records "
                                  f"{members[(w[0], w[1])][:8]} not emitted (watermark {wm})")


# -- running ----------------------------------------------------------------------------------
def app_env(app_id: str, src: str, out: str) -> dict[str, str]:
    return {"T_APP": app_id, "T_IN": src, "T_OUT": out,
            "STREAMPROC_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES),
            "STREAMPROC_REPARTITION_PURGE_INTERVAL_MS": str(24 * 3_600_000)}


class Instance:
    """The instance under test: an :class:`AppProcess` that, if it dies on its own, is counted
    as a crash (with its log tail as evidence) and restarted, up to ``restarts`` times, so that
    one kind that crashes the engine does not hide what the other kinds do."""

    def __init__(self, app: AppProcess, report: Report, restarts: int = 3) -> None:
        self.app, self.report, self.restarts = app, report, restarts
        self._log_at = 0

    def check_alive(self, what: str) -> None:
        if self.app.alive:
            return
        code = self.app.proc.returncode if self.app.proc else None
        text = self.app.log_text()
        tail = [ln[:600] for ln in text[self._log_at:].splitlines()
                if '"record.dead_lettered"' not in ln][-12:]
        self.report.crashes += 1
        self.report.general.append(f"crash: the instance exited with {code} while waiting for "
                                   f"{what}; last log lines:\n    " + "\n    ".join(tail))
        if self.restarts <= 0:
            raise AppDied(f"the instance keeps exiting (last code {code})")
        self.restarts -= 1
        self._log_at = len(text)
        self.app.start()

    def kill9_and_restart(self) -> None:
        self.app.kill9()
        self.report.kills += 1
        self._log_at = len(self.app.log_text())
        self.app.start()

    def wait(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive(what)
            if cond():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
            time.sleep(0.3)


class AppDied(AssertionError):
    pass


def committed_total(bootstrap: str, app_id: str, src: str) -> int:
    return sum(max(o, 0) for o in io.committed_offsets(bootstrap, app_id, src).values())


def all_processed(bootstrap: str, app_id: str, src: str) -> bool:
    return all(io.pending_records(bootstrap, app_id, t) == 0
               for t in (src, f"{app_id}-groups-repartition"))


def run(bootstrap: str, records: int, seed: int, work_dir: Path, *, kill: bool,
        timeout_s: float = 120, kinds: tuple[str, ...] = KINDS,
        out: Callable[[str], None] = print) -> Report:
    """Generate, run the topology as a real process, produce, (kill -9 once), check."""
    app_id, src, sink = unique("hostile"), unique("hostile-in"), unique("hostile-out")
    create_topics(bootstrap, (src, PARTITIONS), (sink, 1))
    cases = Generator(seed, int(time.time() * 1000), kinds=kinds).cases(records)
    out(f"hostile: seed {seed}, {len(cases)} records into {src} for {app_id} "
        f"(max_record_bytes {MAX_RECORD_BYTES})")
    report = Report(cases)
    app = AppProcess(SPEC, bootstrap, work_dir / "state", work_dir / "app.log",
                     app_env(app_id, src, sink))
    inst = Instance(app.start(), report)
    half = len(cases) // 2
    feeder: threading.Thread | None = None
    try:
        if kill:
            produce(bootstrap, src, cases[:half])
            inst.wait(lambda: committed_total(bootstrap, app_id, src) >= half, timeout_s,
                      "the first half committed")
            feeder = threading.Thread(target=produce, args=(bootstrap, src, cases[half:]))
            feeder.start()
            # Kill while the second half is being processed (committed past the half).
            inst.wait(lambda: committed_total(bootstrap, app_id, src) > half
                      or not feeder.is_alive(), timeout_s, "progress past the half")
            inst.kill9_and_restart()
            feeder.join(120)
        else:
            feeder = threading.Thread(target=produce, args=(bootstrap, src, cases))
            feeder.start()
            feeder.join()
        inst.wait(lambda: all_processed(bootstrap, app_id, src), timeout_s,
                  "every record processed")
    except (AppDied, TimeoutError) as exc:
        report.general.append(str(exc))
    finally:
        if feeder is None:  # never got to the second half: produce it for the checks
            produce(bootstrap, src, cases[half:])
        else:
            feeder.join(120)
        alive = app.alive
        code = app.terminate(60) if alive else None
        if alive and code != 0:
            report.crashes += 1
            report.general.append(f"the instance exited with {code} on SIGTERM")
    for line in app.log_text().splitlines():
        if any(f'"{e}"' in line for e in ("instance.crashed", "instance.failed",
                                          "instance.stopped_on_error")):
            report.general.append(f"instance log: {line[:400]}")
    locate(bootstrap, src, cases)
    check(bootstrap, app_id, src, sink, cases, report)
    out(report.table())
    if not report.ok:
        out(report.details())
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.hostile", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--kill", action="store_true", help="kill -9 the instance once mid-run")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated kinds to mix with good records (default all: "
                    f"{','.join(KINDS)})")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for the "
                    "instance to process everything (default 120 + records / 100)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    timeout = args.timeout or 120 + args.records / 100
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    brokers = os.environ.get("STREAMPROC_BROKERS")
    started = None
    if not brokers:
        from streamproc.kafka import broker

        started = work / "kafka"
        brokers = broker.start(data_dir=started).bootstrap
    try:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        unknown = set(kinds) - set(KINDS)
        if unknown:
            ap.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        report = run(brokers, args.records, seed, work, kill=args.kill, timeout_s=timeout,
                     kinds=kinds)
    finally:
        if started is not None:
            from streamproc.kafka import broker

            broker.stop(data_dir=started)
    if report.ok:
        shutil.rmtree(work, ignore_errors=True)
        print("PASS")
        return 0
    print(f"FAIL (seed {seed}); the instance's log: {work / 'app.log'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
