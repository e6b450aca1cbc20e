"""etcd client URLs (``--etcd-endpoints``), one base URL per endpoint for etcd's JSON gateway.

``http://etcd-a:2379`` (a host name: resolved when connecting, every address it has),
``http://10.0.0.1:2379`` and ``http://[fd00::1]:2379`` (IP literals, IPv6 in brackets as in any
URL). A missing scheme means ``http://``, a missing port 2379 (etcd's client port). Each endpoint
gets its own connections; :class:`netweft.kv.etcd.EtcdClient` fails over between them as etcd's own
clientv3 does with several endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_CLIENT_PORT = 2379


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL: ``url`` as given, ``host`` (a name or an IP literal without
    brackets), ``port``, and whether its scheme asks for TLS (``https``)."""

    url: str
    host: str
    port: int
    https: bool


def parse_endpoint(text: str) -> Endpoint:
    """One URL; ValueError (a line naming ``--etcd-endpoints``) when it is not one."""
    url = text.strip()
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 \
            or parts.path not in ("", "/"):
        raise ValueError(f"--etcd-endpoints: {url!r} is not an http(s)://host:port URL "
                         "(IPv6 literals in brackets: http://[fd00::1]:2379)")
    return Endpoint(url, parts.hostname, port or DEFAULT_CLIENT_PORT, parts.scheme == "https")


def parse_endpoints(urls: tuple[str, ...] | list[str]) -> tuple[Endpoint, ...]:
    """Every URL, in order, duplicates dropped; ValueError when there is none or one is bad."""
    out: list[Endpoint] = []
    for url in urls:
        ep = parse_endpoint(url)
        if all((ep.host, ep.port) != (o.host, o.port) for o in out):
            out.append(ep)
    if not out:
        raise ValueError("--etcd-endpoints: at least one endpoint is needed")
    return tuple(out)
