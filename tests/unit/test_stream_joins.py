"""Windowed stream-stream and interval joins on the test driver: matches, unmatched records at
window close, lateness, crashes, repartitioning."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streamproc import Topology, TopologyError, codecs
from streamproc.testing import TopologyTestDriver

MIN = 60_000


def _pair(a: Any, b: Any) -> list[Any]:
    return [a and a["id"], b and b["id"]]


def _within(how: str, within_ms: int = 1000, grace_ms: int = 0) -> Topology:
    t = Topology("within")
    left = t.source("left", key=codecs.string())
    right = t.source("right", key=codecs.string())
    left.join(right, _pair, within_ms=within_ms, grace_ms=grace_ms, how=how,
              store="pairs").to("out", key=codecs.string())
    return t


def test_records_within_the_window_join_in_both_directions_at_the_later_time() -> None:
    with TopologyTestDriver(_within("inner"), partitions=2) as d:
        d.pipe("left", {"id": "l1"}, key="k", timestamp=10_000)
        d.pipe("right", {"id": "r1"}, key="k", timestamp=10_500)  # joins l1
        d.pipe("right", {"id": "r2"}, key="k", timestamp=11_000)  # joins l1 (exactly 1000)
        d.pipe("left", {"id": "l2"}, key="k", timestamp=11_200)  # joins r1 and r2
        d.pipe("right", {"id": "r3"}, key="other", timestamp=11_200)  # another key
        d.pipe("left", {"id": "l3"}, key="k", timestamp=12_100)  # joins r2? no: 1100 apart
        got = [(r.key, r.value, r.timestamp) for r in d.records("out")]
        assert got == [("k", ["l1", "r1"], 10_500), ("k", ["l1", "r2"], 11_000),
                       ("k", ["l2", "r1"], 11_200), ("k", ["l2", "r2"], 11_200)]


def test_a_left_join_emits_an_unmatched_left_record_when_its_window_closes() -> None:
    with TopologyTestDriver(_within("left"), partitions=1) as d:
        d.pipe("left", {"id": "l1"}, key="a", timestamp=1_000)
        d.pipe("left", {"id": "l2"}, key="b", timestamp=1_500)
        d.pipe("right", {"id": "r1"}, key="a", timestamp=1_900)
        d.pipe("right", {"id": "r9"}, key="c", timestamp=2_000)  # unmatched right: not emitted
        assert d.values("out") == [["l1", "r1"]]
        # The watermark is the smaller of the two topics' times: b closes after 2500.
        d.pipe("left", {"id": "l3"}, key="z", timestamp=2_500)
        d.pipe("right", {"id": "r10"}, key="y", timestamp=2_501)
        assert d.values("out") == [["l1", "r1"]]
        d.pipe("left", {"id": "l4"}, key="z", timestamp=2_501)
        assert [(r.key, r.value, r.timestamp) for r in d.records("out")] == [
            ("a", ["l1", "r1"], 1_900), ("b", ["l2", None], 1_500)]
        d.finish()  # the end of input closes every window
        assert d.values("out") == [["l1", "r1"], ["l2", None], ["l3", None], ["l4", None]]
        assert d.state("pairs.left") == {} and d.state("pairs.right") == {}


def test_an_outer_join_also_emits_unmatched_right_records() -> None:
    with TopologyTestDriver(_within("outer")) as d:
        d.pipe("left", {"id": "l1"}, key="a", timestamp=1_000)
        d.pipe("right", {"id": "r1"}, key="b", timestamp=1_200)
        d.pipe("right", {"id": "r2"}, key="a", timestamp=1_300)
        d.finish()
        assert sorted(map(repr, d.values("out"))) == sorted(
            map(repr, [["l1", "r2"], [None, "r1"]]))


def test_a_record_older_than_the_watermark_minus_the_grace_is_late() -> None:
    with TopologyTestDriver(_within("left", grace_ms=500)) as d:
        d.pipe("left", {"id": "l1"}, key="a", timestamp=10_000)
        d.pipe("right", {"id": "r1"}, key="a", timestamp=9_600)  # watermark 9600: joins
        d.pipe("left", {"id": "l5"}, key="a", timestamp=12_000)  # still 9600 (the right's)
        d.pipe("right", {"id": "r3"}, key="a", timestamp=11_900)  # watermark 11900
        d.pipe("right", {"id": "r2"}, key="a", timestamp=9_400)  # before 11400: late
        d.pipe("left", {"id": "l2"}, key="a", timestamp=9_000)  # late: not even unmatched
        d.finish()
        assert d.values("out") == [["l1", "r1"], ["l5", "r3"]]
        assert d.metrics.total("late_records_total") == 2


def test_an_interval_join_matches_only_after_the_left_record() -> None:
    t = Topology("ads")
    impressions = t.source("impressions", key=codecs.string())
    clicks = t.source("clicks", key=codecs.string())
    impressions.interval_join(clicks, _pair, lower_ms=0, upper_ms=10 * MIN, how="left",
                              grace_ms=MIN, store="attribution").to("out", key=codecs.string())
    with TopologyTestDriver(t, partitions=2) as d:
        d.pipe("clicks", {"id": "c0"}, key="ad", timestamp=1_000)  # before: never matches
        d.pipe("impressions", {"id": "i1"}, key="ad", timestamp=2_000)
        d.pipe("impressions", {"id": "i2"}, key="ad", timestamp=3_000)
        d.pipe("impressions", {"id": "i3"}, key="ad", timestamp=4_000)
        d.pipe("clicks", {"id": "c1"}, key="ad", timestamp=2_000 + 10 * MIN)  # i1's last ms
        d.pipe("clicks", {"id": "c2"}, key="ad", timestamp=3_000 + 10 * MIN)  # not i1's
        d.finish()
        assert d.values("out") == [["i1", "c1"], ["i2", "c1"], ["i3", "c1"], ["i2", "c2"],
                                   ["i3", "c2"]]


def test_a_key_change_on_one_side_repartitions_it() -> None:
    t = Topology("rekey")
    orders = t.source("orders", key=codecs.string())
    payments = t.source("payments").key_by(lambda p: p["order"], key=codecs.string())
    orders.join(payments, _pair, within_ms=MIN, store="op", name="paid").to("out")
    with TopologyTestDriver(t, partitions=3) as d:
        d.pipe("orders", {"id": "o1"}, key="o1", timestamp=1_000)
        d.pipe("payments", {"id": "p1", "order": "o1"}, key=b"x", timestamp=2_000)
        d.pipe("payments", {"id": "p2", "order": "o2"}, key=b"y", timestamp=2_000)
        assert d.values("out") == [["o1", "p1"]]
        assert "rekey-paid.right-repartition" in d.compiled.repartition_topics


def _events(seed: int) -> list[tuple[str, str, str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(300):
        side = rng.choice(("left", "right"))
        out.append((side, f"{side[0]}{i}", f"k{rng.randrange(8)}", 1_000 * i + rng.randrange(900)))
    return out


def _run(events: list[tuple[str, str, str, int]], crash_every: int | None) -> list[Any]:
    # A replay reads the two topics in another order than the first run (the driver: all of
    # one, then the other); the watermark is the smaller of their times, so the same records
    # are late and the same windows close.
    with TopologyTestDriver(_within("outer", within_ms=3_000, grace_ms=500), partitions=2,
                            auto_commit=False) as d:
        for n, (topic, rid, key, ts) in enumerate(events, 1):
            d.pipe(topic, {"id": rid}, key=key, timestamp=ts)
            if n % 7 == 0:
                d.commit()
            if crash_every is not None and n % crash_every == 0:
                d.crash(lose_state=n % (2 * crash_every) == 0)
        d.commit()
        if crash_every is not None:
            d.crash()  # after the last commit: the stores come back from their changelogs
        d.finish()
        return [(r.key, r.value, r.timestamp) for r in d.records("out")]


def test_crashes_at_any_point_give_the_output_of_a_run_without_them() -> None:
    events = _events(seed=3)
    clean = _run(events, None)
    assert len(clean) > 200  # matches and unmatched records of both sides
    assert any(v[0] is None for _, v, _ in clean) and any(v[1] is None for _, v, _ in clean)
    for every in (5, 11):
        assert sorted(map(repr, _run(events, every))) == sorted(map(repr, clean))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"within_ms": None, "store": "s"}, "needs within_ms="),
    ({"within_ms": 10}, "needs store="),
    ({"within_ms": 10, "store": "s", "how": "full"}, "'inner', 'left' or 'outer'"),
    ({"within_ms": 10, "store": "s", "grace_ms": -1}, "grace_ms must be an int >= 0"),
])
def test_a_stream_stream_join_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    t = Topology("bad")
    left, right = t.source("a"), t.source("b")
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        left.join(right, **kwargs)
    with pytest.raises(TopologyError, match="must not be above upper_ms"):
        left.interval_join(right, lower_ms=5, upper_ms=1, store="s")
    with pytest.raises(TopologyError, match="cannot be joined with itself"):
        left.join(left, within_ms=1, store="s")
