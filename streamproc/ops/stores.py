"""Queryable state, the part that needs no HTTP: which stores a topology has, how a key given
as text becomes the store's key bytes, which partition holds it, and reading one partition's
committed entries (key-value or window layout) into JSON-able rows.

Everything here is a pure function or reads through
:meth:`~streamproc.state.store.KeyValueStore.read_committed` / ``scan``, which are safe from the
HTTP thread. streamproc/ops/query.py turns it into routes.
"""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streamproc.codecs.base import Codec
from streamproc.codecs.basic import JsonCodec, RawCodec
from streamproc.graph.compile import CompiledTopology
from streamproc.graph.nodes import AggregateNode, ProcessNode, TableNode, WindowNode
from streamproc.kafka.partitioner import partition_for
from streamproc.state.store import KeyValueStore
from streamproc.state.windowed import WindowState, split_window_key

StoreKind = Literal["key-value", "window", "timers", "time"]
_START = struct.Struct(">q")
_WINDOW_KEY_BYTES = 16  # start and end, big-endian signed 64-bit (state/windowed.py)
_FIRST_NEGATIVE = b"\x80"  # the first byte of every negative big-endian start
MAX_TIME = 2**63 - 1


class BadQuery(ValueError):
    """The request cannot be answered as asked (HTTP 400); the message says why."""


@dataclass(frozen=True)
class StoreInfo:
    """A store as queries see it: kind, codecs, the sub-topology whose tasks hold it."""

    name: str
    kind: StoreKind
    subtopology: int
    operator: str | None
    key_codec: Codec
    value_codec: Codec
    result: Callable[[Any], Any] | None = None  # a window node's result function
    window: dict[str, Any] | None = None

    @property
    def queryable(self) -> bool:
        return self.kind in ("key-value", "window")

    def describe(self) -> dict[str, Any]:
        value = self.value_codec
        inner = getattr(value, "inner", None)  # a window store's values: the accumulator's
        return {"name": self.name, "kind": self.kind, "queryable": self.queryable,
                "subtopology": self.subtopology, "operator": self.operator,
                "key_codec": self.key_codec.name,
                "value_codec": (inner.name if inner is not None else value.name),
                **({"window": self.window} if self.window is not None else {})}


def catalog(compiled: CompiledTopology) -> dict[str, StoreInfo]:
    """Every store of the topology, by name. Keyed operators store each key under the bytes it
    was consumed with (the source's or the repartition's key encoding), so their key codec
    is the node's; timer and watermark stores are internal (listed, not queryable by key)."""
    out: dict[str, StoreInfo] = {}
    for st in compiled.subtopologies:
        for node in st.nodes:
            if isinstance(node, AggregateNode | TableNode) and node.store is not None:
                out[node.store.name] = StoreInfo(
                    node.store.name, "key-value", st.id, node.name,
                    node.key_codec or RawCodec(), node.store.value_codec)
            elif isinstance(node, WindowNode) and node.store is not None:
                assert node.window is not None
                out[node.store.name] = StoreInfo(
                    node.store.name, "window", st.id, node.name, node.key_codec or JsonCodec(),
                    node.store.value_codec, node.result, node.window.describe())
            elif isinstance(node, ProcessNode) and node.store is not None:
                out[node.store.name] = StoreInfo(
                    node.store.name, "key-value", st.id, node.name,
                    node.key_codec or RawCodec(), node.store.value_codec)
                timers = node.timer_store
                if timers is not None:
                    out[timers.name] = StoreInfo(timers.name, "timers", st.id, node.name,
                                                 RawCodec(), timers.value_codec)
        for spec in st.stores:
            if spec.name not in out:  # the sub-topology's watermark store
                out[spec.name] = StoreInfo(spec.name, "time", st.id, None, RawCodec(),
                                           spec.value_codec)
    return out


# -- keys -------------------------------------------------------------------------------------
def encode_key(info: StoreInfo, text: str | None = None, json_text: str | None = None) -> bytes:
    """The store key bytes of a key given in a URL. ``json_text`` (``?key_json=``) is a JSON
    literal encoded with the key codec. ``text`` is tried as a string, then (a codec that
    takes no strings) as its UTF-8 bytes (raw keys), then as a JSON literal (``42`` for an
    integer key). Raises :class:`BadQuery` naming the codec."""
    codec = info.key_codec
    # (candidate, whether its failure explains best why the key does not encode)
    if json_text is not None:
        try:
            literal = orjson.loads(json_text)
        except orjson.JSONDecodeError as exc:
            raise BadQuery(f"key_json is not a JSON literal: {exc}") from None
        candidates: list[tuple[Any, bool]] = [(literal, True)]
        if isinstance(literal, str):
            candidates.append((literal.encode(), False))
    else:
        assert text is not None
        candidates = [(text, True), (text.encode(), False)]
        with contextlib.suppress(orjson.JSONDecodeError):
            candidates.append((orjson.loads(text), True))  # its error beats the string's
    reason: Exception | None = None
    for candidate, telling in candidates:
        try:
            raw = codec.encode(candidate)
        except Exception as exc:
            if telling or reason is None:
                reason = exc
            continue
        if raw is not None:
            return raw
    raise BadQuery(f"the key does not encode with the key codec of store {info.name!r} "
                   f"({codec.name}): {reason or 'a null key'}")


def encode_prefix(info: StoreInfo, text: str) -> bytes:
    """Key bytes that every key starting with ``text`` starts with: string and raw keys as is,
    JSON string keys without their closing quote. Other key codecs have no text prefixes."""
    codec = info.key_codec
    try:
        raw = codec.encode(text)
    except Exception:
        raw = None
    if raw is None and isinstance(codec, RawCodec):
        return text.encode()
    if isinstance(codec, JsonCodec) and raw is not None and raw.endswith(b'"'):
        return raw[:-1]
    if raw is not None and raw == text.encode():
        return raw
    raise BadQuery(f"prefix needs string keys; store {info.name!r} has {codec.name} keys")


def partition_of(key: bytes, tasks: int) -> int:
    """The task (partition) that holds ``key``: Kafka's default partitioner, which the engine's
    producers use for repartition topics and which source topics must be keyed with."""
    return partition_for(key, tasks)


def jsonable(obj: Any) -> Any:
    """``default=`` for orjson: models as their JSON form, bytes as text when UTF-8 (else
    ``{"base64": ...}``), anything else as ``str``."""
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode()}
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(obj)


def to_json(body: Any) -> bytes:
    return orjson.dumps(body, default=jsonable, option=orjson.OPT_NON_STR_KEYS)


def decode_key(info: StoreInfo, raw: bytes) -> Any:
    try:
        return info.key_codec.decode(raw)
    except Exception:
        return raw  # shown as text or base64: a listing must not fail on one odd key


def key_order(info: StoreInfo, key: Any) -> bytes:
    """The bytes a decoded key (possibly as JSON from another instance) sorts by: its
    encoding, so merged listings keep the store's own (byte) order."""
    try:
        raw = info.key_codec.encode(key)
    except Exception:
        raw = None
    if raw is not None:
        return raw
    if isinstance(key, str):  # raw keys come back from JSON as text
        return key.encode()
    return orjson.dumps(key, default=jsonable)


# -- reads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeRange:
    """Window starts in ``[start, end]`` (inclusive, epoch ms)."""

    start: int = -MAX_TIME - 1
    end: int = MAX_TIME


def window_ranges(span: TimeRange) -> list[tuple[bytes | None, bytes | None]]:
    """The key ranges that hold the windows starting in ``span``, in the numeric order of the
    start. A window key begins with its start (signed big-endian, state/windowed.py), so the
    scan seeks straight to ``span``'s first start; negative starts sort after every other one
    in byte order, so they get a range of their own, read first."""
    lo, hi = span.start, span.end
    out: list[tuple[bytes | None, bytes | None]] = []
    if lo < 0 and lo <= min(hi, -1):
        top = min(hi, -1) + 1
        out.append((_START.pack(lo), _START.pack(top) if top < 0 else None))
    if hi >= 0 and lo <= hi:
        out.append((_START.pack(max(lo, 0)), _START.pack(hi + 1) if hi < MAX_TIME
                    else _FIRST_NEGATIVE))
    return out


def prefix_range(start: bytes | None, stop: bytes | None, prefix: bytes | None
                 ) -> tuple[bytes | None, bytes | None]:
    """``[start, stop)`` narrowed to the keys beginning with ``prefix``: a seek to the prefix
    and a stop right after its last possible key, never a scan of the rest."""
    if prefix is None or not prefix:
        return start, stop
    start = prefix if start is None or start < prefix else start
    end = prefix.rstrip(b"\xff")
    after = end[:-1] + bytes([end[-1] + 1]) if end else None  # None: all-0xff, to the end
    if after is not None and (stop is None or after < stop):
        stop = after
    return start, stop


def window_keep(span: TimeRange, key: bytes | None = None,
                prefix: bytes | None = None) -> Callable[[bytes], bool]:
    """A scan filter over window store keys: start in ``span`` and the group key equal to
    ``key`` (or starting with ``prefix``)."""
    lo, hi = span.start, span.end

    def keep(raw: bytes) -> bool:
        if len(raw) < _WINDOW_KEY_BYTES:
            return False
        start = _START.unpack_from(raw)[0]
        if start < lo or start > hi:
            return False
        group = raw[_WINDOW_KEY_BYTES:]
        if key is not None:
            return group == key
        return prefix is None or group.startswith(prefix)

    return keep


def window_row(info: StoreInfo, raw_key: bytes, state: WindowState,
               partition: int | None = None) -> dict[str, Any]:
    start, end, group = split_window_key(raw_key)
    value = info.result(state.acc) if info.result is not None else state.acc
    row: dict[str, Any] = {"key": decode_key(info, group), "start": start, "end": end,
                           "value": value, "count": state.count, "fired": state.fired}
    if partition is not None:
        row["partition"] = partition
    return row


@dataclass(frozen=True)
class Page:
    """What one partition's read found. ``resume``: where the scan budget ran out (a
    window start in ms, or for key-value stores the decoded key), None when it did not."""

    rows: list[dict[str, Any]]
    resume: Any = None

    @property
    def scan_limited(self) -> bool:
        return self.resume is not None


def _window_start(raw: bytes) -> int:
    # A key too short to be a window's (not written by the engine) sorts as the earliest.
    return int(_START.unpack_from(raw)[0]) if len(raw) >= _START.size else -MAX_TIME - 1


def read_windows(info: StoreInfo, store: KeyValueStore, key: bytes, span: TimeRange,
                 limit: int, max_scan: int = 100_000) -> Page:
    """One key's windows with a start in ``span``, earliest first (at most ``limit``),
    reading at most ``max_scan`` entries: every key's windows are interleaved by start, so
    the scan seeks to ``span`` and filters by key."""
    rows, resume = store.scan_ranges(window_ranges(span), limit, window_keep(span, key=key),
                                     max_scan)
    out = sorted((window_row(info, k, v) for k, v in rows),
                 key=lambda r: (r["start"], r["end"]))
    return Page(out, _window_start(resume) if resume is not None else None)


def list_partition(info: StoreInfo, store: KeyValueStore, partition: int, limit: int, *,
                   start: bytes | None = None, stop: bytes | None = None,
                   prefix: bytes | None = None, span: TimeRange | None = None,
                   max_scan: int = 100_000) -> Page:
    """Up to ``limit`` rows of one partition, reading at most ``max_scan`` entries: key-value
    rows in key order (``start``/``stop`` bound the key bytes, ``prefix`` selects), window
    rows in (start, end, key) order (``span`` bounds the start, ``prefix`` selects by group
    key, which cannot narrow the scan: keys begin with the window's start)."""
    if info.kind == "window":
        rows, resume = store.scan_ranges(window_ranges(span or TimeRange()), limit,
                                         window_keep(span or TimeRange(), prefix=prefix),
                                         max_scan)
        return Page([window_row(info, k, v, partition) for k, v in rows],
                    _window_start(resume) if resume is not None else None)
    rows, resume = store.scan_ranges([prefix_range(start, stop, prefix)], limit, None,
                                     max_scan)
    return Page([{"key": decode_key(info, k), "value": v, "partition": partition}
                 for k, v in rows], decode_key(info, resume) if resume is not None else None)


def row_order(info: StoreInfo, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The sort key of a row another instance returned (see :func:`list_partition`)."""
    k = key_order(info, row.get("key"))
    if info.kind == "window":
        return (int(row["start"]), int(row["end"]), k)
    return (k,)
