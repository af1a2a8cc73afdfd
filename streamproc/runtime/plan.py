"""Resolve a compiled topology against the cluster: partition counts, internal topics, checks.

Everything that can be wrong about topics is found here, at start, with one message saying
what to fix, instead of surfacing later as a produce error inside a transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from streamproc.errors import ConfigError, TopologyError
from streamproc.graph.compile import CompiledTopology, SubTopology
from streamproc.kafka.admin import TopicSpec

CHANGELOG_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
# Repartition records keep their event timestamps, which may be far in the past (a replay, a
# backfill): time-based retention would delete them before the downstream task reads them. So
# no retention; the application deletes what its group has committed (Application._purge).
REPARTITION_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}
# Dead letters and late records keep their original timestamps too: retention counts from
# when they were written instead (the original time is in the streamproc.timestamp header).
DLQ_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000),
              "message.timestamp.type": "LogAppendTime"}


class Topics(Protocol):
    """What resolving needs of a cluster (Kafka's admin client, or the test driver's)."""

    def partitions(self, topics: list[str]) -> dict[str, int | None]: ...

    def create(self, specs: list[TopicSpec]) -> None: ...


@dataclass(frozen=True)
class Plan:
    partitions: dict[int, int]  # sub-topology id -> number of tasks


def resolve(compiled: CompiledTopology, admin: Topics, dlq_partitions: int = 1,
            replicate: Callable[[list[TopicSpec]], list[TopicSpec]] = lambda specs: specs
            ) -> Plan:
    """Tasks per sub-topology, from the partition counts of the cluster's topics; creates the
    internal topics that do not exist yet (``replicate`` sets their replication: the
    ``internal_replication_factor`` setting, kafka/admin.py's ``replicated``)."""
    user_sources = compiled.user_source_topics
    existing = admin.partitions([*user_sources, *compiled.sink_topics,
                                 *compiled.repartition_topics,
                                 *(t for _, t in compiled.changelog_topics.values()),
                                 compiled.dead_letter_topic, *compiled.late_topics])
    missing = [t for t in user_sources if existing[t] is None]
    if missing:
        raise TopologyError(
            f"source topic(s) {', '.join(missing)} of {compiled.application_id!r} do not exist: "
            "create them first (streamproc never creates user topics; on a cluster with ACLs a "
            "topic the principal may not Describe looks missing too: see streamproc acls)")
    missing_sinks = [t for t in compiled.sink_topics if existing[t] is None]
    if missing_sinks:
        raise TopologyError(
            f"sink topic(s) {', '.join(missing_sinks)} of {compiled.application_id!r} do not "
            "exist: create them first (streamproc never creates user topics; on a cluster with "
            "ACLs a topic the principal may not Describe looks missing too: see streamproc acls)")

    counts: dict[str, int] = {t: n for t, n in existing.items() if n is not None}
    tasks: dict[int, int] = {}
    specs: list[TopicSpec] = []
    for st in compiled.subtopologies:
        sources: dict[str, int] = {}
        for topic in st.source_topics:
            if topic in compiled.repartition_topics:
                up, _, fixed = compiled.repartition_topics[topic]
                want = fixed or tasks[up]
                have = existing.get(topic)
                if have is not None and have != want:
                    raise TopologyError(
                        f"repartition topic {topic!r} has {have} partitions but the topology "
                        f"needs {want}: delete it (streamproc reset) or set partitions={have}")
                sources[topic] = want
                specs.append(TopicSpec(topic, want, REPARTITION_CONFIG))
            else:
                sources[topic] = counts[topic]
        tables = [t for name, (sid, t) in compiled.table_sources.items() if sid == st.id]
        if tables and len(set(sources.values())) > 1:
            detail = ", ".join(f"{t} has {n}" for t, n in sources.items())
            raise TopologyError(
                f"table {', '.join(tables)} is joined with topics of another partition count "
                f"({detail}): a key's row and its records must be in the same partition "
                "number, so every topic of a join needs the same number of partitions (and "
                "the same partitioner); repartition the stream with group_by(...) "
                "partitions=..., or recreate a topic")
        if st.stores and len(set(sources.values())) > 1:
            detail = ", ".join(f"{t}={n}" for t, n in sources.items())
            raise TopologyError(
                f"co-partitioning mismatch in sub-topology {st.id} (stores "
                f"{', '.join(s.name for s in st.stores)}): its source topics must have the same "
                f"number of partitions, got {detail}")
        n = max(sources.values())
        tasks[st.id] = n
        counts.update(sources)
        for spec in st.stores:
            if spec.source_topic is not None:
                continue  # a table's topic is its changelog (a user topic, never created)
            topic = compiled.changelog_topics[spec.name][1]
            have = existing.get(topic)
            if have is not None and have != n:
                raise TopologyError(
                    f"changelog topic {topic!r} has {have} partitions but store {spec.name!r} "
                    f"needs {n} (one per task): the input partition count changed; reset the "
                    "application to rebuild its state")
            specs.append(TopicSpec(topic, n, CHANGELOG_CONFIG))
    specs.append(TopicSpec(compiled.dead_letter_topic,
                           existing.get(compiled.dead_letter_topic) or dlq_partitions, DLQ_CONFIG))
    for topic in compiled.late_topics:  # late records, like dead letters, are kept for a while
        specs.append(TopicSpec(topic, existing.get(topic) or dlq_partitions, DLQ_CONFIG))
    to_create = replicate([s for s in specs if existing.get(s.name) is None])
    admin.create(to_create)
    return Plan(partitions=tasks)


def assignor(compiled: CompiledTopology, setting: str) -> str:
    """The partition assignment strategy the group uses (setting ``partition_assignor``).

    ``auto`` picks ``range`` when the topology has a stateful sub-topology and more than one
    sub-topology. The cooperative-sticky assignor balances *partitions*: with a stateless
    sub-topology on the input topic and a stateful one on a repartition topic, it can give one
    instance every stateful task (measured with wordcount: bench/balance.py), so that one
    instance holds all the state and does most of the work. The range assignor divides each
    topic's partitions among the members by itself, so every instance gets its share of every
    sub-topology's tasks, at the price of eager rebalances (every task is revoked and
    reassigned; with local state kept, a task that stays restores nothing). A topology that
    is stateless or has one sub-topology keeps the cooperative protocol."""
    colocated = needs_colocation(compiled)
    if setting == "cooperative-sticky":
        if colocated:
            raise ConfigError("partition_assignor", "a stateful sub-topology reads several "
                              "topics, whose same-numbered partitions must meet on one "
                              "instance: only range guarantees that")
        return setting
    if setting == "range" or colocated:
        return "range"
    stateful = any(st.stores for st in compiled.subtopologies)
    return "range" if stateful and len(compiled.subtopologies) > 1 else "cooperative-sticky"


def needs_colocation(compiled: CompiledTopology) -> bool:
    """True when a stateful sub-topology reads several topics: their same-numbered partitions
    must then land on the same instance, which only the (eager) range assignor guarantees."""
    return any(st.stores and len(st.source_topics) > 1 for st in compiled.subtopologies)


def upstream_tasks(compiled: CompiledTopology, st: SubTopology,
                   partitions: dict[int, int]) -> dict[str, int]:
    """Per repartition topic ``st`` reads: how many upstream tasks send it their watermark
    (empty when watermark propagation is off)."""
    if not compiled.watermark_propagation:
        return {}
    return {t: partitions[compiled.repartition_topics[t][0]]
            for t in st.source_topics if t in compiled.repartition_topics}


def control_partitions(compiled: CompiledTopology, st: SubTopology,
                       partitions: dict[int, int]) -> dict[str, int]:
    """Per repartition topic ``st`` writes: its partition count (each partition gets the
    task's watermark control records)."""
    if not compiled.watermark_propagation:
        return {}
    return {r.topic: partitions[compiled.repartition_topics[r.topic][1]]
            for r in st.repartition_sinks}
