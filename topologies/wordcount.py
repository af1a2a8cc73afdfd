"""Word count: lines of text -> words -> group by word (repartition) -> running count per word.

Input  ``text-lines``: key ignored, value a UTF-8 line of text.
Output ``word-counts``: key the word (UTF-8), value its running count (JSON integer), one output
record per input word.
"""

from streamproc import Topology, codecs

topology = Topology("wordcount")
(
    topology.source("text-lines", value=codecs.string())
    .flat_map(lambda line: line.lower().split(), name="split")
    .group_by(lambda word: word, key=codecs.string(), value=codecs.string(), name="words")
    .count(store="counts")
    .to("word-counts", key=codecs.string(), value=codecs.json())
)
