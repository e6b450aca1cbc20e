"""The plugin's network configuration (one plugin entry of a conflist, as the runtime passes it).

Flannel-compatible keys, camelCase as in the conflist:

    {"cniVersion": "1.1.0", "name": "netweft", "type": "netweft",
     "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
     "mtu": 1450, "ipMasq": false, "forceAddress": false, "routes": [{"dst": "192.168.0.0/16"}],
     "subnetFile": "/run/flannel/subnet.env", "dataDir": "/var/lib/cni/networks",
     "socketPath": "/run/netweft/cni.sock", "logFile": "/var/log/netweft/cni.log"}

``mtu`` defaults to FLANNEL_MTU and ``ipMasq`` to ``not FLANNEL_IPMASQ`` (as the flannel
meta-plugin does: when flanneld masquerades, the bridge does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_interface, ip_network
from typing import Any

from netweft.cni.spec import (
    ERR_DECODE,
    ERR_INVALID_CONFIG,
    CniError,
    Result,
    check_version,
    parse_result,
)
from netweft.common import defaults

DEFAULT_BRIDGE = "cni0"
DEFAULT_SUBNET_FILE = defaults.SUBNET_FILE
DEFAULT_DATA_DIR = defaults.CNI_DATA_DIR
DEFAULT_SOCKET_PATH = defaults.CNI_SOCKET_PATH
DEFAULT_LOG_FILE = "/var/log/netweft/cni.log"
VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


@dataclass(frozen=True)
class ExtraRoute:
    """One entry of the config's ``routes``: destination network and optional gateway (empty: the
    bridge's address), as the reference bridge plugin's IPAM routes."""

    dst: IPv4Network | IPv6Network
    gw: str = ""


@dataclass
class NetConf:
    """Our plugin's network configuration as parsed from stdin (CNI spec 1.1, Section 1 "Network
    configuration format": ``cniVersion``, ``name``, ``type``, ``prevResult``, ``runtimeConfig``,
    and the plugin's own keys named like the reference bridge plugin's). ``mtu`` is bytes (None: the
    node's ``FLANNEL_MTU``); ``ip_masq`` None: ``FLANNEL_IPMASQ``."""

    cni_version: str
    name: str
    type: str = "netweft"
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = True
    is_default_gateway: bool = True
    hairpin_mode: bool = True
    mtu: int | None = None
    ip_masq: bool | None = None
    force_address: bool = False
    routes: list[ExtraRoute] = field(default_factory=list)
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR
    socket_path: str = DEFAULT_SOCKET_PATH
    log_file: str = DEFAULT_LOG_FILE
    runtime_ips: list[str] = field(default_factory=list)
    prev_result: Result | None = None
    valid_attachments: list[tuple[str, str]] | None = None


def decode(stdin: bytes | str) -> dict[str, Any]:
    """The JSON object on stdin. Raises :class:`CniError` ERR_DECODE (6, CNI spec well-known error)
    when it is not valid JSON or not an object."""
    try:
        data = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ERR_DECODE, f"network config on stdin is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CniError(ERR_DECODE, "network config on stdin must be a JSON object")
    return data


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if kind is int and isinstance(value, bool):
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be an integer, not {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be a {names}, not {value!r}")
    return value


def _path(data: dict[str, Any], key: str, default: str) -> str:
    value = _get(data, key, str, default)
    if not value.startswith("/") or "\x00" in value:
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be an absolute path, not {value!r}")
    return value


def _routes(data: dict[str, Any]) -> list[ExtraRoute]:
    out = []
    for item in _get(data, "routes", list, []):
        if not isinstance(item, dict) or not isinstance(item.get("dst"), str):
            raise CniError(ERR_INVALID_CONFIG, f"routes: {item!r} needs a string dst")
        try:
            dst = ip_network(item["dst"], strict=False)
            gw = item.get("gw") or ""
            if gw:
                if not isinstance(gw, str):
                    raise ValueError("gw must be a string")
                ip_address(gw)
        except ValueError as exc:
            raise CniError(ERR_INVALID_CONFIG, f"routes: {item!r}: {exc}") from None
        out.append(ExtraRoute(dst, gw))
    return out


def _runtime_ips(data: dict[str, Any]) -> list[str]:
    rc = _get(data, "runtimeConfig", dict, {})
    ips = rc.get("ips") or []
    if not isinstance(ips, list):
        raise CniError(ERR_INVALID_CONFIG, "runtimeConfig.ips must be a list")
    out = []
    for item in ips:
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            ip_interface(item)
        except ValueError:
            raise CniError(ERR_INVALID_CONFIG,
                           f"runtimeConfig.ips: {item!r} is not an IP address") from None
        out.append(item)
    return out


def _attachments(data: dict[str, Any]) -> list[tuple[str, str]] | None:
    for key in VALID_ATTACHMENTS_KEYS:
        if key in data:
            items = data[key]
            if not isinstance(items, list):
                raise CniError(ERR_INVALID_CONFIG, f"{key} must be a list")
            out = []
            for item in items:
                if (not isinstance(item, dict) or not isinstance(item.get("containerID"), str)
                        or not isinstance(item.get("ifname"), str)):
                    raise CniError(ERR_INVALID_CONFIG,
                                   f"{key}: {item!r} needs string containerID and ifname")
                out.append((item["containerID"], item["ifname"]))
            return out
    return None


def parse(data: dict[str, Any]) -> NetConf:
    """Validate a decoded config. Raises :class:`CniError` ERR_INCOMPATIBLE_VERSION (1) for the
    version, ERR_INVALID_CONFIG (7) naming the field otherwise."""
    version = check_version(data.get("cniVersion"))
    name = _get(data, "name", str, "")
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise CniError(ERR_INVALID_CONFIG, f"name {name!r} is missing or not a valid network name")
    bridge = _get(data, "bridge", str, DEFAULT_BRIDGE)
    if not bridge or len(bridge) > 15 or any(c in bridge for c in "/: \t\n\x00"):
        raise CniError(ERR_INVALID_CONFIG, f"bridge {bridge!r} is not a valid interface name")
    mtu = _get(data, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise CniError(ERR_INVALID_CONFIG, f"mtu {mtu} is out of range 68-65535")
    prev = data.get("prevResult")
    return NetConf(
        cni_version=version,
        name=name,
        type=_get(data, "type", str, "netweft"),
        bridge=bridge,
        is_gateway=_get(data, "isGateway", bool, True),
        is_default_gateway=_get(data, "isDefaultGateway", bool, True),
        hairpin_mode=_get(data, "hairpinMode", bool, True),
        mtu=mtu,
        ip_masq=_get(data, "ipMasq", bool, None),
        force_address=_get(data, "forceAddress", bool, False),
        routes=_routes(data),
        subnet_file=_path(data, "subnetFile", DEFAULT_SUBNET_FILE),
        data_dir=_path(data, "dataDir", DEFAULT_DATA_DIR),
        socket_path=_path(data, "socketPath", DEFAULT_SOCKET_PATH),
        log_file=_path(data, "logFile", DEFAULT_LOG_FILE),
        runtime_ips=_runtime_ips(data),
        prev_result=parse_result(prev) if prev is not None else None,
        valid_attachments=_attachments(data),
    )
