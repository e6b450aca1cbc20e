"""Subnet lease records, wire-compatible with Flannel's etcd layout.

Key: ``<prefix>/subnets/<a.b.c.d>-<len>`` (dual stack: ``<v4>-<len>&<v6>-<len>``).
Value: ``{"PublicIP", "PublicIPv6", "BackendType", "BackendData"}``, plus netweft's
``"NetweftNodeID"`` (the node identity, see ``ipam/identity.py``): flanneld decodes lease values
with Go's ``encoding/json``, which ignores fields it does not know, and a lease flanneld wrote has
none. A key bound to an etcd lease expires with it; a key with no etcd lease is a reservation.

Values are read strictly (:func:`parse_lease`): a field of the wrong JSON type is a
:class:`LeaseFormatError`, never coerced (``IPv4Address(3221225985)`` would accept a number).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from netweft.ipam.config import ConfigError
from netweft.ipam.config import _str as config_str

NODE_ID_FIELD = "NetweftNodeID"
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class LeaseFormatError(ValueError):
    """A key or value under ``<prefix>/subnets/`` that is not a Flannel lease."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One node's subnet lease (or a reservation), as Flannel keeps it in etcd: the key
    ``<prefix>/subnets/<key_name>`` holding :meth:`value` (Flannel's ``LeaseAttrs``), attached to
    an etcd lease whose TTL (seconds) makes it expire unless renewed. ``expiration`` is unix time
    in seconds; the revisions are etcd's."""

    subnet: IPv4Network | None
    public_ip: IPv4Address | None
    backend_type: str = "vxlan"
    backend_data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    ipv6_subnet: IPv6Network | None = None
    public_ipv6: IPv6Address | None = None
    etcd_lease_id: int = 0          # 0: a reservation (never expires)
    expiration: float | None = None  # unix time, None for reservations / unknown
    mod_revision: int = 0
    node_id: str | None = None       # netweft's node identity; None: flanneld or older netweft
    create_revision: int = field(default=0, compare=False)  # etcd: older leases win overlaps
    _key: str | None = field(default=None, init=False, repr=False, compare=False)  # key_name

    @property
    def reserved(self) -> bool:
        """A reservation: a lease without an etcd lease (id 0) never expires (Flannel's reserved
        leases, ``TTL 0``)."""
        return self.etcd_lease_id == 0

    @property
    def key_name(self) -> str:
        """The key under ``<prefix>/subnets/``: ``10.244.1.0-24``, with the IPv6 subnet ``&``-joined
        when dual-stack (Flannel's key form). Computed once: the daemon looks it up for every lease
        at every lease event, and formatting the networks dominated that with 1,000 leases; the
        daemon's views key their dicts by this one string. (Slots, not a ``__dict__``: a lease
        is held once per peer, issue 12.) Raises :class:`LeaseFormatError` without a subnet."""
        key = self._key
        if key is None:
            key = subnet_key_name(self.subnet, self.ipv6_subnet)
            object.__setattr__(self, "_key", key)
        return key

    @property
    def vtep_mac(self) -> str | None:
        """The ``VtepMAC`` of ``BackendData`` (vxlan), or None."""
        mac = self.backend_data.get("VtepMAC")
        return str(mac) if mac else None

    def value(self) -> dict[str, Any]:
        """The lease's etcd value as Flannel's ``LeaseAttrs`` JSON object (``PublicIP``,
        ``PublicIPv6``, ``BackendType``, ``BackendData``) plus our ``NetweftNodeID``."""
        out: dict[str, Any] = {}
        if self.public_ip is not None:
            out["PublicIP"] = str(self.public_ip)
        # flanneld's LeaseAttrs always carries PublicIPv6 (a Go pointer: null without IPv6)
        out["PublicIPv6"] = str(self.public_ipv6) if self.public_ipv6 is not None else None
        out["BackendType"] = self.backend_type
        if self.backend_data:
            out["BackendData"] = self.backend_data
        if self.node_id:
            out[NODE_ID_FIELD] = self.node_id
        return out

    def value_json(self) -> str:
        """The etcd value as compact JSON text, key order as flanneld writes it."""
        return json.dumps(self.value(), separators=(",", ":"), sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (the CLI's ``--json``)."""
        return {
            "subnet": str(self.subnet) if self.subnet else None,
            "ipv6Subnet": str(self.ipv6_subnet) if self.ipv6_subnet else None,
            "publicIP": str(self.public_ip) if self.public_ip else None,
            "publicIPv6": str(self.public_ipv6) if self.public_ipv6 else None,
            "backendType": self.backend_type,
            "backendData": self.backend_data,
            "reserved": self.reserved,
            "leaseID": self.etcd_lease_id,
            "expiration": self.expiration,
            "nodeID": self.node_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lease:
        """The inverse of :meth:`to_dict` (netweft's own record, e.g. ``netweft leases -o json``,
        not the etcd value). Raises KeyError/ValueError on a malformed record."""
        return cls(
            subnet=IPv4Network(d["subnet"]) if d.get("subnet") else None,
            ipv6_subnet=IPv6Network(d["ipv6Subnet"]) if d.get("ipv6Subnet") else None,
            public_ip=IPv4Address(d["publicIP"]) if d.get("publicIP") else None,
            public_ipv6=IPv6Address(d["publicIPv6"]) if d.get("publicIPv6") else None,
            backend_type=d.get("backendType", "vxlan"),
            backend_data=dict(d.get("backendData") or {}),
            etcd_lease_id=int(d.get("leaseID") or 0),
            expiration=d.get("expiration"),
            node_id=d.get("nodeID") or None,
        )


def subnet_key_name(v4: IPv4Network | None, v6: IPv6Network | None = None) -> str:
    """``10.244.3.0-24``, ``fc00::-64``, or both joined by ``&`` (Flannel's dual-stack form).
    Raises :class:`LeaseFormatError` without either subnet."""
    parts = []
    if v4 is not None:
        parts.append(f"{v4.network_address}-{v4.prefixlen}")
    if v6 is not None:
        parts.append(f"{v6.network_address}-{v6.prefixlen}")
    if not parts:
        raise LeaseFormatError("a lease needs an IPv4 or an IPv6 subnet")
    return "&".join(parts)


def parse_key_name(name: str) -> tuple[IPv4Network | None, IPv6Network | None]:
    """Inverse of :func:`subnet_key_name`. Raises :class:`LeaseFormatError` for another form."""
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for part in name.split("&"):
        addr, sep, plen = part.rpartition("-")
        if not sep:
            raise LeaseFormatError(f"{name!r} is not <ip>-<prefixlen>")
        try:
            net = ip_network(f"{addr}/{int(plen)}", strict=True)
        except ValueError as exc:
            raise LeaseFormatError(f"{name!r}: {exc}") from None
        if isinstance(net, IPv4Network):
            v4 = net
        else:
            v6 = net
    return v4, v6


def _opt_str(data: dict[str, Any], key: str, name: str) -> str | None:
    """``data[key]`` as a string, None when absent/null/empty; LeaseFormatError for other types
    (the config's strict field reader, with the lease's name in front)."""
    try:
        return config_str(data, key, f"lease {name}: ")
    except ConfigError as exc:
        raise LeaseFormatError(str(exc)) from None


def _backend_data(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``BackendData`` (an object or null); the vxlan fields it carries must have their types."""
    bd = data.get("BackendData")
    if bd is None:
        return {}
    if not isinstance(bd, dict):
        raise LeaseFormatError(f"lease {name}: BackendData: expected an object, "
                               f"got {json.dumps(bd)}")
    mac = bd.get("VtepMAC")
    if mac is not None and (not isinstance(mac, str) or not MAC_RE.match(mac)):
        raise LeaseFormatError(f"lease {name}: BackendData.VtepMAC: {json.dumps(mac)} is not "
                               "a MAC address")
    vni = bd.get("VNI")
    if vni is not None and (isinstance(vni, bool) or not isinstance(vni, int)):
        raise LeaseFormatError(f"lease {name}: BackendData.VNI: expected an integer, "
                               f"got {json.dumps(vni)}")
    # the field names interned: one "VNI" / "VtepMAC" string for every lease, not one each
    return {sys.intern(k): v for k, v in bd.items()}


def parse_lease(name: str, raw: bytes | str, etcd_lease_id: int = 0,
                expiration: float | None = None, mod_revision: int = 0,
                create_revision: int = 0) -> Lease:
    """A :class:`Lease` from a key name (after ``subnets/``) and its JSON value.

    Raises :class:`LeaseFormatError` (message ``lease <name>: <field>: <why>``) for a bad key,
    a value that is not a JSON object, or a field of the wrong type: PublicIP / PublicIPv6 /
    BackendType / NetweftNodeID must be strings (or null), BackendData an object (or null)
    whose VtepMAC is a MAC string and VNI an integer.
    """
    v4, v6 = parse_key_name(name)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise LeaseFormatError(f"lease {name}: value is not JSON") from None
    if not isinstance(data, dict):
        raise LeaseFormatError(f"lease {name}: value is not a JSON object")
    pub_s = _opt_str(data, "PublicIP", name)
    pub6_s = _opt_str(data, "PublicIPv6", name)
    try:
        pub = IPv4Address(pub_s) if pub_s else None
        pub6 = IPv6Address(pub6_s) if pub6_s else None
    except ValueError as exc:
        raise LeaseFormatError(f"lease {name}: {exc}") from None
    return Lease(
        subnet=v4, ipv6_subnet=v6, public_ip=pub, public_ipv6=pub6,
        backend_type=sys.intern(_opt_str(data, "BackendType", name) or ""),
        backend_data=_backend_data(data, name),
        etcd_lease_id=etcd_lease_id, expiration=expiration, mod_revision=mod_revision,
        node_id=_opt_str(data, NODE_ID_FIELD, name), create_revision=create_revision,
    )
