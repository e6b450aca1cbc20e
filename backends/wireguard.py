"""The WireGuard backend in Flannel's layout: an encrypted overlay, kernel device or wireguard-go.

Flannel (pkg/backend/wireguard): device ``flannel-wg`` (``flannel-wg-v6`` for IPv6 in mode
``separate``), private key in ``/run/flannel/wgkey`` or ``$WIREGUARD_KEY_FILE`` (see
``wireguard_keys``), lease BackendData ``{"PublicKey": <base64>, "Port": <ListenPort>}``, address
``<subnet network>/32`` on the device, and per peer lease one WireGuard peer: its public key,
endpoint ``<PublicIP>:<its BackendData.Port>`` (our ListenPort when a lease has none, as Flannel
does for older peers), allowed IPs = its subnet, the configured PSK and persistent keepalive.

Routes: Flannel routes the whole Network to the device (``scope link``). netweft installs one
``<peer subnet> dev flannel-wg proto 78`` per programmed peer instead, so that a deleted route is
put back like the VXLAN ones and traffic to a subnet without a peer is unreachable at once rather
than dropped by WireGuard ("no peer"). Both kinds of node peer with each other unchanged. Below
them an ``unreachable <Network>`` route keeps pod traffic from leaving in clear by the default
route while the device is gone (Flannel's route goes with its device: it fails open there).

MTU: underlay MTU minus WireGuard's overhead: 60 bytes when the endpoints are IPv4 (20 IP + 8
UDP + 32 WireGuard: type, key index, nonce, tag), 80 when they may be IPv6 (modes ``ipv6`` and
``auto``); Flannel subtracts 80 always. ``Backend.MTU`` overrides it.

Kernel first: ``ip link add flannel-wg type wireguard``; where the kernel has no WireGuard the
device comes from ``wireguard-go`` (``wireguard_go``), one log line says which. Either way it is
configured through ``wg`` (``wireguard_wg``): desired peers are diffed against ``wg show
flannel-wg dump`` and applied in one ``wg set``; a peer whose key changed is removed and its
successor added in that same call, the others untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from typing import TYPE_CHECKING

from netweft.backends.base import (
    RTPROT_NETWEFT,
    ActualState,
    Backend,
    BackendError,
    Changes,
    DesiredState,
    DeviceInfo,
    PeerState,
    Route,
    Underlay,
    Watched,
    WgPeer,
    peers_of,
)
from netweft.backends.netlink import Known, LinkInfo, Netlink, NetlinkError, apply_changes
from netweft.backends.wireguard_go import WireGuardGo, socket_answers, socket_path
from netweft.backends.wireguard_keys import (
    is_key,
    key_file_path,
    load_or_create,
    public_key,
    write_key_file,
)
from netweft.backends.wireguard_wg import Wg
from netweft.common import defaults
from netweft.ipam.lease import Lease

if TYPE_CHECKING:
    from netweft.backends.registry import BackendParams

log = logging.getLogger("netweft.wireguard")

DEVICE = "flannel-wg"
OVERHEAD_V4 = 60
OVERHEAD_V6 = 80
DEFAULT_PORT = defaults.WIREGUARD_PORT
DEFAULT_PORT_V6 = 51821
# ``unreachable <Network> metric 4242 proto 78``: the per-peer routes (and the node's own pod
# bridge) are more specific; when the device is gone (wireguard-go died) pod traffic to other
# nodes is refused instead of taking the default route unencrypted.
FAIL_CLOSED_METRIC = 4242


@dataclass(frozen=True)
class WireGuardSettings:
    """Backend options (Flannel's names in ``ipam.config``); ``key_file`` from the environment."""

    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    psk: str | None = field(default=None, repr=False)
    keepalive: int = 0  # seconds, 0 = off
    mode: str = "separate"
    mtu: int | None = None  # None: underlay MTU - overhead(mode)
    key_file: str = field(default_factory=key_file_path)


def overhead(mode: str) -> int:
    """WireGuard's per-packet overhead for the endpoints ``mode`` may use (bytes)."""
    return OVERHEAD_V6 if mode in ("ipv6", "auto") else OVERHEAD_V4


def peer_endpoint(lease: Lease, mode: str, default_port: int) -> str | None:
    """``ip:port`` (``[ip6]:port``) where the peer of ``lease`` listens, None when the lease
    has no address for ``mode``. Port: the lease's BackendData.Port, else ``default_port``.
    ``auto`` prefers IPv4 (Flannel's selectMode does too while we have no IPv6 address)."""
    port = lease.backend_data.get("Port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        port = default_port
    use_v6 = mode == "ipv6" or (mode == "auto" and lease.public_ip is None)
    if use_v6:
        return f"[{lease.public_ipv6}]:{port}" if lease.public_ipv6 is not None else None
    return f"{lease.public_ip}:{port}" if lease.public_ip is not None else None


def desired_wireguard(own: Lease, leases: Iterable[Lease], dev: str,
                      settings: WireGuardSettings) -> DesiredState:
    """Pure: a WireGuard peer and a route per peer lease; leases of another backend or without a
    usable PublicKey carry an error and are skipped."""
    peers = []
    for lease in peers_of(own, leases):
        assert lease.subnet is not None and lease.public_ip is not None
        where = f"peer {lease.subnet} ({lease.public_ip})"
        if lease.backend_type != "wireguard":
            peers.append(PeerState(lease.subnet, lease.public_ip, error=(
                f"{where} uses backend {lease.backend_type!r}, not wireguard: skipped")))
            continue
        key = lease.backend_data.get("PublicKey")
        if not isinstance(key, str) or not is_key(key):
            peers.append(PeerState(lease.subnet, lease.public_ip, error=(
                f"{where} has no valid BackendData.PublicKey: skipped")))
            continue
        endpoint = peer_endpoint(lease, settings.mode, settings.listen_port)
        if endpoint is None:
            peers.append(PeerState(lease.subnet, lease.public_ip, error=(
                f"{where} has no public address for Mode {settings.mode}: skipped")))
            continue
        peers.append(PeerState(
            lease.subnet, lease.public_ip,
            wg=WgPeer(key, endpoint, (str(lease.subnet),), settings.keepalive, settings.psk),
            route=Route(lease.subnet, None, dev),
        ))
    return DesiredState(tuple(peers))


def from_params(params: BackendParams) -> WireGuardBackend:
    """The registry's factory (``Backend.Type`` ``wireguard``); the key file from the env."""
    b = params.config
    settings = WireGuardSettings(listen_port=b.listen_port, listen_port_v6=b.listen_port_v6,
                                 psk=b.psk, keepalive=b.keepalive, mode=b.mode, mtu=b.mtu)
    return WireGuardBackend(params.nl, params.underlay, settings, state_dir=params.state_dir,
                            network=params.network)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class WireGuardBackend(Backend):
    """Flannel's ``wireguard`` backend (module docstring): device ``flannel-wg``, kernel WireGuard
    or ``wireguard-go``, one WireGuard peer and one route per peer lease, an ``unreachable
    <Network>`` route so pod traffic never leaves in clear."""

    type_name = "wireguard"

    def __init__(self, nl: Netlink, underlay: Underlay, settings: WireGuardSettings,
                 state_dir: str | None = None, network: IPv4Network | None = None) -> None:
        self.nl = nl
        self.network = network
        self.underlay = underlay
        self.settings = settings
        self.dev = DEVICE
        self.index: int | None = None
        self.socket_dir = os.path.join(state_dir or defaults.RUN_DIR, "wireguard")
        self.go = WireGuardGo(self.dev, self.socket_dir, netns=nl.netns)
        self.implementation: str | None = None  # "kernel" | "userspace"
        self.wg = Wg(nl.netns)
        self._private_key: str | None = None
        self.public_key: str | None = None

    # --- keys and lease data ------------------------------------------------------------------

    def _ensure_key(self) -> None:
        if self._private_key is None:
            self._private_key = load_or_create(self.settings.key_file)
            self.public_key = public_key(self._private_key)

    @property
    def psk_file(self) -> str | None:
        """Where the configured preshared key is written for ``wg set`` (mode 0600), or None without
        a PSK."""
        return os.path.join(self.socket_dir, "psk") if self.settings.psk else None

    def backend_data(self) -> dict[str, object]:
        """``{"PublicKey": <base64>, "Port": <ListenPort>}`` (Flannel's wireguard BackendData);
        loads or creates the private key first. Raises :class:`BackendError` when the key cannot be
        made."""
        self._ensure_key()
        return {"PublicKey": self.public_key, "Port": self.settings.listen_port}

    def mtu(self) -> int:
        """The pod MTU in bytes: the configured ``MTU``, else the underlay's minus WireGuard's
        overhead (60 for IPv4 endpoints, 80 when they may be IPv6)."""
        return self.settings.mtu or (self.underlay.mtu - overhead(self.settings.mode))

    # --- the device ---------------------------------------------------------------------------

    def _use(self, implementation: str) -> None:
        self.implementation = implementation
        self.wg = Wg(self.nl.netns, self.socket_dir if implementation == "userspace" else None)

    def _existing(self) -> LinkInfo | None:
        """The device if it is one we can use (kernel, our wireguard-go, or a wireguard-go
        whose socket answers under our state dir); anything else of that name is removed."""
        link = self.nl.link(self.dev)
        if link is None:
            return None
        if link.kind == "wireguard":
            self._use("kernel")
            return link
        if self.go.alive() or socket_answers(socket_path(self.socket_dir, self.dev)):
            self._use("userspace")
            return link
        log.warning("%s exists but is no WireGuard device we can configure: recreating it",
                    self.dev)
        self.nl.delete_link(link.index)
        return None

    def _create(self) -> LinkInfo:
        try:
            self.nl.create_wireguard(self.dev, self.mtu())
            self._use("kernel")
            log.info("wireguard: kernel WireGuard device %s", self.dev)
        except NetlinkError as exc:
            first = self.go.starts == 0
            pid = self.go.start()
            self._use("userspace")
            if first:
                log.info("wireguard: the kernel has no WireGuard (%s); userspace wireguard-go "
                         "runs %s (pid %d, socket %s)", exc.args[-1] if exc.args else exc,
                         self.dev, pid, self.go.socket)
            else:
                log.warning("wireguard: wireguard-go had stopped; restarted it (pid %d, "
                            "restart %d)", pid, self.go.restarts)
        link = self.nl.link(self.dev)
        if link is None:
            raise BackendError(f"wireguard: {self.dev} did not appear")
        return link

    def setup(self, lease: Lease) -> DeviceInfo:
        """Create or keep ``flannel-wg`` (kernel device, else wireguard-go) with our key, listen
        port and PSK, address = the subnet's .0/32, up, MTU, and the fail-closed unreachable route;
        returns the device. Raises :class:`BackendError` when the lease has no IPv4 subnet or
        neither implementation works."""
        if lease.subnet is None:
            raise BackendError("wireguard: the lease has no IPv4 subnet")
        self._ensure_key()
        link = self._existing() or self._create()
        self.index = link.index
        if self.settings.psk and self.psk_file and _read(self.psk_file) != self.settings.psk:
            write_key_file(self.psk_file, self.settings.psk)
        iface = self.wg.dump(self.dev).interface
        if iface.public_key != self.public_key or iface.listen_port != self.settings.listen_port:
            self.wg.configure(self.dev, self.settings.key_file, self.settings.listen_port)
        want = IPv4Interface(f"{lease.subnet.network_address}/32")
        self.nl.ensure_device(link, self.mtu(), want)
        if self.network is not None:
            self.nl.ensure_unreachable(self.network, FAIL_CLOSED_METRIC)
        return DeviceInfo(self.dev, link.index, self.mtu(), None, str(want))

    def attach(self) -> None:
        """Find an existing ``flannel-wg`` (and which implementation runs it) without changing
        anything."""
        link = self.nl.link(self.dev)
        if link is not None:
            self.index = link.index
            self._use("kernel" if link.kind == "wireguard" else "userspace")

    def device_present(self) -> bool:
        """Whether our device still exists with the index we set up, is up and, for wireguard-go,
        its process still runs."""
        if self.index is None:
            return False
        if self.implementation == "userspace" and self.go.proc is not None \
                and not self.go.alive():
            return False
        link = self.nl.link(self.dev)
        return link is not None and link.index == self.index and link.up

    # --- peers and routes ---------------------------------------------------------------------

    def desired(self, own: Lease, leases: Iterable[Lease]) -> DesiredState:
        """Pure: a WireGuard peer and a route per valid peer lease (:func:`desired_wireguard`)."""
        return desired_wireguard(own, leases, self.dev, self.settings)

    def actual(self) -> ActualState:
        """Our routes (protocol ``RTPROT_NETWEFT``) and the device's peers (``wg show dump``).
        Raises :class:`BackendError` when ``wg`` fails."""
        known = Known.of_desired(self.expected) if self.expected is not None else None
        routes = frozenset(self.nl.routes(RTPROT_NETWEFT, known))
        if self.index is None:
            return ActualState(routes=routes)
        return ActualState(routes=routes, wg_peers=frozenset(self.wg.dump(self.dev).peers))

    def apply(self, changes: Changes) -> list[str]:
        """Peers first (one ``wg set``), then routes; one line per failure."""
        errors: list[str] = []
        if changes.add_wg_peers or changes.del_wg_peers:
            try:
                self.wg.apply(self.dev, changes.add_wg_peers, changes.del_wg_peers,
                              self.psk_file)
            except BackendError as exc:
                errors.append(str(exc))
        return errors + apply_changes(self.nl, changes)

    def watched(self) -> Watched:
        """The device (no neighbour entries) and the public interface."""
        return Watched(self.dev, self.index, None, self.underlay.index)

    def status(self) -> dict[str, object]:
        """``implementation`` (kernel/userspace), ``publicKey``, ``listenPort``; for wireguard-go
        also its pid, socket and restart count."""
        out: dict[str, object] = {"implementation": self.implementation,
                                  "publicKey": self.public_key,
                                  "listenPort": self.settings.listen_port}
        if self.implementation == "userspace":
            out.update(program="wireguard-go", pid=self.go.pid, socket=self.go.socket,
                       restarts=self.go.restarts)
        return out

    def close(self) -> None:
        """The daemon stops: a wireguard-go we started stops too (its device goes with it;
        the key stays, so the next start gives peers the same device)."""
        self.go.stop()

    def teardown(self) -> None:
        """Remove our routes, stop wireguard-go, delete the device and the unreachable route."""
        apply_changes(self.nl, Changes(del_routes=tuple(self.nl.routes(RTPROT_NETWEFT))))
        if self.go.proc is not None:
            self.go.stop()
        index = self.nl.link_index(self.dev)
        if index is not None:
            self.nl.delete_link(index)
        if self.network is not None:
            self.nl.remove_unreachable(self.network, FAIL_CLOSED_METRIC)
        self.index = None
