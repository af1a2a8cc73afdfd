"""Sources: consumed messages into records, with event time and bad input handled.

A source decodes key and value, reads the timestamp and headers, and pushes the batch on. A
time-aware source (the sub-topology acts on event time, or its watermark is propagated) also
checks each record's timestamp, advances the task's watermark, and takes the watermark control
records of a repartition topic out of the stream. A record that cannot be read goes to
``ctx.on_error`` and the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streamproc.codecs.base import fast_decoder
from streamproc.errors import CodecError
from streamproc.graph.nodes import (
    SourceNode,
)
from streamproc.runtime.context import Push, SourcePush, TaskContext
from streamproc.runtime.limits import (
    HeaderError,
    TimestampOutOfRange,
    Unreadable,
    read_headers,
    to_timestamp,
)
from streamproc.time.watermarks import CONTROL_HEADER
from streamproc.types import Origin, Record


def source(node: SourceNode, down: Push, ctx: TaskContext) -> SourcePush:
    assert node.key_codec is not None and node.value_codec is not None
    kcodec, vcodec = node.key_codec, node.value_codec
    kdec, vdec = kcodec.decode, vcodec.decode
    kfast, vfast = fast_decoder(kcodec), fast_decoder(vcodec)
    ts = node.timestamp
    where = node.name
    on_error = ctx.on_error
    extract: Callable[[Any], Any] | None = ts if callable(ts) else None
    wall_clock = ts == "processing_time"
    bounds = ctx.time_bounds
    low = bounds.low

    def push(msgs: Sequence[Origin]) -> None:
        out: list[Record] = []
        append = out.append
        now = ctx.now_ms()
        high = bounds.at(now)
        for m in msgs:
            # Headers first (limits.read_headers): a record whose headers cannot be read is
            # dead-lettered before any operator changed state for it.
            try:
                read_headers(m)
            except Exception as exc:
                on_error(Unreadable(m), HeaderError(f"headers cannot be read: {exc}"), where)
                continue
            try:
                raw = m.value()
                value = vfast(raw) if vfast is not None and raw is not None else vdec(raw)
                raw = m.key()
                key = kfast(raw) if kfast is not None and raw is not None else kdec(raw)
                if extract is not None:
                    t = extract(value)
                    if type(t) is not int:
                        t = to_timestamp(t, bounds)
                elif wall_clock:
                    t = now
                else:
                    t = m.timestamp()[1]
                if not low <= t <= high:
                    raise bounds.problem(t)
            except Exception as exc:
                on_error(m, _decode_error(exc, m, kdec, vdec), where)
                continue
            append(Record(key, value, t, m))
        if out:
            down(out)

    return push


def timed_source(node: SourceNode, topic: str, down: Push, ctx: TaskContext, *,
                  per_record: bool) -> SourcePush:
    """A source that also moves the task's event time: per record (so that windows and timers
    see the watermark as of each record), or once per batch (when the watermark is only passed
    on downstream). Watermark control records of a repartition topic update the upstream
    watermarks and never reach an operator."""
    assert node.key_codec is not None and node.value_codec is not None
    kcodec, vcodec = node.key_codec, node.value_codec
    kdec, vdec = kcodec.decode, vcodec.decode
    kfast, vfast = fast_decoder(kcodec), fast_decoder(vcodec)
    ts = node.timestamp
    where, on_error, time = node.name, ctx.on_error, ctx.time
    extract: Callable[[Any], Any] | None = ts if callable(ts) else None
    wall_clock = ts == "processing_time"
    internal = node.internal
    bounds = ctx.time_bounds
    low = bounds.low
    # Behind a repartition with propagation on, records do not move the watermark: the
    # upstream tasks' control records do.
    local = not (internal and time.expected)
    observe = time.observe

    def push(msgs: Sequence[Origin]) -> None:
        out: list[Record] = []
        append = out.append
        now = ctx.now_ms()
        time.begin_batch(now)
        top = bounds.at(now)
        high, high_off = time.stream_time, -1
        for m in msgs:
            try:
                headers = read_headers(m)  # limits.read_headers: before anything else
            except Exception as exc:
                on_error(Unreadable(m), HeaderError(f"headers cannot be read: {exc}"), where)
                continue
            if internal and headers and headers[0][0] == CONTROL_HEADER:
                try:
                    time.control(topic, m.value() or b"", m.offset() or 0, headers)
                except Exception as exc:  # not written by a streamproc task: bad input
                    on_error(m, exc, where)
                continue
            try:
                raw = m.value()
                value = vfast(raw) if vfast is not None and raw is not None else vdec(raw)
                raw = m.key()
                key = kfast(raw) if kfast is not None and raw is not None else kdec(raw)
                if extract is not None:
                    t = extract(value)
                    if type(t) is not int:
                        t = to_timestamp(t, bounds)
                elif wall_clock:
                    t = now
                else:
                    t = m.timestamp()[1]
                # Out of range, it would move stream time for good: bad input, before observe.
                if not low <= t <= top:
                    raise bounds.problem(t)
            except Exception as exc:
                on_error(m, _decode_error(exc, m, kdec, vdec), where)
                continue
            if local:
                if per_record:
                    observe(t, m.offset() or 0, topic)
                else:
                    high_off = m.offset() or 0
                    high = max(high, t)
            append(Record(key, value, t, m))
        if high_off >= 0:
            observe(high, high_off, topic)
        if out:
            down(out)

    return push


def _decode_error(exc: Exception, m: Origin, kdec: Callable[[Any], Any],
                  vdec: Callable[[Any], Any]) -> Exception:
    """The error to report for a record that failed in the source: a fast path's raw exception
    is replaced by the codec's own CodecError (same message as the slow path)."""
    if isinstance(exc, CodecError | TimestampOutOfRange):
        return exc
    for dec, raw in ((vdec, m.value()), (kdec, m.key())):
        try:
            dec(raw)
        except CodecError as codec_exc:
            return codec_exc
        except Exception:
            return exc
    return exc
