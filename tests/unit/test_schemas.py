"""Every schema in schemas/ parses, and the example topologies' schemas describe what they read
and write: their sample input and the output the test driver gets from it."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from streamproc.testing import TopologyTestDriver

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMAS = sorted(SCHEMA_DIR.glob("*.avsc"))
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# topology module -> (schema of its input values, {output topic: schema of its values})
EXAMPLES: dict[str, tuple[str, dict[str, str]]] = {
    "fraud_alerts": ("card-transaction", {"fraud-alerts": "fraud-alert"}),
    "hourly_counts": ("page-view", {"hourly-page-views": "hourly-page-count"}),
    "sensor_averages": ("sensor-reading", {"sensor-averages": "sensor-average"}),
    "sessions": ("click", {"visitor-sessions": "visitor-session"}),
    "traffic_peaks": ("traffic-report", {"station-traffic": "station-traffic",
                                         "traffic-alerts": "traffic-alert"}),
}


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_parses_with_valid_names(path: Path) -> None:
    schema = json.loads(path.read_text())
    fastavro.parse_schema(schema)
    assert _AVRO_NAME.match(schema["name"])
    assert all(_AVRO_NAME.match(f["name"]) for f in schema["fields"])
    # File names are the record names in kebab case: PageView -> page-view.avsc.
    assert path.stem == re.sub(r"(?<!^)(?=[A-Z])", "-", schema["name"]).lower()


def test_the_example_schemas_are_all_there() -> None:
    assert [p.name for p in SCHEMAS] == [
        "card-transaction.avsc", "click.avsc", "dead-letter.avsc", "fraud-alert.avsc",
        "hourly-page-count.avsc", "page-view.avsc", "sensor-average.avsc", "sensor-reading.avsc",
        "station-traffic.avsc", "text-line.avsc", "traffic-alert.avsc", "traffic-report.avsc",
        "visitor-session.avsc", "word-count.avsc",
    ]


def _schema(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = fastavro.parse_schema(
        json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))
    return parsed


def _assert_matches(record: Any, name: str) -> None:
    schema = _schema(name)
    assert isinstance(record, dict), record
    assert set(record) <= {f["name"] for f in schema["fields"]}, (name, record)
    assert validate(record, schema), (name, record)


def test_wordcount_records_match_their_schemas() -> None:
    from topologies.wordcount import build

    lines = ["the quick brown fox", "The lazy dog"]
    with TopologyTestDriver(build()) as d:
        for line in lines:
            d.pipe("text-lines", line)
        out = d.key_values("word-counts")
    for line in lines:
        _assert_matches({"line": line}, "text-line")
    assert len(out) == 7
    for word, count in out:
        _assert_matches({"word": word, "count": count}, "word-count")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_records_match_their_schemas(name: str) -> None:
    module = importlib.import_module(f"topologies.{name}")
    input_schema, outputs = EXAMPLES[name]
    events = module.sample()
    with TopologyTestDriver(module.build(), partitions=2) as d:
        (source,) = d.compiled.user_source_topics
        for key, value, ts in events:
            _assert_matches(value, input_schema)
            d.pipe(source, value, key, timestamp=ts)
        d.finish()
        assert sorted(d.compiled.sink_topics) == sorted(outputs)
        for topic, schema in outputs.items():
            values = d.values(topic)
            assert values, f"{name} wrote nothing to {topic}"
            for value in values:
                _assert_matches(value, schema)
