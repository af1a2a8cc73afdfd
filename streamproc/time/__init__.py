"""Event time: watermarks, window assignment and timers (pure logic, no Kafka)."""

from __future__ import annotations

import datetime as _dt

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MS = _dt.timedelta(milliseconds=1)


def epoch_ms(value: int | _dt.datetime) -> int:
    """Epoch milliseconds of an event-time field: an int as it is, or a timezone-aware datetime
    (what Avro's ``timestamp-millis`` decodes to) converted exactly, without float rounding."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value}: event times need a timezone")
        return (value - _EPOCH) // _MS
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected epoch ms (int) or an aware datetime, got {type(value).__name__}")
    return value
