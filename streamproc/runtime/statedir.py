"""The application's local state directory: an exclusive lock and the stable instance id."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path
from typing import IO

from streamproc.errors import ConfigError


class StateDir:
    """``{state_dir}/{app}``; holding it locked keeps two instances off the same stores."""

    def __init__(self, root: Path, application_id: str) -> None:
        self.path = root / application_id
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("state_dir", f"cannot create {self.path}: {exc}") from exc
        f = open(self.path / ".lock", "w")  # noqa: SIM115 - held open for the process lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ConfigError(
                "state_dir", f"{self.path} is in use by another instance; give each instance "
                "its own STREAMPROC_STATE_DIR") from None
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def instance_id(self, configured: str | None) -> str:
        """The configured id, else one generated on first start and kept here, so a restarted
        instance reuses its transactional.id and fences its own predecessor at once."""
        if configured:
            return configured
        f = self.path / "instance-id"
        if f.exists():
            value = f.read_text().strip()
            if value:
                return value
        value = uuid.uuid4().hex[:12]
        tmp = f.with_suffix(".tmp")
        tmp.write_text(value)
        tmp.replace(f)
        return value
