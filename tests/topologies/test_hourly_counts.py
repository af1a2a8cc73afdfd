"""hourly_counts on the test driver: page views per page per hour, one final count per hour."""

from __future__ import annotations

import orjson
import pytest

from streamproc.testing import check_crash_safety
from tests.topologies import expected
from tests.topologies.helpers import out_of_order, per_key, pipe_all, steps
from topologies._examples import BASE_MS, HOUR, MINUTE, SECOND, partition_of, with_flush
from topologies.hourly_counts import build, flush, sample

IN, OUT, LATE = "page-views", "hourly-page-views", "hourly-counts-late"


def at(h: int, m: int = 0, s: int = 0) -> int:
    return BASE_MS + h * HOUR + m * MINUTE + s * SECOND


def view(page: str, ts: int, user: str = "u01") -> tuple[str, dict[str, str], int]:
    return (page, {"user": user, "page": page}, ts)


def hour(h: int, count: int) -> tuple[dict[str, int], int]:
    return {"start": at(h), "end": at(h + 1), "count": count}, at(h + 1)


def test_one_count_per_page_and_hour_once_the_hour_closes(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [view("/docs", at(0, 5)), view("/docs", at(0, 20)), view("/", at(0, 30)),
                     view("/docs", at(1, 2)),
                     view("/", at(0, 59, 30))])  # out of order, within the bound: hour 0
    # The watermark is 01:01: hour 0 stays open until it reaches 01:05 (end + grace).
    assert d.records(OUT) == []
    pipe_all(d, IN, [view("/blog", at(1, 6))])  # watermark 01:05: hour 0 closes
    assert sorted(per_key(d.records(OUT)).items()) == [("/", [hour(0, 2)]),
                                                       ("/docs", [hour(0, 2)])]
    d.finish()
    assert sorted(per_key(d.records(OUT)).items()) == [
        ("/", [hour(0, 2)]), ("/blog", [hour(1, 1)]), ("/docs", [hour(0, 2), hour(1, 1)])]
    assert d.late_records() == []


def test_a_view_within_grace_counts_and_a_later_one_goes_to_the_late_topic(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [view("/docs", at(0, 10)),
                     view("/docs", at(1, 5, 59)),  # watermark 01:04:59: hour 0 still open
                     view("/docs", at(0, 58)),  # 7 min behind: beyond the bound, within grace
                     view("/pricing", at(1, 6)),  # watermark 01:05:00: hour 0 closes
                     view("/docs", at(0, 59, 59), user="u09")])  # late
    assert d.key_values(OUT) == [("/docs", {"start": at(0), "end": at(1), "count": 2})]
    (late,) = d.late_records()
    assert (late.key, orjson.loads(late.value or b""), late.timestamp) == \
        (b"/docs", {"user": "u09", "page": "/docs"}, at(0, 59, 59))
    assert {k: late.headers[f"streamproc.{k}"] for k in ("window.start", "window.end",
                                                         "watermark", "topic")} == {
        "window.start": str(at(0)).encode(), "window.end": str(at(1)).encode(),
        "watermark": str(at(1, 5)).encode(), "topic": IN.encode()}
    d.finish()
    assert sorted(per_key(d.records(OUT)).items()) == [
        ("/docs", [hour(0, 2), hour(1, 1)]), ("/pricing", [hour(1, 1)])]


@pytest.mark.parametrize(("seed", "partitions"), [(1, 2), (8, 3)])
def test_the_sample_gives_what_a_batch_computation_gives(topology_driver, seed, partitions):
    events = sample(seed=seed)
    assert out_of_order(events, partitions) > 50
    d = topology_driver(build(), partitions=partitions)
    pipe_all(d, IN, events, partitions)
    d.finish()
    out, late = expected.hourly_counts(events, lambda k: partition_of(k, partitions))
    assert per_key(d.records(OUT)) == out[OUT]
    assert late, "the sample has late views"
    got_late = [(r.key.decode(), orjson.loads(r.value or b""), r.timestamp,
                 int(r.headers["streamproc.window.end"]), int(r.headers["streamproc.watermark"]))
                for r in d.records(LATE, raw=True)]
    assert sorted(got_late, key=repr) == sorted(late, key=repr)


def test_flush_records_close_every_hour_of_the_data(topology_driver):
    events = with_flush(sample(n=200, hours=2), flush)  # one per partition, a day later
    d = topology_driver(build(), partitions=2)
    pipe_all(d, IN, events, 2)  # no finish(): only the flush records' own hours stay open
    out, late = expected.hourly_counts(events, lambda k: partition_of(k, 2), finish=False)
    assert per_key(d.records(OUT)) == out[OUT]
    assert sum(len(seq) for seq in out[OUT].values()) > 10
    assert not any(k.startswith("__flush") for k in out[OUT])
    assert len(d.records(LATE)) == len(late)


def test_crash_safety():
    script = steps(IN, [view("/docs", at(0, 5)), view("/", at(0, 40)),
                        view("/docs", at(0, 59)), view("/", at(1, 7)),  # hour 0 closes
                        view("/docs", at(0, 30))])  # late
    assert check_crash_safety(build, script) == 4 * len(script)
