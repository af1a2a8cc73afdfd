"""The application's local state directory: an exclusive lock and the stable instance id.

Everything a store keeps lives under ``{state_dir}/{app}/{store}/{partition}``, and only that is
ever deleted (a corrupt or stale store is wiped and rebuilt from its changelog). The names that
build these paths are checked when the topology is built (streamproc/names.py); the checks here
are the last line: a path outside the application's directory is refused rather than created or
removed, whatever produced it.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path
from typing import IO

from streamproc.errors import ConfigError, DiskFull, is_disk_full
from streamproc.names import describe_problem, name_problem, path_component_problem


def inside_problem(root: Path, path: Path) -> str | None:
    """Why ``path`` is not strictly inside ``root`` once ``..`` and symlinks are resolved, or
    None."""
    real_root, real = root.resolve(), path.resolve()
    if real == real_root:
        return f"{path} is {root} itself"
    if not real.is_relative_to(real_root):
        return f"{path} is outside {root}" + (f" (it resolves to {real})" if real != path else "")
    return None


def store_dir_problem(path: Path, store: str, partition: int) -> str | None:
    """Why ``path`` is not the directory of ``store``'s ``partition`` inside an application's
    state dir (``{app_dir}/{store}/{partition}``, neither part a symlink out of it), or None:
    what a store checks before it deletes its directory."""
    problem = path_component_problem(store)
    if problem is not None:
        return describe_problem("store", store, problem)
    if path.name != str(partition) or path.parent.name != store:
        return f"{path} is not a {store}/{partition} directory"
    return inside_problem(path.parent.parent, path)


class StateDir:
    """``{state_dir}/{app}``; holding it locked keeps two instances off the same stores."""

    def __init__(self, root: Path, application_id: str) -> None:
        problem = name_problem(application_id)
        if problem is not None:
            raise ConfigError("state_dir", describe_problem("application id", application_id,
                                                            problem) + " (no directory for it)")
        self.root = root
        self.path = root / application_id
        outside = inside_problem(root, self.path)
        if outside is not None:  # e.g. {state_dir}/{app} is a symlink to somewhere else
            raise ConfigError("state_dir", outside)
        self._lock: IO[str] | None = None

    def store_path(self, store: str, partition: int) -> Path:
        """``{state_dir}/{app}/{store}/{partition}``, refused unless it stays inside."""
        problem = path_component_problem(store)
        path = self.path / str(store) / str(partition)
        if problem is None:
            problem = inside_problem(self.path, path)
        if problem is not None:
            raise ConfigError("state_dir", f"no state path for store {store!r}: {problem}")
        return path

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(self.path, exc) from exc
            raise ConfigError("state_dir", f"cannot create {self.path}: {exc}") from exc
        lock = self.path / ".lock"
        try:
            f = open(lock, "w")  # noqa: SIM115 - held open for the process lifetime
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(lock, exc) from exc
            raise
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ConfigError(
                "state_dir", f"{self.path} is in use by another instance; give each instance "
                "its own STREAMPROC_STATE_DIR") from None
        self._lock = f  # held from here: unlock() releases it whatever follows
        try:
            f.write(str(os.getpid()))  # for people, not for the lock
            f.flush()
        except OSError as exc:
            # The first write a restart makes on a disk that is still full.
            if is_disk_full(exc):
                raise DiskFull(lock, exc) from exc
            raise

    def unlock(self) -> None:
        if self._lock is not None:
            f, self._lock = self._lock, None
            fcntl.flock(f, fcntl.LOCK_UN)
            try:
                f.close()
            except OSError as exc:  # the pid it could not write (a full disk): nothing lost
                if not is_disk_full(exc):
                    raise

    def instance_id(self, configured: str | None) -> str:
        """The configured id, else one generated on first start and kept here, so a restarted
        instance reuses its transactional.id and fences its own predecessor at once."""
        if configured:
            problem = name_problem(configured)
            if problem is not None:
                raise ConfigError("instance_id", problem)
            return configured
        f = self.path / "instance-id"
        if f.exists():
            value = f.read_text().strip()
            if value:
                # It becomes the transactional.id: a file edited by hand must not smuggle in
                # what the instance_id setting refuses.
                problem = name_problem(value)
                if problem is not None:
                    raise ConfigError("state_dir", f"{f} holds an invalid instance id: {problem} "
                                      "(delete the file to generate a new one)")
                return value
        value = uuid.uuid4().hex[:12]
        tmp = f.with_suffix(".tmp")
        try:
            tmp.write_text(value)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f, exc) from exc
            raise
        tmp.replace(f)
        return value
