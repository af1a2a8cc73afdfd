"""Where another instance's HTTP endpoint is: a URL from the ``{app}-instances`` registry,
checked before anything connects to it.

Anyone who can write that topic can write any URL into it, so a URL is taken only in the
exact form instances advertise (``http(s)://host:port``, see
:func:`~streamproc.ops.instances.advertised_url`): nothing that could carry a path, a query, a
fragment or credentials, a host that is an IP literal or an ASCII DNS name, never a link-local,
multicast or unspecified address (cloud metadata services live at 169.254.169.254 and
fd00:ec2::254). Requests to it are built from the parsed parts (:meth:`Endpoint.url`), never by
appending to the text someone wrote.

Host names are not resolved here: a name can still point anywhere. Against a writer of the
topic the real defence is ``http_registry_signing_key`` (docs/security.md, "HTTP surface").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import httpx

# Anchored, ASCII only (re.ASCII: \d and friends never match other scripts' digits).
_URL = re.compile(r"(?P<scheme>https?)://"
                  r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<host>[^\[\]:/@?#\\\s]+))"
                  r":(?P<port>\d{1,5})", re.ASCII)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
MAX_URL_CHARS = 300
# fd00:ec2::254 is AWS' IPv6 metadata address; it is a unique-local address, so it is named.
_BLOCKED = (ipaddress.ip_network("fd00:ec2::254/128"),)


class BadEndpoint(ValueError):
    """Not a URL an instance would advertise; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # an IPv6 address without brackets
    port: int

    @property
    def base(self) -> str:
        """The canonical text form, as registry entries carry it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str, query: str = "") -> httpx.URL:
        """``path`` (already percent-encoded) and ``query`` on this endpoint, assembled from
        parts: whatever the registry said, the request goes to this host and port."""
        parts: dict[str, Any] = {"query": query.encode("ascii")} if query else {}
        return httpx.URL(scheme=self.scheme, host=self.host, port=self.port, path=path,
                         **parts)


def parse_endpoint(text: object) -> Endpoint:
    """The endpoint of a registry entry's URL; raises :class:`BadEndpoint` for anything else."""
    if not isinstance(text, str):
        raise BadEndpoint(f"the URL is not a string but {type(text).__name__}")
    if len(text) > MAX_URL_CHARS:
        raise BadEndpoint(f"the URL is longer than {MAX_URL_CHARS} characters")
    m = _URL.fullmatch(text)
    if m is None:
        raise BadEndpoint(f"{text[:80]!r} is not http(s)://host:port (no user, path, query "
                          "or fragment)")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise BadEndpoint(f"port {port} is out of range")
    if m["v6"] is not None:
        try:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                m["v6"])
        except ValueError:
            raise BadEndpoint(f"[{m['v6']}] is not an IPv6 address") from None
        host = str(addr)
    else:
        host = m["host"].lower()
        try:
            addr = ipaddress.IPv4Address(host)
        except ValueError:
            _check_name(host)
            return Endpoint(m["scheme"], host, port)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise BadEndpoint(f"{host} is an IPv4-mapped address: advertise the IPv4 address")
    if addr.is_link_local or addr.is_multicast or addr.is_unspecified \
            or any(addr in net for net in _BLOCKED):
        raise BadEndpoint(f"{host} is a link-local, multicast, unspecified or metadata "
                          "address, never an instance's")
    return Endpoint(m["scheme"], host, port)


def _check_name(host: str) -> None:
    # A DNS name: ASCII letters, digits and hyphens in dot-separated labels (IDNs in their
    # xn-- form). Digits-only labels at the end would be a mangled IPv4 literal ("1.2.3").
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadEndpoint(f"{host[:80]!r} is neither an IP address nor an ASCII host name")
    if labels[-1].isdigit():
        raise BadEndpoint(f"{host!r} looks like an IP address but is not one")
