"""An instance as ``streamproc run`` runs it: the runtime with the ops layer listening.

The runtime (streamproc/runtime) knows nothing of status, /metrics or HTTP; this is the one
place that wires them together (the composition root). The CLI, ``streamproc demo``, the
benchmark's contender and the tests build instances here, so they all run the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamproc.api.topology import Topology
from streamproc.config import Settings
from streamproc.ops.monitor import InstanceMonitor
from streamproc.runtime.app import Application
from streamproc.runtime.observe import InstanceListener
from streamproc.runtime.standby import Membership, StandbyReplicas


def application(topology: Topology, settings: Settings, *, bootstrap: str,
                listeners: Sequence[InstanceListener] = ()) -> Application:
    """An Application with its :class:`InstanceMonitor` (status, /metrics, the HTTP server,
    queryable state) first, then ``listeners``."""
    monitor = InstanceMonitor(settings, topology.application_id)
    extra: list[InstanceListener] = []
    if settings.num_standby_replicas:
        # After the monitor: its registry (queryable state) is what places the standbys.
        extra.append(StandbyReplicas(settings.num_standby_replicas,
                                     lambda: membership(monitor)))
    return Application(topology, settings, bootstrap=bootstrap,
                       listeners=[monitor, *extra, *listeners])


def membership(monitor: InstanceMonitor) -> Membership | None:
    """The live instances and task owners of the monitor's ``{app}-instances`` registry, once
    it was read to its end."""
    query = monitor.query
    view = query.view if query is not None else None
    if view is None or not view.caught_up:
        return None
    return view.live, {tid: entry.instance for tid, entry in view.owners.items()}


def monitor_of(app: Application) -> InstanceMonitor:
    """The :class:`InstanceMonitor` of an instance built by :func:`application`."""
    for listener in app.listeners.all:
        if isinstance(listener, InstanceMonitor):
            return listener
    raise LookupError(f"{app.app_id}: built without an InstanceMonitor")
