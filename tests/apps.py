"""Topologies for tests run as real processes: names come from the environment so that every
test gets its own application id and topics (``streamproc run tests.apps:wordcount``)."""

from __future__ import annotations

import os

from streamproc import Topology, codecs
from topologies.wordcount import build


def wordcount() -> Topology:
    return build(os.environ["T_APP"], os.environ["T_IN"], os.environ["T_OUT"])


def strict_numbers() -> Topology:
    """JSON numbers in, doubled out; ``on_error`` from T_POLICY; 13 makes the user code raise."""
    policy = os.environ.get("T_POLICY", "dead_letter")
    t = Topology(os.environ["T_APP"])

    (t.source(os.environ["T_IN"], key=codecs.string(), value=codecs.json(),
              on_error=policy)  # type: ignore[arg-type]
     .filter(is_int)
     .map(double)
     .to(os.environ["T_OUT"], value=codecs.json()))
    return t


def is_int(v: object) -> bool:
    if not isinstance(v, int):
        raise TypeError(f"expected an int, got {type(v).__name__}")
    return True


def double(v: int) -> int:
    if v == 13:
        raise ValueError("unlucky number")
    return v * 2


def keyed_counts() -> Topology:
    """Count per Kafka key straight from the source: every task is stateful."""
    t = Topology(os.environ["T_APP"])
    (t.source(os.environ["T_IN"], key=codecs.string(), value=codecs.string())
     .group_by_key().count(store="counts")
     .to(os.environ["T_OUT"], value=codecs.json()))
    return t


def windowed_counts() -> Topology:
    """Events re-keyed by group (a repartition, so watermarks cross it as control records),
    counted per group in 100 ms tumbling event-time windows, emit final, late records to the
    late topic."""
    from streamproc import windows

    t = Topology(os.environ["T_APP"])
    (t.source(os.environ["T_IN"], key=codecs.string(), value=codecs.json(),
              timestamp=event_time)
     .group_by(group_of, key=codecs.string(), name="groups")
     .window(windows.tumbling(100, grace_ms=20)).count(store="windows", late="side_output")
     .to(os.environ["T_OUT"], value=codecs.json()))
    return t


def event_time(v: dict[str, int]) -> int:
    return v["ts"]


def group_of(v: dict[str, str]) -> str:
    return v["g"]


def renamed_wordcount(app_id: str, source: str, sink: str) -> Topology:
    """Word count whose store is called ``word_counts`` (a new version renaming ``counts``)."""
    t = Topology(app_id)
    (t.source(source, value=codecs.string())
     .flat_map(lambda line: line.lower().split(), name="split")
     .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
     .count(store="word_counts")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return t


def hostile_windows() -> Topology:
    """The hostile-input fuzzer's topology (tests/hostile.py): JSON events keyed by a string,
    event time from the value, tagged with their key, re-keyed by group (a repartition, so
    watermarks cross it as control records), then ``[count, sum of n]`` per group in
    ``HOSTILE_WINDOW_MS`` tumbling windows, emit final, late records to the late topic."""
    from streamproc import windows

    t = Topology(os.environ["T_APP"])
    (t.source(os.environ["T_IN"], key=codecs.string(), value=codecs.json(),
              timestamp=hostile_event_time, name="events")
     .process(hostile_tag, name="tag")
     .group_by(hostile_group, key=codecs.string(), name="groups")
     .window(windows.tumbling(HOSTILE_WINDOW_MS))
     .aggregate(hostile_zero, hostile_add, store="windows", late="side_output")
     .to(os.environ["T_OUT"], value=codecs.json()))
    return t


HOSTILE_WINDOW_MS = 1000


def hostile_event_time(v: dict[str, object]) -> float:
    """``v["ts"]``: a number, or a number written as text (``float(text)``, so ``"NaN"`` and
    ``"inf"`` come out of here as non-finite floats); anything else raises TypeError."""
    ts = v["ts"]
    if isinstance(ts, str):
        return float(ts)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise TypeError(f"ts must be a number, got {type(ts).__name__}")
    return ts


def hostile_tag(ctx: object, key: str, v: dict[str, object]) -> None:
    """The event as the aggregation needs it, with (the first 16 characters of) its key: a null
    key is a TypeError here."""
    n = v["n"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    ctx.emit({"id": v["id"], "g": v["g"], "ts": v["ts"], "n": n,  # type: ignore[attr-defined]
              "k": key[:16], "pad": v.get("pad", "")})


def hostile_group(v: dict[str, object]) -> object:
    return v["g"]


def hostile_zero() -> list[int]:
    return [0, 0]


def hostile_add(acc: list[int], v: dict[str, int]) -> list[int]:
    return [acc[0] + 1, acc[1] + v["n"]]


def regrouped_counts(app_id: str, src: str, sink: str) -> Topology:
    """Readings ``{"g": group, "ts": ms}`` re-keyed by group (a repartition topic carries the
    watermarks), counted in 1 s tumbling windows, ``[start, count]`` out; a value that is not
    JSON is dead-lettered."""
    from streamproc import windows

    t = Topology(app_id)
    (t.source(src, key=codecs.string(), value=codecs.json(), timestamp=event_time)
     .group_by(group_of, key=codecs.string(), name="regroup")
     .window(windows.tumbling(1000)).count(store="per-second")
     .map(start_and_count, name="pair")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return t


def start_and_count(window: dict[str, int]) -> list[int]:
    return [window["start"], window["value"]]


def hanging() -> Topology:
    """Lines in, the same out; a line ``hang`` makes the user code sleep for an hour."""
    t = Topology(os.environ["T_APP"])
    (t.source(os.environ["T_IN"], value=codecs.string())
     .map(_maybe_hang, name="maybe-hang")
     .to(os.environ["T_OUT"], value=codecs.string()))
    return t


def _maybe_hang(line: str) -> str:
    if line == "hang":
        import time
        from pathlib import Path

        Path(os.environ["T_HANG_MARK"]).write_text("hanging")
        time.sleep(3600)
    return line


def enrichment() -> Topology:
    """Payments (key = customer) left-joined with the customers table (T_TABLE, key = customer,
    JSON ``{"tier": ...}``); the table's changes go to T_CHANGES."""
    t = Topology(os.environ["T_APP"])
    customers = t.table(os.environ["T_TABLE"], store="customers", key=codecs.string())
    (t.source(os.environ["T_IN"], key=codecs.string())
     .join(customers, with_tier, how="left")
     .to(os.environ["T_OUT"], key=codecs.string()))
    customers.to_stream().to(os.environ["T_CHANGES"], key=codecs.string())
    return t


def with_tier(payment: dict[str, object], customer: dict[str, object] | None
              ) -> dict[str, object]:
    return {**payment, "tier": customer["tier"] if customer is not None else None}


def merchant_categories() -> Topology:
    """Payments (key = customer) joined with the global table of merchants (T_TABLE, key =
    merchant) by the payment's ``merchant`` field."""
    t = Topology(os.environ["T_APP"])
    merchants = t.global_table(os.environ["T_TABLE"], store="merchants", key=codecs.string())
    (t.source(os.environ["T_IN"], key=codecs.string())
     .join(merchants, with_category, how="left", key=merchant_of)
     .to(os.environ["T_OUT"], key=codecs.string()))
    return t


def merchant_of(payment: dict[str, object]) -> object:
    return payment["merchant"]


def with_category(payment: dict[str, object], merchant: dict[str, object] | None
                  ) -> dict[str, object]:
    return {**payment, "category": merchant["category"] if merchant is not None else None}


def ad_attribution() -> Topology:
    """topologies/ad_attribution.py with the topics of T_APP, T_IN (impressions), T_CLICKS and
    T_OUT."""
    from topologies.ad_attribution import build

    return build(os.environ["T_APP"], os.environ["T_IN"], os.environ["T_CLICKS"],
                 os.environ["T_OUT"])
