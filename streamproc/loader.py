"""Find a user's topology by ``module`` or ``module:attr``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from streamproc.api.topology import Topology
from streamproc.errors import TopologyError


def load_topology(spec: str) -> Topology:
    """Import ``module`` or ``module:attr``; the attribute (default ``topology``) may be a
    Topology or a zero-argument factory returning one."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that `topologies.x` resolves like `python -m`
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TopologyError(f"cannot import topology module {module_name!r}: {exc}") from exc
    obj: Any = getattr(module, attr or "topology", None)
    if obj is None:
        raise TopologyError(f"{module_name} has no attribute {attr or 'topology'!r}")
    if callable(obj) and not isinstance(obj, Topology):
        obj = obj()
    if not isinstance(obj, Topology):
        raise TopologyError(f"{spec} is a {type(obj).__name__}, not a streamproc Topology")
    return obj
