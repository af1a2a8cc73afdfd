"""The builder API (Topology, Stream, GroupedStream) and compile_topology."""

from __future__ import annotations

import json

import pytest

from streamproc import GroupedStream, Stream, Topology, TopologyError, codecs
from streamproc.graph.compile import compile_topology
from streamproc.names import NAME_RULE, TOPIC_RULE
from topologies.wordcount import build


def _kinds(compiled):
    return [[n["kind"] for n in st["nodes"]] for st in compiled.describe()["subtopologies"]]


# -- wordcount -------------------------------------------------------------------------------
def test_wordcount_compiles_into_two_subtopologies():
    compiled = compile_topology(build())
    assert compiled.application_id == "wordcount"
    assert [st.id for st in compiled.subtopologies] == [0, 1]
    assert [st.source_topics for st in compiled.subtopologies] == [
        ["text-lines"], ["wordcount-words-repartition"]]
    assert compiled.dead_letter_topic == "wordcount-dlq"
    assert compiled.repartition_topics == {"wordcount-words-repartition": (0, 1, None)}
    assert compiled.changelog_topics == {"counts": (1, "wordcount-counts-changelog")}
    assert compiled.topic_subtopology == {"text-lines": 0, "wordcount-words-repartition": 1}
    assert compiled.user_source_topics == ["text-lines"]
    assert compiled.sink_topics == ["word-counts"]


def test_wordcount_subtopology_contents():
    first, second = compile_topology(build()).subtopologies
    assert [n.name for n in first.nodes] == ["source-1", "split", "words.key", "words"]
    assert first.stores == []
    assert [r.topic for r in first.repartition_sinks] == ["wordcount-words-repartition"]
    assert first.sinks == []
    assert [n.name for n in second.nodes] == ["words.source", "count-5", "to-6"]
    assert [s.name for s in second.stores] == ["counts"]
    assert second.stores[0].value_codec.name == "json"
    assert second.repartition_sinks == []
    assert [s.topic for s in second.sinks] == ["word-counts"]
    (internal,) = second.sources
    assert internal.internal is True
    assert internal.topics == ("wordcount-words-repartition",)
    assert internal.key_codec.name == "string"
    assert internal.value_codec.name == "string"
    assert internal.on_error == "dead_letter"
    assert second.parents == {"words.source": [], "count-5": ["words.source"],
                              "to-6": ["count-5"]}
    assert {k: [c.name for c in v] for k, v in second.children.items()} == {
        "words.source": ["count-5"], "count-5": ["to-6"], "to-6": []}


def test_wordcount_with_other_names():
    compiled = compile_topology(build("wc2", "lines-in", "counts-out"))
    assert [st.source_topics for st in compiled.subtopologies] == [
        ["lines-in"], ["wc2-words-repartition"]]
    assert compiled.repartition_topics == {"wc2-words-repartition": (0, 1, None)}
    assert compiled.changelog_topics == {"counts": (1, "wc2-counts-changelog")}
    assert compiled.dead_letter_topic == "wc2-dlq"
    assert compiled.sink_topics == ["counts-out"]


def test_wordcount_describe_is_json_and_uses_operator_kinds():
    compiled = compile_topology(build())
    desc = compiled.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert _kinds(compiled) == [["source", "flat_map", "key_by", "repartition"],
                                ["source", "count", "to"]]
    assert desc["application_id"] == "wordcount"
    assert desc["dead_letter_topic"] == "wordcount-dlq"
    assert desc["repartition_topics"] == ["wordcount-words-repartition"]
    assert desc["changelog_topics"] == ["wordcount-counts-changelog"]
    second = desc["subtopologies"][1]
    assert second == {
        "id": 1,
        "source_topics": ["wordcount-words-repartition"],
        "stores": ["counts"],
        "sink_topics": ["word-counts"],
        "repartition_topics": [],
        "time_store": None,
        "nodes": [
            {"name": "words.source", "kind": "source", "parents": [],
             "topics": ["wordcount-words-repartition"], "timestamp": "create_time",
             "max_out_of_orderness_ms": 0, "idle_timeout_ms": None,
             "on_error": "dead_letter", "key_codec": "string", "value_codec": "string",
             "children": ["count-5"]},
            {"name": "count-5", "kind": "count", "parents": ["words.source"],
             "store": "counts", "children": ["to-6"]},
            {"name": "to-6", "kind": "to", "parents": ["count-5"], "topic": "word-counts",
             "key_codec": "string", "value_codec": "json", "children": []},
        ],
    }


def test_topology_describe_is_json_and_lists_every_node():
    t = build()
    desc = t.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["application_id"] == "wordcount"
    assert [(n["name"], n["kind"], n["parents"]) for n in desc["nodes"]] == [
        ("source-1", "source", []),
        ("split", "flat_map", ["source-1"]),
        ("words.key", "key_by", ["split"]),
        ("words", "repartition", ["words.key"]),
        ("count-5", "count", ["words"]),
        ("to-6", "to", ["count-5"]),
    ]
    assert repr(t) == "Topology('wordcount', 6 nodes)"


def test_describe_names_every_operator_kind():
    t = Topology("kinds")
    a = t.source("a", timestamp=lambda v: v["ts"], on_error="skip")
    b = t.source("b", key=codecs.string())
    m = a.map(lambda v: v).filter(lambda v: True).flat_map(lambda v: [v]).merge(b)
    arms = m.branch({"x": lambda v: True}, otherwise="y")
    arms["x"].process(lambda ctx, k, v: None).to("o1")
    g = arms["y"].group_by_key()
    g.sum(store="s1").to("o2")
    g.reduce(lambda a, b: a, store="s2").to("o3")
    g.aggregate(list, lambda acc, v: acc, store="s3").to("o4")
    g.process(lambda ctx, k, v: None, store="s4").to("o5")
    compiled = compile_topology(t)
    desc = compiled.describe()
    assert json.loads(json.dumps(desc)) == desc
    (only,) = desc["subtopologies"]
    kinds = {n["name"]: n["kind"] for n in only["nodes"]}
    assert kinds == {
        "source-1": "source", "source-2": "source", "map-3": "map", "filter-4": "filter",
        "flat_map-5": "flat_map", "merge-6": "merge", "branch-7": "branch",
        # Arm names go through the same naming (and counter) as every operator.
        "branch-7.x": "arm", "branch-7.y": "arm", "process-10": "process", "to-11": "to",
        "sum-12": "sum", "to-13": "to", "reduce-14": "reduce", "to-15": "to",
        "aggregate-16": "aggregate", "to-17": "to", "process-18": "process",
        "to-19": "to",
    }
    by_name = {n["name"]: n for n in only["nodes"]}
    assert by_name["source-1"]["timestamp"] == "extractor"
    assert by_name["source-1"]["on_error"] == "skip"
    assert by_name["source-1"]["key_codec"] == "raw"
    assert by_name["source-1"]["value_codec"] == "json"
    assert by_name["source-2"]["key_codec"] == "string"
    assert by_name["merge-6"]["parents"] == ["source-2", "flat_map-5"]
    assert by_name["process-10"]["store"] is None
    assert by_name["process-18"]["store"] == "s4"
    assert only["stores"] == ["s1", "s2", "s3", "s4"]
    assert only["source_topics"] == ["a", "b"]
    assert only["sink_topics"] == ["o1", "o2", "o3", "o4", "o5"]


# -- shape of compiled topologies ------------------------------------------------------------
def test_stateless_topology_is_one_subtopology():
    t = Topology("stateless")
    t.source("in").map(lambda v: v).filter(lambda v: True).to("out")
    compiled = compile_topology(t)
    assert len(compiled.subtopologies) == 1
    (st,) = compiled.subtopologies
    assert st.id == 0
    assert st.source_topics == ["in"]
    assert [n.name for n in st.nodes] == ["source-1", "map-2", "filter-3", "to-4"]
    assert st.stores == []
    assert compiled.repartition_topics == {}
    assert compiled.changelog_topics == {}
    assert compiled.sink_topics == ["out"]


def test_key_by_then_count_auto_inserts_a_repartition():
    t = Topology("app")
    (t.source("in").key_by(lambda v: v["user"]).group_by_key().count(store="per-user")
     .to("out"))
    compiled = compile_topology(t)
    assert [st.source_topics for st in compiled.subtopologies] == [
        ["in"], ["app-group_by-3-repartition"]]
    assert compiled.repartition_topics == {"app-group_by-3-repartition": (0, 1, None)}
    assert compiled.changelog_topics == {"per-user": (1, "app-per-user-changelog")}
    assert _kinds(compiled) == [["source", "key_by", "repartition"],
                                ["source", "count", "to"]]
    rep = compiled.subtopologies[0].repartition_sinks[0]
    assert rep.key_codec.name == "json"  # key_by's default key codec
    assert rep.value_codec.name == "json"


def test_group_by_key_on_a_source_does_not_repartition():
    t = Topology("app")
    t.source("in", key=codecs.string()).group_by_key().count(store="c").to("out")
    compiled = compile_topology(t)
    assert len(compiled.subtopologies) == 1
    assert compiled.repartition_topics == {}
    assert compiled.changelog_topics == {"c": (0, "app-c-changelog")}
    assert _kinds(compiled) == [["source", "count", "to"]]


def test_value_operators_keep_the_key_so_no_repartition():
    t = Topology("app")
    (t.source("in").map(lambda v: v).filter(bool).flat_map(lambda v: [v])
     .group_by_key().sum(store="s").to("out"))
    assert len(compile_topology(t).subtopologies) == 1


def test_named_group_by_with_partitions_and_codecs():
    t = Topology("app")
    (t.source("in").group_by(lambda v: v, key=codecs.string(), value=codecs.int64(),
                             name="by-word", partitions=12)
     .count(store="c").to("out"))
    compiled = compile_topology(t)
    assert compiled.repartition_topics == {"app-by-word-repartition": (0, 1, 12)}
    rep = compiled.subtopologies[0].repartition_sinks[0]
    assert rep.name == "by-word"
    assert (rep.key_codec.name, rep.value_codec.name) == ("string", "int64")
    assert [n.name for n in compiled.subtopologies[0].nodes] == [
        "source-1", "by-word.key", "by-word"]


def test_process_with_store_after_key_change_repartitions_under_the_store_name():
    t = Topology("app")
    t.source("in").key_by(lambda v: v).process(lambda c, k, v: None, store="st").to("out")
    compiled = compile_topology(t)
    assert compiled.repartition_topics == {"app-st-repartition": (0, 1, None)}
    assert compiled.changelog_topics == {"st": (1, "app-st-changelog")}


def test_process_output_is_repartitioned_before_a_keyed_operation():
    t = Topology("app")
    (t.source("in").process(lambda c, k, v: None).group_by_key(name="again")
     .count(store="c").to("out"))
    compiled = compile_topology(t)
    assert compiled.repartition_topics == {"app-again-repartition": (0, 1, None)}


def test_chained_repartitions_are_ordered_upstream_first():
    t = Topology("app")
    (t.source("in").group_by(lambda v: v, name="one").count(store="c1")
     .group_by(lambda v: v, name="two").count(store="c2").to("out"))
    compiled = compile_topology(t)
    assert [st.source_topics for st in compiled.subtopologies] == [
        ["in"], ["app-one-repartition"], ["app-two-repartition"]]
    assert compiled.repartition_topics == {"app-one-repartition": (0, 1, None),
                                           "app-two-repartition": (1, 2, None)}
    assert compiled.changelog_topics == {"c1": (1, "app-c1-changelog"),
                                         "c2": (2, "app-c2-changelog")}


def test_merge_of_two_sources_lands_in_one_subtopology():
    t = Topology("app")
    a = t.source("a", key=codecs.string())
    b = t.source("b", key=codecs.string())
    a.merge(b).to("out")
    compiled = compile_topology(t)
    assert len(compiled.subtopologies) == 1
    (st,) = compiled.subtopologies
    assert st.source_topics == ["a", "b"]
    assert [s.name for s in st.sources] == ["source-1", "source-2"]
    assert compiled.topic_subtopology == {"a": 0, "b": 0}
    assert compiled.source_node("b").name == "source-2"


def test_merge_with_a_rekeyed_stream_requires_repartition():
    t = Topology("app")
    a = t.source("a")
    b = t.source("b").key_by(lambda v: v)
    a.merge(b).group_by_key(name="m").count(store="c").to("out")
    compiled = compile_topology(t)
    assert compiled.repartition_topics == {"app-m-repartition": (0, 1, None)}


def test_independent_sources_are_separate_subtopologies():
    t = Topology("app")
    t.source("a").to("x")
    t.source("b").to("y")
    compiled = compile_topology(t)
    assert [st.source_topics for st in compiled.subtopologies] == [["a"], ["b"]]
    assert compiled.topic_subtopology == {"a": 0, "b": 1}
    assert compiled.sink_topics == ["x", "y"]


def test_source_defaults():
    t = Topology("app")
    t.source("in").to("out")
    compiled = compile_topology(t)
    src = compiled.source_node("in")
    assert (src.key_codec.name, src.value_codec.name) == ("raw", "json")
    assert src.timestamp == "create_time"
    assert src.on_error == "dead_letter"
    assert src.internal is False
    sink = compiled.subtopologies[0].sinks[0]
    assert (sink.key_codec.name, sink.value_codec.name) == ("raw", "json")


def test_topology_level_error_policy_applies_to_sources_and_internal_sources():
    t = Topology("app", on_error="skip")
    t.source("in", on_error="fail").group_by(lambda v: v, name="g").count(store="c").to("o")
    compiled = compile_topology(t)
    assert compiled.source_node("in").on_error == "fail"
    assert compiled.source_node("app-g-repartition").on_error == "skip"


def test_multi_topic_source():
    t = Topology("app")
    t.source("a", "b", name="both").to("out")
    compiled = compile_topology(t)
    assert compiled.subtopologies[0].source_topics == ["a", "b"]
    assert compiled.source_node("a") is compiled.source_node("b")


# -- branch ----------------------------------------------------------------------------------
def test_branch_returns_a_stream_per_name_including_otherwise():
    t = Topology("app")
    arms = t.source("in").branch({"small": lambda v: v < 10, "big": lambda v: v > 100},
                                 otherwise="rest", name="route")
    assert list(arms) == ["small", "big", "rest"]
    assert all(isinstance(s, Stream) for s in arms.values())
    assert [s.node.name for s in arms.values()] == ["route.small", "route.big", "route.rest"]
    assert [s.node.index for s in arms.values()] == [0, 1, 2]
    for name, s in arms.items():
        s.to(f"out-{name}")
    compiled = compile_topology(t)
    assert len(compiled.subtopologies) == 1
    assert compiled.sink_topics == ["out-big", "out-rest", "out-small"]
    st = compiled.subtopologies[0]
    assert [c.name for c in st.children["route"]] == ["route.small", "route.big", "route.rest"]


def test_branch_without_otherwise():
    t = Topology("app")
    arms = t.source("in").branch({"a": bool})
    assert list(arms) == ["a"]
    assert arms["a"].node.name == "branch-2.a"


def test_branch_needs_predicates_and_distinct_names():
    t = Topology("app")
    s = t.source("in")
    with pytest.raises(TopologyError, match=r"branch\(\) needs at least one predicate"):
        s.branch({})
    with pytest.raises(TopologyError, match="branch names must be distinct"):
        s.branch({"a": bool}, otherwise="a")


def test_group_by_returns_a_grouped_stream():
    t = Topology("app")
    g = t.source("in").group_by(lambda v: v)
    assert isinstance(g, GroupedStream)
    assert isinstance(t.source("other").group_by_key(), GroupedStream)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("app_id", ["", "has space", "-leading", "a/b", "caf\u00e9", "app\n"])
def test_invalid_application_id(app_id):
    with pytest.raises(TopologyError) as err:
        Topology(app_id)
    assert str(err.value) == f"application id {app_id!r} is not a valid name ({NAME_RULE})"


@pytest.mark.parametrize("app_id", ["a", "word.count_v2-1", "0app", "x" * 200])
def test_valid_application_ids(app_id):
    assert Topology(app_id).application_id == app_id


@pytest.mark.parametrize("length", [201, 202])
def test_application_id_over_200_characters_is_refused(length):
    with pytest.raises(TopologyError) as err:
        Topology("x" * length)
    assert str(err.value) == (f"application id {'x' * 60!r}... is {length} characters long, "
                              "over the limit of 200")


def test_duplicate_operator_name():
    t = Topology("app")
    s = t.source("in").map(lambda v: v, name="twice")
    with pytest.raises(TopologyError,
                       match="operator name 'twice' is used twice in app"):
        s.map(lambda v: v, name="twice")


def test_invalid_operator_name():
    t = Topology("app")
    with pytest.raises(TopologyError) as err:
        t.source("in").map(lambda v: v, name="a b")
    assert str(err.value) == f"operator name 'a b' is not a valid name ({NAME_RULE})"


def test_duplicate_store_name():
    t = Topology("app")
    g = t.source("in").group_by_key()
    g.count(store="s").to("o1")
    g.sum(store="s").to("o2")
    with pytest.raises(TopologyError, match="store name 's' is used twice"):
        compile_topology(t)


def test_duplicate_store_name_across_subtopologies():
    t = Topology("app")
    t.source("a").group_by_key().count(store="s").to("o1")
    t.source("b").process(lambda c, k, v: None, store="s").to("o2")
    with pytest.raises(TopologyError, match="store name 's' is used twice"):
        compile_topology(t)


def test_topic_read_by_two_sources():
    t = Topology("app")
    t.source("in").to("o1")
    t.source("in").to("o2")
    with pytest.raises(TopologyError, match="topic 'in' is read by more than one source"):
        compile_topology(t)


def test_topic_read_by_two_merged_sources():
    t = Topology("app")
    t.source("in").merge(t.source("in")).to("out")
    with pytest.raises(TopologyError, match="topic 'in' is read by more than one source"):
        compile_topology(t)


def test_no_sink():
    t = Topology("app")
    t.source("in").map(lambda v: v)
    with pytest.raises(TopologyError, match=r"topology 'app' writes nowhere: add \.to"):
        compile_topology(t)


def test_no_source():
    with pytest.raises(TopologyError, match="topology 'app' has no source"):
        compile_topology(Topology("app"))


def test_invalid_on_error_policy():
    with pytest.raises(TopologyError, match="on_error must be one of"):
        Topology("app", on_error="ignore")  # type: ignore[arg-type]
    t = Topology("app")
    with pytest.raises(TopologyError, match="got 'retry'"):
        t.source("in", on_error="retry")  # type: ignore[arg-type]


def test_invalid_timestamp_string():
    t = Topology("app")
    with pytest.raises(TopologyError, match="timestamp must be one of"):
        t.source("in", timestamp="event_time")


@pytest.mark.parametrize("timestamp", ["create_time", "log_append_time", "processing_time"])
def test_valid_timestamp_strings(timestamp):
    t = Topology("app")
    t.source("in", timestamp=timestamp).to("out")
    assert compile_topology(t).source_node("in").timestamp == timestamp


def test_source_needs_a_valid_topic():
    t = Topology("app")
    with pytest.raises(TopologyError, match="source\\(\\) needs at least one topic"):
        t.source()
    with pytest.raises(TopologyError) as err:
        t.source("bad topic")
    assert str(err.value) == ("source topic 'bad topic' has characters Kafka does not allow "
                              f"in a topic name ({TOPIC_RULE})")
    with pytest.raises(TopologyError) as err:
        t.source("")
    assert str(err.value) == f"source topic '' is not a topic name ({TOPIC_RULE})"


# -- bugs ------------------------------------------------------------------------------------
def test_named_process_with_store_after_key_change():
    t = Topology("app")
    (t.source("in").key_by(lambda v: v)
     .process(lambda c, k, v: None, store="st", name="p").to("out"))
    compiled = compile_topology(t)
    assert [n.name for n in compiled.subtopologies[1].nodes][1] == "p"


def test_branch_arm_name_colliding_with_an_operator_is_a_duplicate():
    t = Topology("app")
    s = t.source("in").map(lambda v: v, name="route.a")
    with pytest.raises(TopologyError, match="used twice"):
        s.branch({"a": bool}, name="route")


def test_branch_arm_name_with_invalid_characters():
    t = Topology("app")
    with pytest.raises(TopologyError) as err:
        t.source("in").branch({"bad name": bool})
    assert str(err.value) == f"operator name 'branch-2.bad name' is not a valid name ({NAME_RULE})"
