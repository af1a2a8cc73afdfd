"""structlog set-up: JSON lines when the log stream is not a TTY, readable key=value on a TTY.

Only the CLI calls :func:`configure`; the library itself never installs handlers. Libraries
that log through the standard library (uvicorn serving the HTTP endpoint, for one) are routed
through the same renderer, so a log collector never sees a line that is not JSON.

Conventions the engine follows (issue #7, "Logs"): one event name per line (``area.what``);
a line about one record carries ``topic``, ``partition`` and ``offset``; nothing is logged per
record processed, only per failed or late record; restore progress and checkpoint summaries
are at info level (``restore.progress``, ``restore.completed``, ``checkpoint.summary``).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# Marks our handler on the root logger, so configuring twice replaces it instead of doubling
# every line.
_HANDLER_NAME = "streamproc"


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto",
              stream: TextIO | None = None) -> None:
    """Log to ``stream`` (default: stderr) at ``level``; ``fmt="auto"`` picks JSON unless the
    stream is a terminal."""
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    threshold = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: module-level loggers follow a later configure() (tests, embedding), and
        # nothing is logged often enough for the lookup to matter.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Other libraries' info lines (a server's start-up banner) are noise next to ours.
    root.setLevel(max(threshold, logging.WARNING))
