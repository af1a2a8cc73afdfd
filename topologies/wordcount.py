"""Word count: lines of text -> words -> group by word (repartition) -> running count per word.

Input  ``text-lines``: key ignored, value a UTF-8 line of text.
Output ``word-counts``: key the word (UTF-8), value its running count (JSON integer), one output
record per input word. Schemas: ``schemas/text-line.avsc``, ``schemas/word-count.avsc``.

``avro``: the same on Avro (``text-lines-avro`` -> ``word-counts-avro``), see :func:`build_avro`.
"""

from pathlib import Path
from typing import Any

from streamproc import Topology, codecs

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def build(app_id: str = "wordcount", source: str = "text-lines",
          sink: str = "word-counts", *, avro: bool = False) -> Topology:
    if avro:
        return build_avro(app_id, source, sink)
    topology = Topology(app_id)
    (
        topology.source(source, value=codecs.string())
        .flat_map(lambda line: line.lower().split(), name="split")
        .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
        .count(store="counts")
        .to(sink, key=codecs.string(), value=codecs.json())
    )
    return topology


def build_avro(app_id: str = "wordcount-avro", source: str = "text-lines-avro",
               sink: str = "word-counts-avro") -> Topology:
    """Word count on Avro: ``TextLine`` records in, ``WordCount`` records out, both in the
    schema registry wire format; the running count is kept in state as a ``WordCount`` record
    in Avro single-object encoding (so the store survives compatible schema changes)."""
    topology = Topology(app_id)
    (
        topology.source(source, value=codecs.registry_avro(SCHEMAS / "text-line.avsc"))
        .flat_map(lambda rec: rec["line"].lower().split(), name="split")
        .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
        .aggregate(_no_count, _count_word, store="counts",
                   state=codecs.avro(SCHEMAS / "word-count.avsc", framing="single_object"))
        .to(sink, key=codecs.string(), value=codecs.registry_avro(SCHEMAS / "word-count.avsc"))
    )
    return topology


def _no_count() -> dict[str, Any]:
    return {"word": "", "count": 0}


def _count_word(acc: dict[str, Any], word: str) -> dict[str, Any]:
    return {"word": word, "count": acc["count"] + 1}


topology = build()
# python3 -m streamproc run topologies.wordcount:avro (with STREAMPROC_SCHEMA_REGISTRY_URL)
avro = build_avro()
