"""Every schema in schemas/ parses, and the wordcount schemas describe what it writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fastavro
import pytest

SCHEMAS = sorted((Path(__file__).resolve().parents[2] / "schemas").glob("*.avsc"))
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_parses_with_valid_names(path: Path) -> None:
    schema = json.loads(path.read_text())
    fastavro.parse_schema(schema)
    assert _AVRO_NAME.match(schema["name"])
    assert all(_AVRO_NAME.match(f["name"]) for f in schema["fields"])


def test_the_example_schemas_are_all_there() -> None:
    assert [p.name for p in SCHEMAS] == ["dead-letter.avsc", "text-line.avsc", "word-count.avsc"]
