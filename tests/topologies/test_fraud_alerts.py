"""fraud_alerts on the test driver: a small charge right before a large one (keyed process
function with event-time timers) and too many charges in a minute (sliding window)."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.testing import check_crash_safety
from tests.topologies import expected
from tests.topologies.helpers import by_rule, out_of_order, per_key, pipe_all, steps
from topologies._examples import BASE_MS, SECOND, partition_of
from topologies.fraud_alerts import VELOCITY_WINDOW_MS, build, sample

IN, OUT = "transactions", "fraud-alerts"


def at(s: float) -> int:
    return BASE_MS + int(s * SECOND)


def txn(card: str, s: float, amount: float, merchant: str = "m-1") -> tuple[str, dict, int]:
    return (card, {"card": card, "amount": amount, "merchant": merchant}, at(s))


def pattern(card: str, small_s: float, small: float, large_s: float, large: float,
            merchant: str = "m-1") -> tuple[dict[str, Any], int]:
    return ({"card": card, "rule": "small_then_large", "ts": at(large_s), "amount": large,
             "merchant": merchant, "small_ts": at(small_s), "small_amount": small},
            at(large_s))


def velocity(card: str, end_s: float, count: int) -> tuple[dict[str, Any], int]:
    return ({"card": card, "rule": "velocity", "ts": at(end_s), "count": count,
             "window_start": at(end_s) - VELOCITY_WINDOW_MS}, at(end_s))


def test_a_small_charge_then_a_large_one_alerts_once_the_watermark_passes_it(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [txn("c-01", 0, 0.50), txn("c-01", 30, 750.00)])
    assert d.records(OUT) == []  # watermark 25 s: a charge before 30 s may still arrive
    pipe_all(d, IN, [txn("c-01", 36, 20.00)])  # watermark 31 s
    assert per_key(d.records(OUT)) == {"c-01": [pattern("c-01", 0, 0.50, 30, 750.00)]}
    d.finish()
    assert len(d.records(OUT)) == 1


def test_charges_are_examined_in_event_time_order(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [txn("c-02", 80, 900.00, "m-4"),
                     txn("c-02", 77, 0.30),  # arrives 3 s late: within the bound
                     txn("c-03", 100, 0.20), txn("c-03", 110, 12.00),
                     txn("c-03", 120, 600.00),  # not right after the small one: no alert
                     txn("c-04", 200, 0.10), txn("c-04", 260, 550.00),  # exactly 1 min: alert
                     txn("c-05", 300, 0.10), txn("c-05", 360.001, 550.00)])  # over 1 min
    d.finish()
    assert per_key(d.records(OUT)) == {"c-02": [pattern("c-02", 77, 0.30, 80, 900.00, "m-4")],
                                       "c-04": [pattern("c-04", 200, 0.10, 260, 550.00)]}


def test_late_charges_are_left_out_of_the_pattern(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [txn("c-06", 60, 800.00),
                     txn("c-06", 50, 0.50),  # watermark 55 s: late, ignored
                     txn("c-07", 100, 0.50), txn("c-99", 125, 10.00),
                     txn("c-07", 110, 700.00)])  # watermark 120 s: late, ignored
    d.finish()
    assert d.records(OUT) == []


def test_a_cards_state_is_deleted_a_minute_after_its_last_small_charge(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [txn("c-08", 0, 0.50), txn("c-09", 30, 10.00)])
    assert "c-08" in d.state("card-pattern")
    pipe_all(d, IN, [txn("c-09", 70, 10.00)])  # watermark 65 s: the small charge is forgotten
    state = d.state("card-pattern")
    assert "c-08" not in state
    assert state["c-09"] == {"pending": [[at(70), 10.00, "m-1"]], "small": None}


def test_more_than_five_charges_in_a_minute_alert_on_every_update(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [txn("c-10", s, 20.00) for s in (0, 10, 20, 30, 40)])
    assert d.records(OUT) == []
    pipe_all(d, IN, [txn("c-10", 50, 20.00)])  # the 6th within [-10 s, 50 s]: at once
    assert d.key_values(OUT) == [("c-10", velocity("c-10", 50, 6)[0])]
    pipe_all(d, IN, [txn("c-10", 55, 20.00),
                     txn("c-10", 52, 20.00),  # out of order: in the windows ending 52 and 55
                     txn("c-10", 130, 20.00)])  # alone in [70 s, 130 s]
    assert per_key(d.records(OUT)) == {"c-10": [
        velocity("c-10", 50, 6), velocity("c-10", 55, 7), velocity("c-10", 52, 7),
        velocity("c-10", 55, 8)]}


@pytest.mark.parametrize(("seed", "partitions"), [(4, 2), (32, 3)])
def test_the_sample_gives_what_a_batch_computation_gives(topology_driver, seed, partitions):
    events = sample(seed=seed)
    assert out_of_order(events, partitions) > 10
    d = topology_driver(build(), partitions=partitions)
    pipe_all(d, IN, events, partitions)
    d.finish()
    out, late = expected.fraud_alerts(events, lambda k: partition_of(k, partitions))
    got = by_rule(per_key(d.records(OUT)))
    assert got == by_rule(out[OUT])
    assert {rule for _, rule in got} == {"small_then_large", "velocity"}
    arrival = {(card, ts): i for i, (card, _, ts) in enumerate(events)}
    assert any(arrival[key, v["small_ts"]] > arrival[key, v["ts"]]
               for (key, rule), seq in got.items() if rule == "small_then_large"
               for v, _ in seq), "an alert whose small charge arrived after the large one"
    assert late, "the sample has late charges"
    assert d.metrics.total("late_records_total") == late


def test_crash_safety():
    script = steps(IN, [txn("c-01", 0, 0.50), txn("c-01", 10, 700.00), txn("c-01", 12, 20.00),
                        txn("c-01", 5, 20.00),  # late (watermark 7 s): left out
                        txn("c-01", 16, 20.00)])  # watermark 11 s: the alert
    assert check_crash_safety(build, script) == 4 * len(script)
