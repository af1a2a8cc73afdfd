"""Names that become Kafka topics, consumer groups and paths: one set of rules
(streamproc/names.py), enforced when a topology is built with an error naming the element, for
the instance id setting, and by the state dir, which never creates or deletes anything outside
``{state_dir}/{app}``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from streamproc import Topology, codecs, windows
from streamproc.errors import ConfigError, StreamprocError, TopologyError
from streamproc.graph.compile import compile_topology
from streamproc.names import (
    name_problem,
    path_component_problem,
    topic_problem,
)
from streamproc.runtime.statedir import StateDir, store_dir_problem
from streamproc.state.store import KeyValueStore

NAME_RULE = ("letters, digits, '.', '_' and '-' only, starting with a letter or digit, "
             "at most 200 characters")
TOPIC_RULE = "letters, digits, '.', '_' and '-' only, at most 249 characters"
DIR_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit"


def bad_name(name: str) -> str:
    return f"{name!r} is not a valid name ({NAME_RULE})"


def bad_topic(topic: str) -> str:
    return f"{topic!r} has characters Kafka does not allow in a topic name ({TOPIC_RULE})"


def cut(name: str) -> str:
    """How a long name is shown in a message: its first 60 characters."""
    return repr(name[:60]) + "..."


def raised(fn: Any) -> str:
    with pytest.raises(TopologyError) as err:
        fn()
    return str(err.value)


# -- the rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "problem"), [
    ("counts\n", bad_name("counts\n")),          # re.match + "$" let this through
    ("..", bad_name("..")),
    (".", bad_name(".")),
    ("/abs/../../x", bad_name("/abs/../../x")),
    ("a/b", bad_name("a/b")),
    ("caf\u00e9", bad_name("caf\u00e9")),        # letters are ASCII letters
    ("\u0661\u0662", bad_name("\u0661\u0662")),  # and digits ASCII digits
    ("", bad_name("")),
    ("-flag", bad_name("-flag")),
    ("x" * 201, "is 201 characters long, over the limit of 200"),
    (7, "must be a string, not int"),
])
def test_name_rule(name: object, problem: str) -> None:
    assert name_problem(name) == problem


@pytest.mark.parametrize("name", ["a", "0app", "word.count_v2-1", "x" * 200])
def test_valid_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(("topic", "problem"), [
    ("orders\n", bad_topic("orders\n")),
    ("..", f"'..' is not a topic name ({TOPIC_RULE})"),
    ("", f"'' is not a topic name ({TOPIC_RULE})"),
    ("/abs/../../x", bad_topic("/abs/../../x")),
    ("caf\u00e9", bad_topic("caf\u00e9")),
    ("has space", bad_topic("has space")),
    ("x" * 250, "is 250 characters long, over Kafka's limit of 249"),
])
def test_topic_rule(topic: str, problem: str) -> None:
    assert topic_problem(topic) == problem


@pytest.mark.parametrize("topic", ["x" * 249, "_internal", ".hidden-is-legal", "a.b_c-d"])
def test_valid_topics(topic: str) -> None:
    assert topic_problem(topic) is None


def test_a_directory_name_may_be_longer_than_a_name_but_never_a_path() -> None:
    assert path_component_problem("s" * 200 + ".timers") is None
    assert path_component_problem("..") == f"'..' is not a valid directory name ({DIR_RULE})"
    assert path_component_problem("a/b") == f"'a/b' is not a valid directory name ({DIR_RULE})"
    assert path_component_problem("\u00e9" * 128) == ("is 256 bytes long, over the limit of "
                                                      "255")


# -- at topology build time, naming the element ------------------------------------------------
@pytest.mark.parametrize("app_id", ["wordcount\n", "..", "/abs/../../x", "caf\u00e9", ""])
def test_application_id(app_id: str) -> None:
    assert raised(lambda: Topology(app_id)) == f"application id {bad_name(app_id)}"


@pytest.mark.parametrize("store", ["counts\n", "..", "/abs/../../x", "caf\u00e9", ""])
@pytest.mark.parametrize("operator", ["count", "sum", "reduce", "aggregate", "process",
                                      "timers", "window", "stateless_process"])
def test_store_names_of_every_operator_that_takes_one(store: str, operator: str) -> None:
    grouped = Topology("app").source("in").group_by_key()
    build = {
        "count": lambda: grouped.count(store=store),
        "sum": lambda: grouped.sum(store=store),
        "reduce": lambda: grouped.reduce(lambda a, b: a, store=store),
        "aggregate": lambda: grouped.aggregate(list, lambda a, v: a, store=store),
        "process": lambda: grouped.process(lambda c, k, v: None, store=store),
        "timers": lambda: grouped.process(lambda c, k, v: None, store=store,
                                          on_timer=lambda c, k, t: None),
        "window": lambda: grouped.window(windows.tumbling(1000)).count(store=store),
        "stateless_process": lambda: Topology("app").source("in").process(
            lambda c, k, v: None, store=store),
    }[operator]
    if operator == "timers" and not store:
        # An empty store is "no store" here, which timers need.
        assert raised(build) == "process(on_timer=...) needs a store=: timers are kept per key"
        return
    assert raised(build) == f"store {bad_name(store)}"


@pytest.mark.parametrize("topic", ["orders\n", "/abs/../../x", "caf\u00e9"])
def test_source_sink_and_late_topics(topic: str) -> None:
    t = Topology("app")
    assert raised(lambda: t.source(topic)) == f"source topic {bad_topic(topic)}"
    stream = t.source("in")
    assert raised(lambda: stream.to(topic)) == f"sink topic {bad_topic(topic)}"
    window = stream.group_by_key().window(windows.tumbling(1000))
    assert raised(lambda: window.count(store="w", late="side_output", late_topic=topic)) == \
        f"late_topic {bad_topic(topic)}"


def test_a_topic_of_250_characters() -> None:
    long = "x" * 250
    t = Topology("app")
    assert raised(lambda: t.source(long)) == (
        f"source topic {cut(long)} is 250 characters long, over Kafka's limit of 249")
    assert raised(lambda: t.source("in").to(long)) == (
        f"sink topic {cut(long)} is 250 characters long, over Kafka's limit of 249")
    t.source("y" * 249).to("z" * 249)  # the limit itself is fine


def test_a_store_whose_changelog_topic_exceeds_249_characters() -> None:
    app, store = "a" * 100, "s" * 150  # both valid; "{app}-{store}-changelog" is 261
    grouped = Topology(app).source("in").group_by_key()
    assert raised(lambda: grouped.count(store=store)) == (
        f"store {cut(store)}: its changelog topic {cut(f'{app}-{store}-changelog')} is 261 "
        "characters long, over Kafka's limit of 249")
    assert raised(lambda: grouped.window(windows.tumbling(10)).count(store=store)) == (
        f"store {cut(store)}: its changelog topic {cut(f'{app}-{store}-changelog')} is 261 "
        "characters long, over Kafka's limit of 249")
    grouped.count(store="s" * 138).to("out")  # 249: just fits


def test_a_timer_store_changelog_over_the_limit() -> None:
    app, store = "a" * 40, "s" * 195  # "{app}-{store}-changelog" is 246, with ".timers" 253
    grouped = Topology(app).source("in").group_by_key()
    grouped.process(lambda c, k, v: None, store=store)  # no timers: fits
    assert raised(lambda: grouped.process(lambda c, k, v: None, store=store,
                                          on_timer=lambda c, k, t: None)) == (
        f"store {cut(store)}: its timer changelog topic "
        f"{cut(f'{app}-{store}.timers-changelog')} is 253 characters long, over Kafka's limit "
        "of 249")


def test_a_repartition_topic_over_the_limit_names_the_operator() -> None:
    app, name = "a" * 100, "g" * 140  # "{app}-{name}-repartition" is 253
    stream = Topology(app).source("in")
    assert raised(lambda: stream.group_by(lambda v: v, name=name)) == (
        f"operator {cut(name)}: its repartition topic {cut(f'{app}-{name}-repartition')} is "
        "253 characters long, over Kafka's limit of 249")


def test_an_event_time_changelog_over_the_limit_names_the_source() -> None:
    app, source = "a" * 60, "s" * 175  # "{app}-{source}.time-changelog" is 251
    t = Topology(app)
    (t.source("in", name=source).group_by_key().window(windows.tumbling(10)).count(store="w")
     .to("out"))
    assert raised(lambda: compile_topology(t)) == (
        f"source {cut(source)}: its event-time changelog topic "
        f"{cut(f'{app}-{source}.time-changelog')} is 251 characters long, over Kafka's limit "
        "of 249")


def test_the_compiler_checks_a_graph_changed_after_it_was_built() -> None:
    t = Topology("app")
    t.source("in").to("out")
    t.nodes[-1].topic = "out\n"  # type: ignore[attr-defined]
    assert raised(lambda: compile_topology(t)) == "sink topic " + bad_topic("out\n")
    t.nodes[-1].topic = "out"  # type: ignore[attr-defined]
    t.nodes[0].name = "../src"
    assert raised(lambda: compile_topology(t)) == f"operator name {bad_name('../src')}"


# -- the instance id setting -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["i1\n", "../x", "/abs/../../x", "caf\u00e9", "", "-i"])
def test_instance_id_setting(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamproc.config import load_settings

    for name in list(os.environ):
        if name.startswith("STREAMPROC_"):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as err:
        load_settings(instance_id=value)
    assert str(err.value) == (
        "invalid setting 'instance_id (env STREAMPROC_INSTANCE_ID, flag --instance-id)': "
        f"Value error, {bad_name(value)}")
    assert load_settings(instance_id="host-1.a_b").instance_id == "host-1.a_b"


# -- the state dir -----------------------------------------------------------------------------
def test_statedir_refuses_an_application_id_that_is_not_a_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        StateDir(tmp_path, "../x")
    assert str(err.value) == ("invalid setting 'state_dir': application id "
                              f"{bad_name('../x')} (no directory for it)")


def test_statedir_refuses_an_application_dir_that_leads_outside(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "app").symlink_to(elsewhere)
    with pytest.raises(ConfigError) as err:
        StateDir(root, "app")
    assert str(err.value) == (f"invalid setting 'state_dir': {root / 'app'} is outside {root} "
                              f"(it resolves to {elsewhere})")


def test_store_paths_stay_inside_the_application_dir(tmp_path: Path) -> None:
    sd = StateDir(tmp_path, "app")
    assert sd.store_path("counts", 3) == tmp_path / "app" / "counts" / "3"
    assert sd.store_path("counts.timers", 0) == tmp_path / "app" / "counts.timers" / "0"
    for store in ("..", "/abs/../../x", "a/b"):
        with pytest.raises(ConfigError) as err:
            sd.store_path(store, 0)
        assert str(err.value) == (f"invalid setting 'state_dir': no state path for store "
                                  f"{store!r}: {store!r} is not a valid directory name "
                                  f"({DIR_RULE})")


def test_wipe_refuses_a_path_outside_the_application_dir(tmp_path: Path) -> None:
    victim = tmp_path / "x" / "0"
    victim.mkdir(parents=True)
    (victim / "precious").write_text("keep me")
    # What tasks build for a store named "/abs/../../x": {app_dir} / "/abs/../../x" / "0".
    path = tmp_path / "state" / "app" / "/abs/../../x" / "0"
    store = KeyValueStore("/abs/../../x", 0, path, codecs.json())
    with pytest.raises(StreamprocError) as err:
        store.wipe()
    assert str(err.value) == ("refusing to delete the state of store '/abs/../../x' partition 0: "
                              f"store '/abs/../../x' is not a valid directory name ({DIR_RULE})")
    # A path that is not {store}/{partition}, and a store dir that is a symlink out of it.
    assert store_dir_problem(victim, "counts", 0) == f"{victim} is not a counts/0 directory"
    app_dir = tmp_path / "state" / "app"
    app_dir.mkdir(parents=True)
    (app_dir / "x").symlink_to(tmp_path / "x")
    linked = KeyValueStore("x", 0, app_dir / "x" / "0", codecs.json())
    with pytest.raises(StreamprocError) as err:
        linked.wipe()
    assert str(err.value) == ("refusing to delete the state of store 'x' partition 0: "
                              f"{app_dir / 'x' / '0'} is outside {app_dir} (it resolves to "
                              f"{victim})")
    assert (victim / "precious").read_text() == "keep me"


def test_wipe_deletes_a_store_dir_inside(tmp_path: Path) -> None:
    path = tmp_path / "app" / "counts" / "1"
    store = KeyValueStore("counts", 1, path, codecs.json())
    store.open()
    store.wipe()
    assert not path.exists()
    assert (tmp_path / "app" / "counts").is_dir()


def test_a_stored_instance_id_must_be_a_name(tmp_path: Path) -> None:
    sd = StateDir(tmp_path, "app")
    sd.path.mkdir()
    (sd.path / "instance-id").write_text("../../evil\n")
    with pytest.raises(ConfigError) as err:
        sd.instance_id(None)
    assert str(err.value) == (
        f"invalid setting 'state_dir': {sd.path / 'instance-id'} holds an invalid instance id: "
        f"{bad_name('../../evil')} (delete the file to generate a new one)")
    (sd.path / "instance-id").write_text("abc123\n")
    assert sd.instance_id(None) == "abc123"
    assert sd.instance_id("given") == "given"
