"""Names the engine turns into Kafka topics, consumer groups and paths: one set of rules.

An application id prefixes every internal topic, the consumer group and the state directory;
a store name becomes a directory and part of a changelog topic's name. A name that is not
checked here could escape the state directory (``../x``, ``/abs``) or produce a topic Kafka
refuses half-way through a start. Every check is a ``fullmatch`` (``re.match`` with ``$``
lets a trailing newline through).

A leaf module: stdlib only. Functions return the problem as text (or None), so each caller
raises its own error type (TopologyError at build time, SavepointError for a savepoint file,
ValueError inside pydantic validators).
"""

from __future__ import annotations

import re

# Kafka's legal topic characters and length limit (kafka.common.internals.Topic).
TOPIC_MAX_LENGTH = 249
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")
# Store names, application ids and instance ids: the topic charset, starting with a letter or
# digit (so never ".", "..", a hidden file or a flag), and short enough to leave room for the
# suffixes of the internal topics derived from them.
NAME_MAX_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = ("letters, digits, '.', '_' and '-' only, starting with a letter or digit, "
             f"at most {NAME_MAX_LENGTH} characters")
TOPIC_RULE = f"letters, digits, '.', '_' and '-' only, at most {TOPIC_MAX_LENGTH} characters"


def topic_problem(name: object) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if name in ("", ".", ".."):
        return f"{name!r} is not a topic name ({TOPIC_RULE})"
    if len(name) > TOPIC_MAX_LENGTH:
        return f"is {len(name)} characters long, over Kafka's limit of {TOPIC_MAX_LENGTH}"
    if not _TOPIC.fullmatch(name):
        return f"{name!r} has characters Kafka does not allow in a topic name ({TOPIC_RULE})"
    return None


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a legal store name / application id / instance id, or None."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if len(name) > NAME_MAX_LENGTH:
        return f"is {len(name)} characters long, over the limit of {NAME_MAX_LENGTH}"
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a valid name ({NAME_RULE})"
    return None


def is_name(name: object) -> bool:
    return name_problem(name) is None


# A directory name under the state dir: the name charset (so no '/', never '.' or '..') but
# without NAME_MAX_LENGTH, since derived stores (``{store}.timers``, ``{source}.time``) may be
# longer than the name they derive from; 255 is the usual filesystem limit for one component.
PATH_COMPONENT_MAX_LENGTH = 255
PATH_COMPONENT_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit"


def path_component_problem(name: object) -> str | None:
    """Why ``name`` cannot be one directory name under the state dir, or None."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if len(name.encode()) > PATH_COMPONENT_MAX_LENGTH:
        return (f"is {len(name.encode())} bytes long, over the limit of "
                f"{PATH_COMPONENT_MAX_LENGTH}")
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a valid directory name ({PATH_COMPONENT_RULE})"
    return None


def shown(name: object, limit: int = 60) -> str:
    """``name`` for an error message: its repr, cut short so a 250-character name stays
    readable (the message says how long it is)."""
    if isinstance(name, str) and len(name) > limit:
        return repr(name[:limit]) + "..."
    return repr(name)


def describe_problem(what: str, name: object, problem: str) -> str:
    """``what`` (e.g. "store") and ``name`` in front of a problem from the functions above,
    without repeating the name when the problem already starts with it."""
    if isinstance(name, str) and problem.startswith(repr(name)):
        return f"{what} {problem}"
    return f"{what} {shown(name)} {problem}"
