"""CNI spec types: versions, error codes, errors and results rendered per spec version.

Pure data and functions (stdlib only). The result model is version-neutral; :func:`render_result`
turns it into the JSON shape of the requested ``cniVersion`` (0.3.0 ... 1.1.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface, ip_network

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

# Well-known error codes (spec section "Error"), then netweft's own (>= 100).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50  # STATUS: cannot service ADD
ERR_LIMITED_CONNECTIVITY = 51
ERR_NO_FREE_IP = 100
ERR_REQUESTED_IP_UNAVAILABLE = 101
ERR_BRIDGE_ADDRESS = 102
ERR_CHECK_FAILED = 103
ERR_INTERNAL = 999


class CniError(Exception):
    """An error reported to the runtime as CNI error JSON (never a traceback)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, version: str) -> dict[str, object]:
        """The CNI error object (CNI spec 1.1, Section 5 "Error": ``cniVersion``, ``code``, ``msg``,
        ``details`` when set)."""
        out: dict[str, object] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``. Raises ValueError when it is not three dot-separated numbers.
    """
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{version!r} is not a semantic version")
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_version(version: object) -> str:
    """Return ``version`` if this plugin speaks it, else raise a CNI error code 1."""
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "cniVersion is missing or not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    return version


@dataclass(frozen=True)
class Interface:
    """One ``interfaces`` entry of a CNI result (CNI spec 1.1, Section 5 "Success"): name, MAC,
    ``sandbox`` (netns path; empty for a host interface), ``mtu`` in bytes (0: not reported)."""

    name: str
    mac: str
    sandbox: str = ""
    mtu: int = 0


@dataclass(frozen=True)
class IPConfig:
    """One ``ips`` entry of a CNI result: address with prefix length, gateway ("": none) and the
    index into ``interfaces``."""

    address: IPv4Interface | IPv6Interface
    gateway: str
    interface: int


@dataclass(frozen=True)
class Route:
    """One ``routes`` entry of a CNI result: destination CIDR and gateway ("": none)."""

    dst: str
    gw: str = ""


@dataclass
class Result:
    """A CNI success result (CNI spec 1.1, Section 5 "Success"); :func:`render_result` writes it in
    the requested version's form."""

    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


def render_result(result: Result, version: str) -> dict[str, object]:
    """The result JSON object for ``version`` (0.3.x/0.4.0 carry ``ips[].version``)."""
    v = version_tuple(version)
    interfaces = []
    for iface in result.interfaces:
        item: dict[str, object] = {"name": iface.name, "mac": iface.mac}
        if iface.mtu and v >= (1, 1, 0):
            item["mtu"] = iface.mtu
        if iface.sandbox:
            item["sandbox"] = iface.sandbox
        interfaces.append(item)
    ips = []
    for ipc in result.ips:
        entry: dict[str, object] = {}
        if v < (1, 0, 0):
            entry["version"] = str(ipc.address.version)
        entry["address"] = str(ipc.address)
        if ipc.gateway:
            entry["gateway"] = ipc.gateway
        entry["interface"] = ipc.interface
        ips.append(entry)
    routes = []
    for route in result.routes:
        r: dict[str, object] = {"dst": route.dst}
        if route.gw:
            r["gw"] = route.gw
        routes.append(r)
    return {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes,
            "dns": {}}


def parse_result(data: object) -> Result:
    """Parse a ``prevResult`` (any supported version) back into a :class:`Result`. Raises
    :class:`CniError` ERR_INVALID_CONFIG naming the field."""
    if not isinstance(data, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be an object")
    try:
        interfaces = [
            Interface(str(i["name"]), str(i.get("mac", "")), str(i.get("sandbox", "")))
            for i in data.get("interfaces") or []
        ]
        ips = []
        for item in data.get("ips") or []:
            index = item.get("interface")
            ips.append(IPConfig(ip_interface(item["address"]), str(item.get("gateway", "")),
                                -1 if index is None else int(index)))
        routes = []
        for item in data.get("routes") or []:
            ip_network(item["dst"], strict=False)
            gw = item.get("gw", "")
            if gw:
                ip_address(gw)
            routes.append(Route(str(item["dst"]), str(gw)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CniError(ERR_INVALID_CONFIG, f"prevResult is malformed: {exc}") from None
    return Result(interfaces, ips, routes)


def version_info() -> dict[str, object]:
    """The VERSION command's reply (CNI spec 1.1, Section 2 "VERSION"): our current version and
    every supported one."""
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def dumps(obj: object) -> str:
    """Compact JSON text with a trailing newline, as our stdout carries it."""
    return json.dumps(obj, separators=(",", ":")) + "\n"
