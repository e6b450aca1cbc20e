"""Reading and writing a WireGuard device through the ``wg`` tool (wireguard-tools).

``wg`` speaks to the kernel's device over generic netlink and to a userspace implementation
(wireguard-go) over its UAPI socket, which it looks for at the compiled-in ``/run/wireguard/
<dev>.sock``. netweft keeps that socket under the daemon's state directory instead (several lab
nodes share one filesystem, and each has a ``flannel-wg``): every userspace command runs in a
private mount namespace where ``<state dir>/wireguard`` is bind-mounted on ``/run/wireguard``.

Pure parts: :func:`parse_dump` (``wg show <dev> dump``) and :func:`set_args` (one ``wg set``
for a whole batch of peer changes). :class:`Wg` runs the commands. The dump's first line holds
the private key: it is dropped while parsing, and no output of ``wg`` is ever logged.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netweft.backends.base import BackendError, WgPeer

# The shell snippet that makes the private mount namespace's /run/wireguard the socket dir.
_BIND = 'mkdir -p /run/wireguard && mount --bind "$1" /run/wireguard && shift && exec "$@"'


def socket_dir_prefix(socket_dir: str) -> list[str]:
    """The command prefix that runs a program with ``socket_dir`` as its ``/run/wireguard``
    (a private mount namespace; nothing changes for any other process)."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _BIND, "sh", socket_dir]


@dataclass(frozen=True)
class WgInterface:
    """The device line of a dump (its private key left out)."""

    public_key: str | None
    listen_port: int
    fwmark: str = "off"


@dataclass(frozen=True)
class WgDump:
    """``wg show <dev> dump``: the device and its peers, plus per-peer last handshake (unix s,
    0 = never) and rx/tx byte counters for status output."""

    interface: WgInterface
    peers: tuple[WgPeer, ...]
    handshakes: dict[str, int]
    transfer: dict[str, tuple[int, int]]


def _none(value: str) -> str | None:
    return None if value in ("(none)", "") else value


def parse_dump(text: str) -> WgDump:
    """Parse ``wg show <dev> dump`` (tab-separated; first line private-key, public-key,
    listen-port, fwmark; then per peer public-key, preshared-key, endpoint, allowed-ips,
    latest-handshake, transfer-rx, transfer-tx, persistent-keepalive). Raises ValueError on a
    malformed line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty dump")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ValueError(f"device line has {len(head)} fields, not 4")
    iface = WgInterface(public_key=_none(head[1]), listen_port=int(head[2]), fwmark=head[3])
    peers = []
    handshakes: dict[str, int] = {}
    transfer: dict[str, tuple[int, int]] = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise ValueError(f"peer line has {len(f)} fields, not 8")
        allowed = tuple(sorted(a for a in (f[3].split(",") if _none(f[3]) else []) if a))
        keepalive = 0 if f[7] == "off" else int(f[7])
        peers.append(WgPeer(public_key=f[0], endpoint=_none(f[2]) or "", allowed_ips=allowed,
                            keepalive=keepalive, psk=_none(f[1])))
        handshakes[f[0]] = int(f[4])
        transfer[f[0]] = (int(f[5]), int(f[6]))
    return WgDump(iface, tuple(sorted(peers)), handshakes, transfer)


def set_args(dev: str, add: Sequence[WgPeer], remove: Sequence[WgPeer],
             psk_file: str | None) -> list[str]:
    """The arguments of one ``wg set`` applying a batch: removals first (so a peer whose key
    changed hands its allowed IPs to the new key in the same call), then additions, each
    written whole (``allowed-ips`` replaces the list). A peer with a PSK reads it from
    ``psk_file``; one without gets ``/dev/null`` (clears it). Empty when there is nothing.
    Raises :class:`BackendError` when a peer needs the PSK and ``psk_file`` is None."""
    args: list[str] = []
    for peer in remove:
        args += ["peer", peer.public_key, "remove"]
    for peer in add:
        if peer.psk and not psk_file:
            raise BackendError("wireguard: a peer needs the PSK but no PSK file was written")
        args += ["peer", peer.public_key,
                 "preshared-key", psk_file if peer.psk and psk_file else "/dev/null",
                 "endpoint", peer.endpoint,
                 "persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off",
                 "allowed-ips", ",".join(peer.allowed_ips)]
    return ["set", dev, *args] if args else []


class Wg:
    """Runs ``wg`` for one device: in network namespace ``netns`` (None: the current one) and,
    for a userspace device, with ``socket_dir`` as ``/run/wireguard``."""

    def __init__(self, netns: str | None = None, socket_dir: str | None = None) -> None:
        self.netns = netns
        self.socket_dir = socket_dir

    def command(self, args: Sequence[str]) -> list[str]:
        """The argv for ``wg <args>``: in ``netns`` when set, with wireguard-go's socket directory
        as ``/run/wireguard`` when set."""
        cmd: list[str] = []
        if self.netns:
            cmd += ["nsenter", f"--net=/run/netns/{self.netns}"]
        if self.socket_dir:
            cmd += socket_dir_prefix(self.socket_dir)
        return [*cmd, "wg", *args]

    def run(self, args: Sequence[str]) -> str:
        """Run ``wg args``; BackendError with wg's first error line (never its output)."""
        try:
            proc = subprocess.run(self.command(args), capture_output=True, text=True,
                                  timeout=30)
        except FileNotFoundError as exc:
            raise BackendError(f"wireguard: {exc.filename} is missing (deploy/setup.sh installs "
                               "wireguard-tools)") from None
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise BackendError(f"wireguard: wg {' '.join(args[:2])}: {err}")
        return proc.stdout

    def dump(self, dev: str) -> WgDump:
        """The device's interface and peers as ``wg show <dev> dump`` reports them. Raises
        :class:`BackendError` when ``wg`` fails or its output cannot be read."""
        text = self.run(["show", dev, "dump"])
        try:
            return parse_dump(text)
        except ValueError as exc:
            raise BackendError(f"wireguard: cannot read `wg show {dev} dump`: {exc}") from None

    def configure(self, dev: str, key_file: str, listen_port: int) -> None:
        """Set the device's private key (read by wg from ``key_file``) and listen port."""
        self.run(["set", dev, "private-key", key_file, "listen-port", str(listen_port)])

    def apply(self, dev: str, add: Sequence[WgPeer], remove: Sequence[WgPeer],
              psk_file: str | None) -> None:
        """Remove the ``remove`` peers and add/replace the ``add`` peers in one ``wg set`` (nothing
        when both are empty); the PSK comes from ``psk_file``. Raises :class:`BackendError` when
        ``wg`` fails."""
        args = set_args(dev, add, remove, psk_file)
        if args:
            self.run(args)
