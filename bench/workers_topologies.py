"""The W2 and W4 topologies of bench/workers.py, as factories for ``streamproc run``.

    PYTHONPATH=. streamproc run bench.workers_topologies:w2 --param app_id=A \
        --param source=IN --param sink=OUT --workers 2

The same pipelines as bench/contenders/streamproc_app.py builds for W2 and W4 (and the same
per-record logic, bench/workloads.py), but loaded by ``streamproc run`` so that ``--workers N``
(the supervisor of streamproc/workers.py) runs them.
"""

from __future__ import annotations

from bench.workloads import w4_words
from streamproc import Topology, codecs


def w2(app_id: str, source: str, sink: str) -> Topology:
    """W2: count per key over JSON events keyed by user id (no repartition: the input is keyed
    by user already), an output update per input record."""
    t = Topology(app_id)
    (t.source(source, key=codecs.string(), value=codecs.json())
     .group_by_key().count(store="counts")
     .to(sink, value=codecs.json()))
    return t


def _word(word: str) -> str:
    return word


def w4(app_id: str, source: str, sink: str) -> Topology:
    """W4: word count over JSON lines of five words: split, repartition by word
    (``{app_id}-words-repartition``), count, an output update per word."""
    t = Topology(app_id)
    (t.source(source, value=codecs.json())
     .flat_map(w4_words)
     .group_by(_word, key=codecs.string(), value=codecs.string(), name="words")
     .count(store="counts")
     .to(sink, value=codecs.json()))
    return t
