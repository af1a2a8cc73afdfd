"""The fault suite (issue #18): ``python3 reliability/run.py [--smoke]``.

Each scenario runs the topology of :mod:`reliability.topology` on a replicated local cluster,
injects one kind of fault, and checks from outside, with a ``read_committed`` reader, that
every output is exact (:mod:`reliability.verify`)."""
