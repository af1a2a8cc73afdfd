"""What happens to a record that failed: the source's error policy, and the dead letter.

Shared by the instance and the test driver, so that a record dead-lettered in a unit test
carries exactly the headers it would carry in production (design.md, "Bad input and errors").
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from streamproc.errors import CodecError, InfrastructureError, ProcessingFailed
from streamproc.metrics import Metrics
from streamproc.types import ErrorPolicy, Headers, Origin

log = structlog.get_logger(__name__)

# key, value, timestamp, headers of the record to write to the dead-letter topic
DeadLetter = tuple[bytes | None, bytes | None, int, Headers]

# The headers a dead letter gets on top of the original record's (`streamproc dlq replay`
# removes exactly these, so a replayed record carries its own headers only).
DEAD_LETTER_HEADERS = frozenset({
    "streamproc.topic", "streamproc.partition", "streamproc.offset", "streamproc.timestamp",
    "streamproc.operator", "streamproc.error.type", "streamproc.error.message",
    "streamproc.codec", "streamproc.schema.id"})


def dead_letter(origin: Origin, exc: BaseException, where: str,
                policies: dict[str, ErrorPolicy], default: ErrorPolicy, metrics: Metrics,
                clock: Callable[[], int]) -> DeadLetter | None:
    """Apply the policy of the record's source topic: raise :class:`ProcessingFailed`
    (``fail``), count and log (``skip``), or also return the dead letter to send."""
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
    headers: Headers = [*(origin.headers() or []),
                        ("streamproc.topic", topic.encode()),
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
    return origin.key(), origin.value(), ts if ts > 0 else clock(), headers
