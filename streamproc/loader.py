"""Find a user's topology by ``module`` or ``module:attr``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from streamproc.api.topology import Topology
from streamproc.errors import TopologyError


def load_topology(spec: str, params: dict[str, str] | None = None) -> Topology:
    """Import ``module`` or ``module:attr``; the attribute (default ``topology``) may be a
    Topology or a factory returning one, called with ``params`` as keyword arguments (e.g. the
    example topologies' ``build(app_id=..., source=..., sink=...)``: a replay into a new
    application id and output topic)."""
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
    if params and (isinstance(obj, Topology) or not callable(obj)):
        raise TopologyError(f"{spec} is not a factory: parameters {sorted(params)} need one, "
                            f"e.g. {module_name}:build")
    if callable(obj) and not isinstance(obj, Topology):
        try:
            inspect.signature(obj).bind(**(params or {}))
        except TypeError as exc:
            raise TopologyError(f"{spec}{inspect.signature(obj)}: {exc}") from None
        obj = obj(**(params or {}))
    if not isinstance(obj, Topology):
        raise TopologyError(f"{spec} is a {type(obj).__name__}, not a streamproc Topology")
    return obj
