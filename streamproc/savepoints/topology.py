"""How a savepoint maps onto the topology that starts from it.

The starting application may have another application id (its internal topics are named after
it) and a newer version of the code. What carries over is decided by name: a store by its store
name, in-flight repartition records by the repartition topic's name without the application id.
Anything of the savepoint that would have nowhere to go is refused, unless the operator names it
in ``savepoint_drop``: silently losing a store on an upgrade is the failure this check exists
for. Pure logic: no Kafka, so every rule is unit-tested.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamproc.graph.compile import CompiledTopology
from streamproc.savepoints.format import Manifest, SavepointError


def strip_app(app: str, topic: str) -> str:
    """``{app}-counts-changelog`` -> ``counts-changelog``: an internal topic's name without the
    application id it belongs to."""
    return topic.removeprefix(f"{app}-")


def fingerprint(compiled: CompiledTopology) -> str:
    """SHA-256 of the compiled graph with the application id taken out, so that the same code
    under another id has the same fingerprint and a changed graph another one."""
    app = compiled.application_id

    def scrub(x: Any) -> Any:
        if isinstance(x, str):
            return "{app}" if x == app else (
                "{app}-" + strip_app(app, x) if x.startswith(f"{app}-") else x)
        if isinstance(x, dict):
            return {k: scrub(v) for k, v in x.items()}
        if isinstance(x, list):
            return [scrub(v) for v in x]
        return x

    raw = orjson.dumps(scrub(compiled.describe()), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


@dataclass
class Mapping:
    """Where each part of a savepoint goes in the starting application."""

    # savepoint store -> (the new store's name, its changelog topic)
    stores: dict[str, tuple[str, str]] = field(default_factory=dict)
    # savepoint repartition name -> the new repartition topic
    inflight: dict[str, str] = field(default_factory=dict)
    # source topic -> partition -> offset (only partitions that had a committed offset)
    offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    # old repartition topic -> new one (for the upstream watermarks kept in time stores)
    topic_renames: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    new_stores: list[str] = field(default_factory=list)  # in the topology, not the savepoint
    ignored_sources: list[str] = field(default_factory=list)  # offsets for topics not read now
    same_topology: bool = True


def map_savepoint(manifest: Manifest, compiled: CompiledTopology, tasks: dict[int, int],
                  drop: list[str]) -> Mapping:
    """Check that ``manifest`` fits ``compiled`` (with ``tasks`` per sub-topology, as resolved
    against the cluster) and say where everything goes; raises :class:`SavepointError` listing
    every problem at once."""
    app = compiled.application_id
    problems: list[str] = []
    out = Mapping(same_topology=manifest.fingerprint == fingerprint(compiled))
    known = set(manifest.stores) | set(manifest.inflight)
    unknown = sorted(set(drop) - known)
    if unknown:
        problems.append(f"savepoint_drop names {unknown}, which the savepoint does not have "
                        f"(its stores: {sorted(manifest.stores)}, its repartition topics: "
                        f"{sorted(manifest.inflight)})")
    new_sub = {name: sid for name, (sid, _) in compiled.changelog_topics.items()}
    for name, store in sorted(manifest.stores.items()):
        if name in drop:
            out.dropped.append(name)
            continue
        if name not in new_sub:
            problems.append(
                f"store {name!r} ({store.keys} keys) has no store of that name in {app!r} (its "
                f"stores: {sorted(new_sub)}): it was removed or renamed. Keep the name, rename "
                f"it in the savepoint (Savepoint.rewrite(rename=...)), or drop its state with "
                f"savepoint_drop={name}")
            continue
        want = tasks[new_sub[name]]
        if store.partitions and store.partitions != want:
            problems.append(
                f"store {name!r} has {store.partitions} partitions in the savepoint but {want} "
                f"in {app!r}: state is partitioned by key, so the input topics must keep their "
                "partition count")
            continue
        out.stores[name] = (name, compiled.changelog_topics[name][1])
    out.new_stores = sorted(set(new_sub) - set(manifest.stores))
    new_repartition = {strip_app(app, t): t for t in compiled.repartition_topics}
    for name, info in sorted(manifest.inflight.items()):
        out.topic_renames[f"{manifest.application_id}-{name}"] = new_repartition.get(name, name)
        if name in drop:
            out.dropped.append(name)
            continue
        if name not in new_repartition:
            if info.records:
                problems.append(
                    f"repartition topic {name!r} holds {info.records} records not yet processed "
                    f"in the savepoint, but {app!r} has no repartition of that name (its: "
                    f"{sorted(new_repartition)}); drop them with savepoint_drop={name}")
            continue
        topic = new_repartition[name]
        want = tasks[compiled.repartition_topics[topic][1]]  # the downstream side's tasks
        if info.records and info.partitions != want:
            problems.append(f"repartition topic {name!r} has {info.partitions} partitions in the "
                            f"savepoint but {want} in {app!r}")
            continue
        out.inflight[name] = topic
    sources = set(compiled.user_source_topics)
    for topic, parts in sorted(manifest.source_offsets.items()):
        if topic not in sources:
            out.ignored_sources.append(topic)
            continue
        out.offsets[topic] = {p: o for p, o in parts.items() if o is not None}
    if problems:
        raise SavepointError(
            f"cannot start {app!r} from savepoint {manifest.id} (of {manifest.application_id!r}"
            "): " + "; ".join(problems))
    return out
