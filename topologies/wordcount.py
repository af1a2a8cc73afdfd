"""Word count: lines of text -> words -> group by word (repartition) -> running count per word.

Input  ``text-lines``: key ignored, value a UTF-8 line of text.
Output ``word-counts``: key the word (UTF-8), value its running count (JSON integer), one output
record per input word. Schemas: ``schemas/text-line.avsc``, ``schemas/word-count.avsc``.
"""

from streamproc import Topology, codecs


def build(app_id: str = "wordcount", source: str = "text-lines",
          sink: str = "word-counts") -> Topology:
    topology = Topology(app_id)
    (
        topology.source(source, value=codecs.string())
        .flat_map(lambda line: line.lower().split(), name="split")
        .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
        .count(store="counts")
        .to(sink, key=codecs.string(), value=codecs.json())
    )
    return topology


topology = build()
