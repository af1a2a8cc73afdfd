"""State values across deployments: a compatible schema change keeps the store readable, an
incompatible one stops the task at start naming the store (docs/schemas.md, State)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from streamproc import Topology, codecs
from streamproc.codecs.base import Codec
from streamproc.state.store import StateSchemaError
from streamproc.testing import TopologyTestDriver

V1 = {"type": "record", "name": "Tally", "namespace": "test.state",
      "fields": [{"name": "n", "type": "long"}]}
V2 = {"type": "record", "name": "Tally", "namespace": "test.state",
      "fields": [{"name": "n", "type": "long"},
                 {"name": "last", "type": ["null", "string"], "default": None}]}
V2_BROKEN = {"type": "record", "name": "Tally", "namespace": "test.state",
             "fields": [{"name": "n", "type": "string"}]}  # long -> string: no promotion


def tally_topology(state: Codec) -> Topology:
    t = Topology("tally")
    (t.source("in", key=codecs.string(), value=codecs.string())
     .group_by_key()
     .aggregate(lambda: {"n": 0}, lambda acc, v: {**acc, "n": acc["n"] + 1, "last": v},
                store="tally", state=state)
     .to("out", key=codecs.string(), value=codecs.json()))
    return t


def first_deployment(state_dir: Path) -> None:
    v1 = codecs.avro(V1, framing="single_object")
    t = Topology("tally")
    (t.source("in", key=codecs.string(), value=codecs.string())
     .group_by_key()
     .aggregate(lambda: {"n": 0}, lambda acc, v: {"n": acc["n"] + 1}, store="tally", state=v1)
     .to("out", key=codecs.string(), value=codecs.json()))
    with TopologyTestDriver(t, state_dir=state_dir) as d:
        for v in ("x", "y", "z"):
            d.pipe("in", v, key="k")
        d.pipe("in", "x", key="j")
        assert d.state("tally") == {"k": {"n": 3}, "j": {"n": 1}}


def test_an_added_field_with_a_default_keeps_the_store(tmp_path: Path) -> None:
    first_deployment(tmp_path)
    v2 = codecs.avro(V2, framing="single_object", previous=[V1])
    with TopologyTestDriver(tally_topology(v2), state_dir=tmp_path) as d:
        assert d.state("tally") == {"k": {"n": 3, "last": None}, "j": {"n": 1, "last": None}}
        d.pipe("in", "w", key="k")
        assert d.values("out")[-1] == {"n": 4, "last": "w"}


def test_a_writer_schema_the_codec_does_not_know_fails_at_start_naming_the_store(
        tmp_path: Path) -> None:
    first_deployment(tmp_path)
    v2 = codecs.avro(V2, framing="single_object")  # V1 not declared in previous=
    with pytest.raises(StateSchemaError) as err:
        TopologyTestDriver(tally_topology(v2), state_dir=tmp_path)
    msg = str(err.value)
    assert "state store 'tally' (partition 0)" in msg
    assert "unknown schema (fingerprint" in msg
    assert "docs/schemas.md" in msg


def test_an_incompatible_change_fails_at_start_even_when_declared(tmp_path: Path) -> None:
    first_deployment(tmp_path)
    broken = codecs.avro(V2_BROKEN, framing="single_object", previous=[V1])
    with pytest.raises(StateSchemaError, match=r"state store 'tally'.*SchemaResolutionError"):
        TopologyTestDriver(tally_topology(broken), state_dir=tmp_path)


class Tally(pydantic.BaseModel):
    n: int
    last: str | None = None


class TallyRenamed(pydantic.BaseModel):
    count: int  # renamed field without a default: old values no longer validate


def test_json_state_validated_by_a_model(tmp_path: Path) -> None:
    def build(model: type[pydantic.BaseModel]) -> Topology:
        t = Topology("tally")

        def add(acc: Any, v: str) -> Any:
            return model.model_validate({**acc.model_dump(), "n": acc.n + 1, "last": v})

        (t.source("in", key=codecs.string(), value=codecs.string())
         .group_by_key()
         .aggregate(lambda: model(n=0), add, store="tally", state=codecs.model(model))
         .to("out", key=codecs.string(), value=codecs.json()))
        return t

    with TopologyTestDriver(build(Tally), state_dir=tmp_path) as d:
        d.pipe("in", "a", key="k")
    # The same model again: fine, and values come back as models.
    with TopologyTestDriver(build(Tally), state_dir=tmp_path) as d:
        assert d.state("tally") == {"k": Tally(n=1, last="a")}
    with pytest.raises(StateSchemaError, match=r"state store 'tally'.*pydantic:TallyRenamed"):
        TopologyTestDriver(build(TallyRenamed), state_dir=tmp_path)
