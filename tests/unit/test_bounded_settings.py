"""Settings and command-line parsing of bounded runs, replays and reset (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.cli import build_parser
from streamproc.config import load_settings, parse_instant
from streamproc.errors import ConfigError, TopologyError
from streamproc.loader import load_topology
from streamproc.ops.reset import read_offsets_file
from streamproc.types import TopicPartition

MARCH_1 = 1_709_251_200_000  # 2024-03-01T00:00:00Z


@pytest.mark.parametrize("text", ["2024-03-01T00:00:00Z", "2024-03-01", "2024-03-01T00:00:00",
                                  "2024-03-01T01:00:00+01:00", str(MARCH_1), " 1709251200000 "])
def test_instants(text: str) -> None:
    assert parse_instant(text) == MARCH_1


def test_until_and_from_datetime_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().until is None
    assert load_settings(until="END").until == "end"
    assert load_settings(until="2024-03-01T00:00:00Z").until == "2024-03-01T00:00:00Z"
    monkeypatch.setenv("STREAMPROC_UNTIL", "end")
    monkeypatch.setenv("STREAMPROC_FROM_DATETIME", "2024-03-01")
    s = load_settings()
    assert (s.until, s.from_datetime) == ("end", "2024-03-01")


@pytest.mark.parametrize(("setting", "value"), [("until", "tomorrow"), ("until", ""),
                                                ("from_datetime", "end"),
                                                ("from_datetime", "2024-13-01")])
def test_bad_values_name_the_setting(setting: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{setting: value})
    flag = "--" + setting.replace("_", "-")
    assert info.value.setting == f"{setting} (env STREAMPROC_{setting.upper()}, flag {flag})"
    assert "ISO-8601" in info.value.problem


def test_factory_parameters() -> None:
    t = load_topology("topologies.wordcount:build",
                      {"app_id": "wc-replay", "sink": "word-counts-replay"})
    assert t.application_id == "wc-replay"
    assert t.describe()["nodes"][-1]["topic"] == "word-counts-replay"
    with pytest.raises(TopologyError, match="not a factory"):
        load_topology("topologies.wordcount", {"app_id": "x"})
    with pytest.raises(TopologyError, match="unexpected keyword argument 'nope'"):
        load_topology("topologies.wordcount:build", {"nope": "x"})


def test_cli_rejects_bad_parameters() -> None:
    def call(*argv: str) -> int:
        args = build_parser().parse_args(list(argv))
        code: int = args.func(args)
        return code

    with pytest.raises(ConfigError, match="expected NAME=VALUE, got 'app_id'"):
        call("run", "topologies.wordcount:build", "--param", "app_id")
    with pytest.raises(ConfigError, match="has application id 'wordcount', not 'other'"):
        call("reset", "--app", "other", "--topology", "topologies.wordcount",
             "--brokers", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="--to-datetime"):
        call("reset", "--app", "wordcount", "--topology", "topologies.wordcount",
             "--brokers", "127.0.0.1:1", "--to-datetime", "soon")


def test_offsets_file(tmp_path: Path) -> None:
    f = tmp_path / "offsets.json"
    f.write_text('{"a": {"0": 5, "1": 0}, "b": {"2": 9}}')
    assert read_offsets_file(f) == {TopicPartition("a", 0): 5, TopicPartition("a", 1): 0,
                                    TopicPartition("b", 2): 9}
    for bad in ['{"a": {"x": 1}}', '{"a": {"0": -1}}', '{"a": 3}', "[]", "{"]:
        f.write_text(bad)
        with pytest.raises(ConfigError, match="--to-offsets"):
            read_offsets_file(f)
