"""ad_attribution on the test driver: clicks attributed to impressions within 10 minutes, an
unclicked impression emitted when its window closes; the sample against a batch computation,
with crashes."""

from __future__ import annotations

from typing import Any

from streamproc.testing import Pipe, check_crash_safety
from streamproc.testing.driver import TopologyTestDriver
from tests.topologies.helpers import per_key
from topologies._examples import BASE_MS, MINUTE, PARTITIONS, with_flush
from topologies.ad_attribution import build, expected, flush, sample

OUT = "ad-attribution"


def imp(i: str, ts: int) -> tuple[str, dict[str, Any], int]:
    return (i, {"impression": i, "ad": "ad-1", "user": "u-1", "ts": ts}, ts)


def click(i: str, k: str, ts: int) -> tuple[str, dict[str, Any], int]:
    return (i, {"impression": i, "click": k, "ts": ts}, ts)


def _sorted(records: dict[Any, list[tuple[Any, int]]]) -> dict[Any, list[Any]]:
    """Per impression, its records as a multiset (clicks of one impression may arrive in any
    order); the flush records, which only move the watermark, left out."""
    return {k: sorted(v, key=repr) for k, v in records.items() if not k.startswith("__flush")}


def _run(d: TopologyTestDriver, samples: dict[str, list[Any]]) -> None:
    for topic in ("impressions", "clicks"):  # one topic's backlog before the other's
        for key, value, ts in with_flush(samples[topic], flush, PARTITIONS):
            d.pipe(topic, value, key, timestamp=ts)


def test_a_click_within_ten_minutes_is_attributed_and_an_unclicked_impression_closes() -> None:
    t0 = BASE_MS
    with TopologyTestDriver(build(), partitions=2) as d:
        for topic, (key, value, ts) in [
                ("impressions", imp("i-1", t0)), ("impressions", imp("i-2", t0 + MINUTE)),
                ("clicks", click("i-1", "k-1", t0 + 10 * MINUTE)),  # the window's last ms
                ("clicks", click("i-2", "k-2", t0 + 12 * MINUTE)),  # too late for i-2
                ("impressions", imp("i-3", t0 + 30 * MINUTE)),
                ("clicks", click("i-3", "k-3", t0 + 30 * MINUTE))]:
            d.pipe(topic, value, key, timestamp=ts)
        got = [(r.key, r.value["clicked"], r.value["click"], r.value["delay_ms"], r.timestamp)
               for r in d.records(OUT)]
        assert got == [("i-1", True, "k-1", 10 * MINUTE, t0 + 10 * MINUTE),
                       ("i-2", False, None, None, t0 + MINUTE),  # closed at 00:30 - 30 s
                       ("i-3", True, "k-3", 0, t0 + 30 * MINUTE)]


def test_the_sample_matches_a_batch_computation_whatever_topic_is_read_first() -> None:
    samples = sample()
    want = _sorted(expected(samples))
    assert sum(1 for v in want.values() for r, _ in v if r["clicked"]) > 60
    assert sum(1 for v in want.values() for r, _ in v if not r["clicked"]) > 150
    with TopologyTestDriver(build(), partitions=PARTITIONS) as d:
        _run(d, samples)
        assert _sorted(per_key(d.records(OUT))) == want
    reversed_order = {"impressions": samples["impressions"], "clicks": samples["clicks"]}
    with TopologyTestDriver(build(), partitions=PARTITIONS) as d:
        for topic in ("clicks", "impressions"):
            for key, value, ts in with_flush(reversed_order[topic], flush, PARTITIONS):
                d.pipe(topic, value, key, timestamp=ts)
        assert _sorted(per_key(d.records(OUT))) == want


def test_crashes_at_any_step_leave_the_attribution_unchanged() -> None:
    samples = sample(seed=11, n=20)
    steps = [Pipe(topic, value, key, timestamp=ts)
             for topic in ("impressions", "clicks")
             for key, value, ts in with_flush(samples[topic], flush, PARTITIONS)]
    checked = check_crash_safety(build, steps, ordered=False, partitions=PARTITIONS)
    assert checked > 10
