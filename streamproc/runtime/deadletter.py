"""What happens to a record that failed: the source's error policy, and the dead letter.

Shared by the instance and the test driver, so that a record dead-lettered in a unit test
carries exactly the headers it would carry in production (design.md, "Bad input and errors").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import structlog

from streamproc.errors import CodecError, InfrastructureError, ProcessingFailed
from streamproc.metrics import Metrics
from streamproc.runtime.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    headers_bytes,
    headers_size,
    read_headers,
    record_size,
    strip_reserved,
)
from streamproc.types import ErrorPolicy, Headers, Origin

log = structlog.get_logger(__name__)

# key, value, timestamp, headers of the record to write to the dead-letter topic
DeadLetter = tuple[bytes | None, bytes | None, int, Headers]

# The headers a dead letter gets on top of the original record's (`streamproc dlq replay`
# removes exactly these, so a replayed record carries its own headers only).
DEAD_LETTER_HEADERS = frozenset({
    "streamproc.topic", "streamproc.partition", "streamproc.offset", "streamproc.timestamp",
    "streamproc.operator", "streamproc.error.type", "streamproc.error.message",
    "streamproc.codec", "streamproc.schema.id", "streamproc.original.headers",
    "streamproc.truncated", "streamproc.original.size", "streamproc.original.sha256"})
# Marks a dead letter whose original headers could not be read (a name that is not UTF-8):
# the letter keeps key and value, the headers are gone.
UNREADABLE = b"unreadable"


def dead_letter(origin: Origin, exc: BaseException, where: str,
                policies: dict[str, ErrorPolicy], default: ErrorPolicy, metrics: Metrics,
                clock: Callable[[], int],
                max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> DeadLetter | None:
    """Apply the policy of the record's source topic: raise :class:`ProcessingFailed`
    (``fail``), count and log (``skip``), or also return the dead letter to send (never
    larger than ``max_bytes``: see :func:`fit`)."""
    topic = origin.topic() or ""
    partition = origin.partition()
    offset = origin.offset()
    partition = -1 if partition is None else partition
    offset = -1 if offset is None else offset
    if isinstance(exc, InfrastructureError):
        raise exc  # not the record's fault: stop, replay from the checkpoint after restart
    policy = policies.get(topic, default)
    if policy == "fail":
        raise ProcessingFailed(where, topic, partition, offset, exc) from exc
    etype = type(exc).__name__
    message = str(exc)[:1000]
    metrics.inc("records_failed_total", policy=policy, error_type=etype, topic=topic)
    log.warning("record.dead_lettered" if policy == "dead_letter" else "record.skipped",
                topic=topic, partition=partition, offset=offset, operator=where,
                error_type=etype, error=message)
    if policy != "dead_letter":
        return None
    ts = origin.timestamp()[1]
    try:
        original: Headers = list(read_headers(origin) or [])
        unreadable = False
    except Exception:  # e.g. a header name that is not UTF-8: confluent-kafka cannot decode it
        original, unreadable = [], True
    # Reserved names in the original are not ours: a reader of the dead letter must find each
    # streamproc.* header once, with the engine's value.
    clean = strip_reserved(original)
    if clean is not None:
        original = clean
    headers: Headers = [("streamproc.topic", topic.encode()),
                        ("streamproc.partition", str(partition).encode()),
                        ("streamproc.offset", str(offset).encode()),
                        ("streamproc.timestamp", str(ts).encode()),
                        ("streamproc.operator", where.encode()),
                        ("streamproc.error.type", etype.encode()),
                        ("streamproc.error.message", message.encode())]
    if isinstance(exc, CodecError):
        headers.append(("streamproc.codec", exc.codec.encode()))
        if exc.schema_id is not None:
            headers.append(("streamproc.schema.id", str(exc.schema_id).encode()))
    if unreadable:
        headers.append(("streamproc.original.headers", UNREADABLE))
    # The original headers first (as they were), then ours.
    key, value, headers = fit(origin.key(), origin.value(), original, headers, max_bytes)
    if headers[-1][0] == "streamproc.original.sha256":
        metrics.inc("dead_letters_truncated_total", topic=topic)
        log.warning("record.dead_letter_truncated", topic=topic, partition=partition,
                    offset=offset, max_record_bytes=max_bytes)
    return key, value, ts if ts > 0 else clock(), headers


def fit(key: bytes | None, value: bytes | None, original: Headers, ours: Headers,
        max_bytes: int) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter's key, value and headers, cut to ``max_bytes`` when they are larger: a
    dead letter too large to write would fail its transaction and replay the record forever.

    What is cut, in order until it fits: the original headers (dropped, when they leave no
    room even for the key), the value, the key (each cut to what room is left). A cut letter
    says so: ``streamproc.truncated`` lists the parts cut, ``streamproc.original.size`` is the
    original key + value + header names and values in bytes and ``streamproc.original.sha256``
    the checksum of the original value, so that the record can be
    identified and recovered from its source topic while that still holds it."""
    if record_size(key, value, original) + headers_size(ours) <= max_bytes:
        return key, value, [*original, *ours]
    original_size = len(key or b"") + len(value or b"") + headers_bytes(original)
    sha = hashlib.sha256(value or b"").hexdigest().encode()
    cut: list[str] = []
    keep = original
    # Room for our headers, including the three added below (64 bytes of values at most).
    marks = headers_size(ours) + headers_size([("streamproc.truncated", b"headers,value,key"),
                                               ("streamproc.original.size", b"9" * 20),
                                               ("streamproc.original.sha256", sha)])
    room = max_bytes - marks - record_size(None, None)
    hsize = headers_size(keep)
    if len(key or b"") + hsize > room and keep:  # the headers alone leave no room
        keep, hsize = [], 0
        cut.append("headers")
    if len(key or b"") + len(value or b"") + hsize > room and value:
        value = value[:max(room - len(key or b"") - hsize, 0)]
        cut.append("value")
    if len(key or b"") + len(value or b"") + hsize > room and key:
        key = key[:max(room - hsize - len(value or b""), 0)]
        cut.append("key")
    return key, value, [*keep, *ours, ("streamproc.truncated", ",".join(cut).encode()),
                        ("streamproc.original.size", str(original_size).encode()),
                        ("streamproc.original.sha256", sha)]
