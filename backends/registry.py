"""Backends by type name (``Backend.Type`` in the network config), as Flannel's backend manager.

A backend module registers a factory under its type name; the agent asks :func:`create` for the
configured one and never names a backend class itself. Built-in: ``vxlan``, ``host-gw``,
``wireguard``. A new backend adds one :func:`register` call in :func:`_builtins`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from netweft.backends.base import Backend, BackendError, Underlay
from netweft.backends.netlink import Netlink
from netweft.ipam.config import BackendConfig
from netweft.ipam.lease import Lease


class UnknownBackend(BackendError):
    """``Backend.Type`` names no registered backend (one line naming the field)."""


@dataclass(frozen=True)
class BackendParams:
    """What a backend factory gets: the config's Backend section, the netlink adapter, the
    node's public side, the state directory (``None``: keep nothing on disk, e.g. inspection),
    the lease this node held before (its BackendData may be reused, e.g. the VTEP MAC), and the
    pod network (wireguard keeps it unreachable rather than routed in clear without its device).
    """

    config: BackendConfig
    nl: Netlink
    underlay: Underlay
    state_dir: str | None = None
    previous: Lease | None = None
    network: IPv4Network | None = None


Factory = Callable[[BackendParams], Backend]

_FACTORIES: dict[str, Factory] = {}


def register(type_name: str, factory: Factory) -> None:
    """Make ``type_name`` (the config's ``Backend.Type``) create backends with ``factory``."""
    _FACTORIES[type_name] = factory


def unregister(type_name: str) -> None:
    """Forget ``type_name`` (a no-op when it is not registered)."""
    _FACTORIES.pop(type_name, None)


def names() -> list[str]:
    """Registered type names, sorted."""
    _builtins()
    return sorted(_FACTORIES)


def create(params: BackendParams) -> Backend:
    """The backend for ``params.config.type``; :class:`UnknownBackend` when none is registered."""
    _builtins()
    factory = _FACTORIES.get(params.config.type)
    if factory is None:
        raise UnknownBackend(f"Backend.Type: {params.config.type!r} is not supported "
                             f"({', '.join(names())})")
    return factory(params)


def _builtins() -> None:
    from netweft.backends import hostgw, vxlan, wireguard

    _FACTORIES.setdefault("vxlan", vxlan.from_params)
    _FACTORIES.setdefault("host-gw", hostgw.from_params)
    _FACTORIES.setdefault("wireguard", wireguard.from_params)
