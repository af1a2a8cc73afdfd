"""Savepoints: a stopped application's state, offsets and in-flight records as a directory.

``streamproc savepoint create`` takes one (create.py), ``streamproc run --from-savepoint``
starts an application from one (apply.py), and :class:`Savepoint` reads one in Python for
inspection or migration (format.py).
"""

from streamproc.savepoints.format import Manifest, SavedRecord, Savepoint, SavepointError

__all__ = ["Manifest", "SavedRecord", "Savepoint", "SavepointError"]
