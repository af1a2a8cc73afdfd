"""Tables and stream-table joins on the test driver: rows, views, changes, joins, crashes."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc import Table, Topology, TopologyError, codecs
from streamproc.graph.compile import compile_topology
from streamproc.testing import TopologyTestDriver


def _customers(t: Topology) -> Table:
    return t.table("customers", store="customers", key=codecs.string())


def _enriched(how: str = "left") -> Topology:
    t = Topology("enrich")
    customers = _customers(t)
    (t.source("payments", key=codecs.string())
     .join(customers, lambda p, c: {**p, "tier": c["tier"] if c else None}, how=how)
     .to("enriched", key=codecs.string()))
    return t


def test_a_table_holds_the_latest_value_per_key_and_a_tombstone_deletes() -> None:
    t = Topology("rows")
    _customers(t).to_stream().to("changes", key=codecs.string())
    with TopologyTestDriver(t, partitions=2) as d:
        d.pipe("customers", {"tier": "gold"}, key="ann")
        d.pipe("customers", {"tier": "silver"}, key="bob")
        d.pipe("customers", {"tier": "bronze"}, key="ann")
        d.pipe("customers", None, key="bob")
        d.pipe("customers", None, key="cid")  # a delete of a key never seen changes nothing
        assert d.state("customers") == {"ann": {"tier": "bronze"}}
        assert sorted(d.key_values("changes"), key=repr) == sorted(
            [("ann", {"tier": "gold"}), ("bob", {"tier": "silver"}),
             ("ann", {"tier": "bronze"}), ("bob", None)], key=repr)
        assert [v for k, v in d.key_values("changes") if k == "ann"] == [
            {"tier": "gold"}, {"tier": "bronze"}]


def test_a_filtered_view_deletes_rows_that_stop_passing() -> None:
    t = Topology("views")
    (_customers(t).filter(lambda c: c["tier"] == "gold").map_values(lambda c: c["limit"])
     .to_stream().to("gold-limits", key=codecs.string()))
    with TopologyTestDriver(t) as d:
        d.pipe("customers", {"tier": "gold", "limit": 10}, key="ann")
        d.pipe("customers", {"tier": "gold", "limit": 20}, key="ann")
        d.pipe("customers", {"tier": "basic", "limit": 5}, key="ann")  # leaves the view
        d.pipe("customers", {"tier": "basic", "limit": 6}, key="ann")  # absent before and after
        d.pipe("customers", {"tier": "gold", "limit": 30}, key="ann")
        d.pipe("customers", None, key="ann")
        assert d.key_values("gold-limits") == [("ann", 10), ("ann", 20), ("ann", None),
                                               ("ann", 30), ("ann", None)]
        assert d.state("customers") == {}


@pytest.mark.parametrize("how", ["inner", "left"])
def test_a_stream_record_joins_the_row_of_its_key_as_of_its_processing(how: str) -> None:
    with TopologyTestDriver(_enriched(how), partitions=3) as d:
        d.pipe("customers", {"tier": "gold"}, key="ann")
        d.pipe("payments", {"id": 1}, key="ann")
        d.pipe("payments", {"id": 2}, key="bob")  # no row
        d.pipe("customers", {"tier": "basic"}, key="ann")
        d.pipe("payments", {"id": 3}, key="ann")
        d.pipe("customers", None, key="ann")
        d.pipe("payments", {"id": 4}, key="ann")
        got = sorted(d.values("enriched"), key=lambda v: v["id"])
        expected = [{"id": 1, "tier": "gold"}, {"id": 2, "tier": None},
                    {"id": 3, "tier": "basic"}, {"id": 4, "tier": None}]
        if how == "inner":
            expected = [e for e in expected if e["tier"] is not None]
        assert got == expected


def test_table_updates_alone_emit_nothing_from_a_join() -> None:
    with TopologyTestDriver(_enriched()) as d:
        for i in range(5):
            d.pipe("customers", {"tier": f"t{i}"}, key="ann")
        assert d.values("enriched") == []


def test_a_joiner_that_changes_its_row_does_not_change_the_table() -> None:
    t = Topology("mutate")
    customers = _customers(t)

    def joiner(p: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
        c["seen"] = c.get("seen", 0) + 1
        return {**p, **c}

    t.source("payments", key=codecs.string()).join(customers, joiner).to("out")
    with TopologyTestDriver(t) as d:
        d.pipe("customers", {"tier": "gold"}, key="ann")
        d.pipe("payments", {"id": 1}, key="ann")
        d.pipe("payments", {"id": 2}, key="ann")
        assert d.values("out") == [{"id": 1, "tier": "gold", "seen": 1},
                                   {"id": 2, "tier": "gold", "seen": 1}]
        assert d.state("customers") == {"ann": {"tier": "gold"}}


def test_a_join_after_a_key_change_repartitions_by_the_tables_key_codec() -> None:
    t = Topology("rekeyed")
    customers = _customers(t)
    (t.source("payments")  # raw keys; the customer is in the value
     .key_by(lambda p: p["customer"])
     .join(customers, lambda p, c: [p["id"], c["tier"]], name="by-customer")
     .to("out", key=codecs.string()))
    compiled = compile_topology(t)
    assert list(compiled.repartition_topics) == ["rekeyed-by-customer.repartition-repartition"]
    with TopologyTestDriver(t, partitions=4) as d:
        for name, tier in (("ann", "gold"), ("bob", "basic"), ("cid", "gold")):
            d.pipe("customers", {"tier": tier}, key=name)
        for i, name in enumerate(["ann", "bob", "cid", "dan", "ann"]):
            d.pipe("payments", {"id": i, "customer": name}, key=b"p%d" % i)
        assert sorted(d.key_values("out")) == [("ann", [0, "gold"]), ("ann", [4, "gold"]),
                                                ("bob", [1, "basic"]), ("cid", [2, "gold"])]


def test_keys_encoded_differently_on_the_two_sides_are_refused() -> None:
    t = Topology("mismatch")
    customers = _customers(t)  # string keys
    with pytest.raises(TopologyError, match=r"stream's keys are encoded with raw but the "
                                            r"table's with string"):
        t.source("payments").join(customers)


def test_a_join_across_different_partition_counts_is_refused_naming_both_topics() -> None:
    with pytest.raises(TopologyError, match=r"table customers is joined with topics of another "
                                            r"partition count \(customers has 2, payments has "
                                            r"3\)"):
        TopologyTestDriver(_enriched(), partitions={"customers": 2, "payments": 3})


def test_a_crash_replays_the_join_exactly_once_and_restores_the_table_from_its_topic() -> None:
    with TopologyTestDriver(_enriched(), partitions=2, auto_commit=False) as d:
        d.pipe("customers", {"tier": "gold"}, key="ann")
        d.pipe("customers", {"tier": "basic"}, key="bob")
        d.pipe("payments", {"id": 1}, key="ann")
        d.commit()
        d.pipe("customers", {"tier": "platinum"}, key="ann")
        d.pipe("payments", {"id": 2}, key="ann")
        d.crash(lose_state=True)  # rebuilt from the customers topic up to the committed offset
        assert d.state("customers") == {"ann": {"tier": "platinum"}, "bob": {"tier": "basic"}}
        d.pipe("payments", {"id": 3}, key="bob")
        d.commit()
        assert sorted(d.values("enriched"), key=lambda v: v["id"]) == [
            {"id": 1, "tier": "gold"}, {"id": 2, "tier": "platinum"}, {"id": 3, "tier": "basic"}]
        # No changelog topic: the customers topic is the table's changelog.
        assert d.compiled.changelog_topics == {}
        assert d.compiled.table_sources == {"customers": (0, "customers")}


def test_undecodable_table_records_are_dead_lettered_and_skipped_by_a_restore() -> None:
    with TopologyTestDriver(_enriched(), auto_commit=False) as d:
        d.pipe("customers", {"tier": "gold"}, key="ann")
        d.pipe("customers", b"{not json", key="bob")
        d.pipe("customers", {"tier": "basic"}, key=None)  # a row needs a key
        d.commit()
        assert [(r.value, r.headers["streamproc.error.type"]) for r in d.dead_letters()] == [
            (b"{not json", b"CodecError"), (b'{"tier":"basic"}', b"NullKeyError")]
        d.crash(lose_state=True)
        assert d.state("customers") == {"ann": {"tier": "gold"}}
        d.pipe("payments", {"id": 1}, key="bob")
        d.commit()
        assert d.values("enriched") == [{"id": 1, "tier": None}]
        assert len(d.dead_letters()) == 2  # the restore dead-letters nothing again


def test_to_table_materializes_a_stream_with_a_changelog_of_its_own() -> None:
    t = Topology("latest")
    limits = (t.source("limits", key=codecs.string())
              .map(lambda v: None if v.get("closed") else v["limit"])
              .to_table(store="limits"))
    (t.source("orders", key=codecs.string())
     .join(limits, lambda o, limit: {"order": o["id"], "ok": o["amount"] <= limit})
     .to("checked", key=codecs.string()))
    with TopologyTestDriver(t, partitions=2, auto_commit=False) as d:
        d.pipe("limits", {"limit": 100}, key="ann")
        d.pipe("limits", {"limit": 50}, key="bob")
        d.pipe("limits", {"closed": True}, key="bob")
        d.pipe("orders", {"id": 1, "amount": 80}, key="ann")
        d.pipe("orders", {"id": 2, "amount": 10}, key="bob")
        d.commit()
        assert d.compiled.changelog_topics == {"limits": (0, "latest-limits-changelog")}
        assert sorted(((r.key, r.value) for r in d.records("latest-limits-changelog", raw=True)),
                      key=repr) == [(b"ann", b"100"), (b"bob", None)]
        d.crash(lose_state=True)
        assert d.state("limits") == {"ann": 100}
        assert d.key_values("checked") == [("ann", {"order": 1, "ok": True})]


def _by_merchant(how: str = "left") -> Topology:
    t = Topology("merchant")
    merchants = t.global_table("merchants", store="merchants", key=codecs.string())
    (t.source("payments", key=codecs.string())
     .join(merchants, lambda p, m: {**p, "category": m["category"] if m else None}, how=how,
           key=lambda p: p["merchant"])
     .to("categorized", key=codecs.string()))
    return t


@pytest.mark.parametrize("how", ["inner", "left"])
def test_a_global_table_joins_by_a_key_from_the_value_across_partition_counts(how: str) -> None:
    # 5 payment partitions against 2 merchant partitions: no co-partitioning needed.
    with TopologyTestDriver(_by_merchant(how), partitions={"payments": 5, "merchants": 2}) as d:
        for m, cat in (("m1", "food"), ("m2", "fuel"), ("m3", "books")):
            d.pipe("merchants", {"category": cat}, key=m)
        for i, (customer, merchant) in enumerate(
                [("ann", "m1"), ("bob", "m2"), ("cid", "m3"), ("dan", "m4"), ("eve", "m1")]):
            d.pipe("payments", {"id": i, "merchant": merchant}, key=customer)
        d.pipe("merchants", None, key="m1")
        d.pipe("payments", {"id": 5, "merchant": "m1"}, key="ann")
        got = sorted(d.values("categorized"), key=lambda v: v["id"])
        expected = [{"id": 0, "merchant": "m1", "category": "food"},
                    {"id": 1, "merchant": "m2", "category": "fuel"},
                    {"id": 2, "merchant": "m3", "category": "books"},
                    {"id": 3, "merchant": "m4", "category": None},
                    {"id": 4, "merchant": "m1", "category": "food"},
                    {"id": 5, "merchant": "m1", "category": None}]
        if how == "inner":
            expected = [e for e in expected if e["category"] is not None]
        assert got == expected
        assert d.state("merchants") == {"m2": {"category": "fuel"}, "m3": {"category": "books"}}
        assert d.compiled.describe()["global_tables"] == [
            {"store": "merchants", "topic": "merchants", "key_codec": "string",
             "value_codec": "json", "on_error": "dead_letter"}]


def test_a_global_table_survives_a_crash_and_is_reloaded_after_losing_its_state() -> None:
    with TopologyTestDriver(_by_merchant(), partitions=2, auto_commit=False) as d:
        d.pipe("merchants", {"category": "food"}, key="m1")
        d.pipe("merchants", b"{oops", key="m2")
        d.commit()
        assert [r.value for r in d.dead_letters()] == [b"{oops"]
        d.crash()  # rows kept locally with their offsets: nothing is read again
        assert [r.value for r in d.dead_letters()] == [b"{oops"]
        d.crash(lose_state=True)  # read again from the topic's first offset
        assert d.state("merchants") == {"m1": {"category": "food"}}
        d.pipe("payments", {"id": 1, "merchant": "m1"}, key="ann")
        d.commit()
        assert d.values("categorized") == [{"id": 1, "merchant": "m1", "category": "food"}]


def test_a_key_extractor_is_refused_for_a_co_partitioned_table() -> None:
    t = Topology("nokey")
    customers = _customers(t)
    with pytest.raises(TopologyError, match=r"join\(key=...\) is for global tables"):
        t.source("payments", key=codecs.string()).join(customers, key=lambda v: v["c"])
