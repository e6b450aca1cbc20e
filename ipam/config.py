"""Flannel's network config (``<prefix>/config``): a typed model, defaults and validation.

Every refusal is a :class:`ConfigError` whose message starts with the field it is about.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from netweft.common import defaults

BACKEND_TYPES = ("vxlan", "host-gw", "wireguard")
DEFAULT_VXLAN_PORT = defaults.VXLAN_PORT
# Flannel's wireguard backend (pkg/backend/wireguard): defaults and the modes it accepts.
DEFAULT_WG_PORT = defaults.WIREGUARD_PORT
DEFAULT_WG_PORT_V6 = 51821
WG_MODES = ("separate", "auto", "ipv4", "ipv6")
MIN_V4_NETWORK_PREFIX = 28  # Flannel: "Network is too small. Minimum useful network prefix is /28"


class ConfigError(ValueError):
    """An invalid network config; the message names the field and the reason."""


@dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object of Flannel's network config (``Type``, ``VNI``, ``Port``,
    ``DirectRouting``, ``MTU``; WireGuard's ``PSK``, ``ListenPort``, ``ListenPortV6``,
    ``PersistentKeepaliveInterval`` in seconds, ``Mode``), Flannel's defaults. Ports are UDP;
    ``mtu`` is bytes."""

    type: str = "vxlan"
    vni: int = 1
    port: int = DEFAULT_VXLAN_PORT
    direct_routing: bool = False
    mtu: int | None = None  # None: underlay MTU - 50 (vxlan), - 60/80 (wireguard), host-gw: =
    # wireguard (Flannel's names): base64 32-byte preshared key, listen ports, keepalive (s)
    psk: str | None = field(default=None, repr=False)
    listen_port: int = DEFAULT_WG_PORT
    listen_port_v6: int = DEFAULT_WG_PORT_V6
    keepalive: int = 0
    mode: str = "separate"

    def to_dict(self) -> dict[str, Any]:
        """The ``Backend`` JSON object with Flannel's key names (only the keys of ``type``; ``PSK``
        only when set)."""
        out: dict[str, Any] = {"Type": self.type}
        if self.type == "vxlan":
            out.update(VNI=self.vni, Port=self.port, DirectRouting=self.direct_routing)
        if self.type == "wireguard":
            out.update(ListenPort=self.listen_port, ListenPortV6=self.listen_port_v6,
                       PersistentKeepaliveInterval=self.keepalive, Mode=self.mode)
            if self.psk:
                out["PSK"] = self.psk
        if self.mtu is not None:
            out["MTU"] = self.mtu
        return out


@dataclass(frozen=True)
class NetworkConfig:
    """Flannel's network config (``<prefix>/config`` in etcd, or ``net-conf.json`` in kube mode):
    the cluster network, per-node subnet length and the range subnets are leased from, for IPv4
    and/or IPv6, and the backend. Built by :func:`parse_config` / :func:`from_dict`, which validate
    it."""

    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 64
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)

    # --- derived -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many IPv4 subnets SubnetMin..SubnetMax holds."""
        if self.network is None:
            return 0
        return _span(self.subnet_min, self.subnet_max, 32 - self.subnet_len)

    def subnet_at(self, index: int) -> IPv4Network:
        """The ``index``-th IPv4 subnet counting from SubnetMin."""
        assert self.subnet_min is not None
        size = 1 << (32 - self.subnet_len)
        return IPv4Network((int(self.subnet_min) + index * size, self.subnet_len))

    def subnet_index(self, subnet: IPv4Network) -> int | None:
        """Position of ``subnet`` in SubnetMin..SubnetMax, None when outside or misaligned."""
        if self.subnet_min is None or subnet.prefixlen != self.subnet_len:
            return None
        offset = int(subnet.network_address) - int(self.subnet_min)
        size = 1 << (32 - self.subnet_len)
        if offset < 0 or offset % size:
            return None
        idx = offset // size
        return idx if idx < self.capacity else None

    @property
    def ipv6_capacity(self) -> int:
        """How many IPv6 node subnets fit between ``IPv6SubnetMin`` and ``IPv6SubnetMax`` (0 without
        IPv6)."""
        return _span(self.ipv6_subnet_min, self.ipv6_subnet_max, 128 - self.ipv6_subnet_len)

    def ipv6_subnet_at(self, index: int) -> IPv6Network:
        """The ``index``-th IPv6 node subnet from ``IPv6SubnetMin`` (0-based); the config must have
        IPv6 (AssertionError otherwise)."""
        assert self.ipv6_subnet_min is not None
        size = 1 << (128 - self.ipv6_subnet_len)
        return IPv6Network((int(self.ipv6_subnet_min) + index * size, self.ipv6_subnet_len))

    # --- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as Flannel's JSON object (``Network``, ``SubnetLen``, ``SubnetMin``,
        ``SubnetMax``, ``EnableIPv4``/``EnableIPv6``, the IPv6 keys, ``Backend``)."""
        out: dict[str, Any] = {}
        if self.network is not None:
            out.update(Network=str(self.network), SubnetLen=self.subnet_len,
                       SubnetMin=str(self.subnet_min), SubnetMax=str(self.subnet_max))
        out["EnableIPv4"] = self.enable_ipv4
        out["EnableIPv6"] = self.enable_ipv6
        if self.ipv6_network is not None:
            out.update(IPv6Network=str(self.ipv6_network), IPv6SubnetLen=self.ipv6_subnet_len,
                       IPv6SubnetMin=str(self.ipv6_subnet_min),
                       IPv6SubnetMax=str(self.ipv6_subnet_max))
        out["Backend"] = self.backend.to_dict()
        return out

    def summary(self) -> str:
        """One line per enabled family, e.g. ``10.244.0.0/16, /24 per node (255 subnets)``,
        joined by ``; `` (IPv4 first)."""
        parts = []
        if self.enable_ipv4 and self.network is not None:
            parts.append(f"{self.network}, /{self.subnet_len} per node "
                         f"({self.capacity} subnets)")
        if self.enable_ipv6 and self.ipv6_network is not None:
            parts.append(f"{self.ipv6_network}, /{self.ipv6_subnet_len} per node "
                         f"({self.ipv6_capacity} subnets)")
        return "; ".join(parts)

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as JSON text (what ``<prefix>/config`` holds)."""
        return json.dumps(self.to_dict(), indent=indent)


def _span(first: IPv4Address | IPv6Address | None, last: IPv4Address | IPv6Address | None,
          host_bits: int) -> int:
    """How many subnets of ``host_bits`` host bits lie from ``first`` to ``last`` inclusive."""
    if first is None or last is None:
        return 0
    return (int(last) - int(first)) // (1 << host_bits) + 1


# --- parsing ----------------------------------------------------------------------------------


def _int(d: dict[str, Any], key: str, where: str = "") -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key}: expected an integer, got {json.dumps(value)}")
    return value


def _bool(d: dict[str, Any], key: str, default: bool, where: str = "") -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: expected true or false, got {json.dumps(value)}")
    return value


def _str(d: dict[str, Any], key: str, where: str = "") -> str | None:
    value = d.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}{key}: expected a string, got {json.dumps(value)}")
    return value


def _parse_backend(raw: Any) -> BackendConfig:
    if raw is None:
        return BackendConfig()
    if not isinstance(raw, dict):
        raise ConfigError("Backend: expected an object like {\"Type\": \"vxlan\"}")
    btype = (_str(raw, "Type", "Backend.") or "vxlan").lower()
    if btype not in BACKEND_TYPES:
        raise ConfigError(f"Backend.Type: unknown backend {btype!r} "
                          f"(supported: {', '.join(BACKEND_TYPES)})")
    vni = _int(raw, "VNI", "Backend.")
    if vni is None:
        vni = 1
    if not 1 <= vni <= 0xFFFFFF:
        raise ConfigError(f"Backend.VNI: {vni} is out of range 1-16777215")
    port = _port(raw, "Port", DEFAULT_VXLAN_PORT)
    mtu = _int(raw, "MTU", "Backend.")
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ConfigError(f"Backend.MTU: {mtu} is out of range 68-65535")
    direct = _bool(raw, "DirectRouting", False, "Backend.")
    wg: dict[str, Any] = _parse_wireguard(raw) if btype == "wireguard" else {}
    return BackendConfig(type=btype, vni=vni, port=port, direct_routing=direct, mtu=mtu or None,
                         **wg)


def _port(raw: dict[str, Any], key: str, default: int) -> int:
    port = _int(raw, key, "Backend.")
    if port is None or port == 0:
        return default
    if not 1 <= port <= 65535:
        raise ConfigError(f"Backend.{key}: {port} is out of range 1-65535")
    return port


def _parse_wireguard(raw: dict[str, Any]) -> dict[str, Any]:
    """The wireguard options with Flannel's defaults (pkg/backend/wireguard/wireguard.go):
    ListenPort 51820, ListenPortV6 51821, PersistentKeepaliveInterval 0 (seconds, off), Mode
    "separate"; PSK, when given, must be a base64 32-byte key as ``wg genpsk`` prints."""
    psk = _str(raw, "PSK", "Backend.")
    if psk is not None:
        try:
            decoded = base64.b64decode(psk, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 32:
            raise ConfigError("Backend.PSK: not a base64 32-byte key (make one with `wg genpsk`)")
    keepalive = _int(raw, "PersistentKeepaliveInterval", "Backend.") or 0
    if not 0 <= keepalive <= 65535:
        raise ConfigError(f"Backend.PersistentKeepaliveInterval: {keepalive} is out of range "
                          "0-65535 (seconds, 0 = off)")
    mode = (_str(raw, "Mode", "Backend.") or "separate").lower()
    if mode not in WG_MODES:
        raise ConfigError(f"Backend.Mode: unknown mode {mode!r} (one of {', '.join(WG_MODES)})")
    return {"psk": psk, "listen_port": _port(raw, "ListenPort", DEFAULT_WG_PORT),
            "listen_port_v6": _port(raw, "ListenPortV6", DEFAULT_WG_PORT_V6),
            "keepalive": keepalive, "mode": mode}


def _subnet_bounds(d: dict[str, Any], min_key: str, max_key: str,
                   network: IPv4Network | IPv6Network,
                   subnet_len: int) -> tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address]:
    """SubnetMin/SubnetMax (or the IPv6 ones): inside the network, on a subnet boundary, in
    order; by default the second subnet and the last one."""
    size = 1 << (network.max_prefixlen - subnet_len)
    first = int(network.network_address)
    family = f"IPv{network.version}"
    net_field = "Network" if network.version == 4 else "IPv6Network"
    len_field = "SubnetLen" if network.version == 4 else "IPv6SubnetLen"

    def bound(key: str, default: int) -> IPv4Address | IPv6Address:
        value = _str(d, key)
        if value is None:
            return type(network.network_address)(default)
        try:
            addr = ip_address(value)
        except ValueError:
            addr = None
        if addr is None or addr.version != network.version:
            raise ConfigError(f"{key}: {value!r} is not an {family} address")
        if addr not in network:
            raise ConfigError(f"{key}: {addr} is outside the {net_field} {network}")
        if (int(addr) - first) % size:
            raise ConfigError(f"{key}: {addr} is not on a /{subnet_len} boundary ({len_field})")
        return addr

    smin = bound(min_key, first + size)
    smax = bound(max_key, first + network.num_addresses - size)
    if smin > smax:  # type: ignore[operator]
        raise ConfigError(f"{min_key}: {smin} is above {max_key} {smax}")
    return smin, smax


def _check_subnet_len(name: str, subnet_len: int, net_field: str, prefixlen: int,
                      longest: int) -> None:
    """Flannel's CheckNetworkConfig (pkg/subnet/config.go): a node subnet leaves room for the
    tunnel and bridge addresses (at most /30, IPv6 /126) and the network holds at least four of
    them, because the first is skipped (so SubnetLen >= prefix + 2). A flanneld sharing the etcd
    would refuse anything else."""
    if not prefixlen + 2 <= subnet_len <= longest:
        raise ConfigError(f"{name}: {subnet_len} is out of range: the {net_field}'s "
                          f"/{prefixlen} must hold at least four subnets (the first is skipped), "
                          f"so it must be from /{prefixlen + 2} to /{longest}")


def _v4_range(d: dict[str, Any]) -> tuple[IPv4Network, int, IPv4Address, IPv4Address]:
    text = _str(d, "Network")
    if text is None:
        raise ConfigError("Network: missing (an IPv4 CIDR such as 10.244.0.0/16)")
    try:
        network = IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"Network: {text!r} is not an IPv4 CIDR ({exc})") from None
    if str(network) != text and str(network.network_address) != text.split("/")[0]:
        raise ConfigError(f"Network: {text!r} has host bits set (did you mean {network}?)")
    if network.prefixlen > MIN_V4_NETWORK_PREFIX:
        raise ConfigError(f"Network: {network} is smaller than a /{MIN_V4_NETWORK_PREFIX}, "
                          "too small to carve node subnets from")
    subnet_len = _int(d, "SubnetLen")
    if subnet_len is None or subnet_len == 0:
        subnet_len = 24 if network.prefixlen < 22 else network.prefixlen + 2
    _check_subnet_len("SubnetLen", subnet_len, "Network", network.prefixlen, 30)
    # Flannel skips the first subnet by default (its network address doubles as the network's).
    smin, smax = _subnet_bounds(d, "SubnetMin", "SubnetMax", network, subnet_len)
    return network, subnet_len, smin, smax  # type: ignore[return-value]


def _v6_range(d: dict[str, Any]) -> tuple[IPv6Network, int, IPv6Address, IPv6Address]:
    text = _str(d, "IPv6Network")
    if text is None:
        raise ConfigError("IPv6Network: missing while EnableIPv6 is true")
    try:
        network = IPv6Network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"IPv6Network: {text!r} is not an IPv6 CIDR ({exc})") from None
    if network.prefixlen > 124:
        raise ConfigError(f"IPv6Network: {network} is too small to carve node subnets from")
    subnet_len = _int(d, "IPv6SubnetLen")
    if subnet_len is None or subnet_len == 0:
        subnet_len = 64 if network.prefixlen < 62 else network.prefixlen + 2
    _check_subnet_len("IPv6SubnetLen", subnet_len, "IPv6Network", network.prefixlen, 126)
    smin, smax = _subnet_bounds(d, "IPv6SubnetMin", "IPv6SubnetMax", network, subnet_len)
    return network, subnet_len, smin, smax  # type: ignore[return-value]


def from_dict(d: Any) -> NetworkConfig:
    """Validate a decoded Flannel network config (``pkg/subnet/config.go``'s keys and defaults;
    SubnetMin skips the network's first subnet, as Flannel) into a :class:`NetworkConfig`. Raises
    :class:`ConfigError`, one line naming the key."""
    if not isinstance(d, dict):
        raise ConfigError("config: expected a JSON object like {\"Network\": \"10.244.0.0/16\"}")
    enable_v4 = _bool(d, "EnableIPv4", True)
    enable_v6 = _bool(d, "EnableIPv6", False)
    if not enable_v4 and not enable_v6:
        raise ConfigError("EnableIPv4: both EnableIPv4 and EnableIPv6 are false: nothing to lease")
    backend = _parse_backend(d.get("Backend"))
    v4: tuple[Any, ...] = (None, 24, None, None)
    if enable_v4:
        v4 = _v4_range(d)
    v6: tuple[Any, ...] = (None, 64, None, None)
    if enable_v6:
        v6 = _v6_range(d)
    return NetworkConfig(
        network=v4[0], subnet_len=v4[1], subnet_min=v4[2], subnet_max=v4[3],
        enable_ipv4=enable_v4, enable_ipv6=enable_v6,
        ipv6_network=v6[0], ipv6_subnet_len=v6[1], ipv6_subnet_min=v6[2], ipv6_subnet_max=v6[3],
        backend=backend,
    )


def parse_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate a Flannel network config JSON document. Raises :class:`ConfigError`,
    one line naming the key."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"config: not valid JSON ({exc})") from None
    return from_dict(data)
