"""Dead letters are read from a topic anybody can write to: their headers are parsed without
trusting them (a forged header of the original record cannot redirect a replay, a header that
is not a number is -1, headers that cannot be read at all are not a crash), and reading fails
only when it makes no progress for the stall timeout."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError

from streamproc.ops.dlq import UNREADABLE_HEADERS, DeadLetterRecord, Reader
from streamproc.progress import Progress, Stalled


def letter(headers: list[tuple[str, bytes | None]]) -> DeadLetterRecord:
    return DeadLetterRecord(0, 7, 123, b"k", b"v", headers)


def test_the_dead_letters_own_headers_win_over_forged_ones_of_the_original_record() -> None:
    r = letter([("streamproc.topic", b"app-counts-changelog"), ("trace", b"t-1"),
                ("streamproc.topic", b"orders"), ("streamproc.partition", b"1"),
                ("streamproc.offset", b"42"), ("streamproc.timestamp", b"1000")])
    assert r.source == ("orders", 1, 42)
    assert r.original_timestamp() == 1000
    # Replayed without any streamproc.* header, forged or not.
    assert r.original_headers() == [("trace", b"t-1")]


def test_headers_that_are_not_numbers() -> None:
    r = letter([("streamproc.topic", b"orders"), ("streamproc.partition", b"zero"),
                ("streamproc.offset", b"\xff"), ("streamproc.timestamp", b"soon")])
    assert r.source == ("orders", -1, -1)
    assert r.original_timestamp() == 123  # the dead letter's own timestamp


def test_missing_headers() -> None:
    r = letter([])
    assert (r.source, r.error_type, r.original_timestamp(), r.size) == (("", -1, -1), "", 123, 2)


class Msg:
    def __init__(self, offset: int, headers: Any = (), eof: bool = False) -> None:
        self._offset, self._headers, self._eof = offset, headers, eof

    def error(self) -> Any:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 500)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"value"

    def headers(self) -> Any:
        if isinstance(self._headers, Exception):
            raise self._headers
        return list(self._headers)


class Topic:
    """The consumer of a dead-letter topic of one partition, serving scripted batches."""

    def __init__(self, batches: list[list[Msg]]) -> None:
        self.batches = batches
        self.assigned: list[tuple[str, int, int]] = []

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return 0, 3

    def assign(self, tps: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def consume(self, n: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []


def test_a_dead_letter_whose_headers_cannot_be_read_is_read_without_them() -> None:
    topic = Topic([[Msg(0, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid")),
                    Msg(1, [("streamproc.topic", b"orders")]), Msg(2, eof=True)]])
    reader = Reader(topic, "app-dlq", {0: OFFSET_BEGINNING},  # type: ignore[arg-type]
                    Progress("dlq.replay", stall_s=10), 5.0)
    assert topic.assigned == [("app-dlq", 0, OFFSET_BEGINNING)]
    first, second = reader.read(100)
    assert (first.offset, first.headers, first.source) == (0, [UNREADABLE_HEADERS],
                                                          ("", -1, -1))
    assert second.source == ("orders", -1, -1)
    assert reader.done and reader.next_offsets == {0: 2}


def test_reading_fails_only_after_the_stall_timeout_without_records() -> None:
    clock = [0.0]
    topic = Topic([[Msg(0)], [], [Msg(1)], [], []])
    reader = Reader(topic, "app-dlq", {0: 0},  # type: ignore[arg-type]
                    Progress("dlq.replay", stall_s=10, clock=lambda: clock[0]), 5.0)
    assert len(reader.read(10)) == 1
    clock[0] = 9.9
    assert reader.read(10) == []  # a wait, not yet a stall
    clock[0] = 12.0
    assert len(reader.read(10)) == 1  # progress moves the deadline to 22 s
    clock[0] = 21.9
    assert reader.read(10) == []
    clock[0] = 22.0
    with pytest.raises(Stalled) as stalled:
        reader.read(10)
    assert str(stalled.value) == (
        "dlq.replay: no progress for 10 s (after 2 records, 12 bytes): app-dlq partitions [0] "
        "did not reach their end (an open transaction keeps read_committed readers before it?)")
