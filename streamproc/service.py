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


def application(topology: Topology, settings: Settings, *, bootstrap: str,
                listeners: Sequence[InstanceListener] = ()) -> Application:
    """An Application with its :class:`InstanceMonitor` (status, /metrics, the HTTP server,
    queryable state) first, then ``listeners``."""
    monitor = InstanceMonitor(settings, topology.application_id)
    return Application(topology, settings, bootstrap=bootstrap,
                       listeners=[monitor, *listeners])


def monitor_of(app: Application) -> InstanceMonitor:
    """The :class:`InstanceMonitor` of an instance built by :func:`application`."""
    for listener in app.listeners.all:
        if isinstance(listener, InstanceMonitor):
            return listener
    raise LookupError(f"{app.app_id}: built without an InstanceMonitor")
