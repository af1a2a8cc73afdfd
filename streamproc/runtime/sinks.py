"""Sinks: records encoded and produced, refused per record where the record is at fault.

The per-record checks (output timestamp range, key and value encoding, header readability,
size against ``max_record_bytes``) run before ``produce``, so a record the broker would refuse
(and with it the whole transaction, again on every replay) is dead-lettered instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamproc.codecs.base import fast_encoder
from streamproc.errors import CodecError, NullKeyError
from streamproc.graph.nodes import (
    RepartitionNode,
    SinkNode,
)
from streamproc.kafka.acls import refusal
from streamproc.runtime.context import Push, TaskContext
from streamproc.runtime.limits import (
    INT64_MAX,
    RECORD_OVERHEAD,
    HeaderError,
    RecordTooLarge,
    TimestampOutOfRange,
    record_size,
    strip_reserved,
)
from streamproc.types import Record

# Produce errors that are the record's fault (raised by produce() itself, before anything is
# queued): too large for the client, or a timestamp/argument the client refuses. Any other
# KafkaException (fatal, fenced, not in a transaction) is the instance's problem and stops the
# checkpoint: dead-lettering the record would commit its offset without its output.
_RECORD_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._INVALID_ARG,
                  KafkaError.INVALID_RECORD}


def sink(node: SinkNode | RepartitionNode, ctx: TaskContext, max_bytes: int) -> Push:
    assert node.key_codec is not None and node.value_codec is not None
    kenc, venc = node.key_codec.encode, node.value_codec.encode
    kfast, vfast = fast_encoder(node.key_codec), fast_encoder(node.value_codec)
    topic, where, on_error = node.topic, node.name, ctx.on_error
    # A record re-keyed to None would reach the downstream keyed operator with the repartition
    # topic's coordinates: refuse it here, where it still names the record that was consumed.
    keyed = isinstance(node, RepartitionNode)
    # Room for the payload once the framing is counted (limits.record_size, inlined).
    budget = max_bytes - RECORD_OVERHEAD
    count = ctx.count
    out_time = ctx.output_time(topic)
    bounded = out_time.before_ms is not None or out_time.after_ms is not None

    def push(batch: list[Record]) -> None:
        # The producer's own produce(), fetched once per batch (the collector may have replaced
        # the producer after an abort): no Python wrapper call per record.
        produce, full = ctx.producer()
        n = stripped = 0
        lo, hi = out_time.window(ctx.now_ms()) if bounded else (-INT64_MAX, INT64_MAX)
        for r in batch:
            try:
                if not lo <= r.timestamp <= hi:
                    raise TimestampOutOfRange(
                        f"timestamp {r.timestamp} is outside what topic {topic} accepts "
                        f"({out_time}; now {ctx.now_ms()})")
                k = r.key
                k = kfast(k) if kfast is not None and k is not None else kenc(k)
                if k is None and keyed:
                    raise NullKeyError(f"the new key is null; {topic} needs a key")
                v = r.value
                v = vfast(v) if vfast is not None and v is not None else venc(v)
                # Headers travel with the record; reading them may fail (a name that is not
                # UTF-8), and they count towards its size.
                try:
                    h = r.origin.headers()
                except Exception as exc:
                    raise HeaderError(f"headers cannot be read: {exc}") from None
                size = (len(v) if v is not None else 0) + (len(k) if k else 0)
                if h:
                    # A user record never carries reserved headers into what we write: on a
                    # repartition topic streamproc.control would make it a watermark.
                    clean = strip_reserved(h)
                    if clean is not None:
                        h = clean
                        stripped += 1
                    size += record_size(None, None, h) - RECORD_OVERHEAD
                if size > budget:
                    raise RecordTooLarge(
                        f"record for {topic} is {size + RECORD_OVERHEAD} bytes (key + value + "
                        f"headers + framing), over max_record_bytes={max_bytes}")
            except Exception as exc:
                on_error(r.origin, _encode_error(exc, r, kenc, venc, where), where)
                continue
            try:
                produce(topic, v, k, timestamp=r.timestamp, headers=h)
            except BufferError:
                try:
                    _produce_when_room(produce, full, topic, k, v, r.timestamp, h)
                except Exception as exc:
                    on_error(r.origin, _produce_error(exc, topic), where)
                    continue
            except Exception as exc:
                # The client refused this record (a timestamp it cannot send, a size it
                # counts differently): the record's fault, so its source's error policy.
                on_error(r.origin, _produce_error(exc, topic), where)
                continue
            n += 1
        if stripped:
            count("reserved_headers_stripped_total", stripped, operator=where)
        ctx.produced(n)

    return push


def _produce_when_room(produce: Callable[..., None], full: Callable[[], None], topic: str,
                       k: bytes | None, v: bytes | None, ts: int, h: Any) -> None:
    while True:
        full()
        try:
            produce(topic, v, k, timestamp=ts, headers=h)
            return
        except BufferError:
            continue


def _produce_error(exc: Exception, topic: str) -> Exception:
    """What a record refused by ``produce`` is reported as; re-raises what is not the record's
    fault (the instance recovers from the last checkpoint instead)."""
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        code = err.code() if isinstance(err, KafkaError) else None
        refused = refusal(err, f"producing to {topic}") if isinstance(err, KafkaError) else None
        if refused is not None:
            raise refused from None  # not the record's fault, and retrying cannot help
        if code == KafkaError.MSG_SIZE_TOO_LARGE:
            return RecordTooLarge(f"the Kafka client refused the record for {topic} as too "
                                  f"large: {err}")
        if code not in _RECORD_ERRORS:
            raise exc
        return CodecError("produce", f"the Kafka client refused the record for {topic}: {err}")
    if isinstance(exc, OverflowError):
        # a timestamp a process function emitted that does not fit in int64
        return TimestampOutOfRange(f"record for {topic} cannot be produced: {exc}")
    if isinstance(exc, TypeError | ValueError):
        return CodecError("produce", f"record for {topic} cannot be produced: "
                          f"{type(exc).__name__}: {exc}")
    raise exc


def _encode_error(exc: Exception, r: Record, kenc: Callable[[Any], Any],
                  venc: Callable[[Any], Any], where: str) -> Exception:
    """What a failed output record is reported as: the codec's own error, never a raw
    TypeError from a fast path."""
    if isinstance(exc, CodecError | RecordTooLarge | HeaderError | TimestampOutOfRange |
                  NullKeyError):
        return exc
    for enc, obj in ((kenc, r.key), (venc, r.value)):
        try:
            enc(obj)
        except CodecError as codec_exc:
            return codec_exc
        except Exception as other:
            exc = other
            break
    return CodecError(where, f"{type(exc).__name__}: {exc}")
