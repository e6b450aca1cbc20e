"""The netlink watcher: a thread that calls ``poke()`` as soon as the kernel reports a change
to something netweft keeps (rtnetlink multicast notices, ``rtnetlink(7)``).

Followed: our device deleted, changed (MAC, MTU, state) or its addresses changed; the public
interface deleted, changed or its addresses changed; a neighbour or FDB entry on our device
deleted; a route carrying our protocol (``proto 78``) deleted. Everything else is ignored.

Every notice is handled when it arrives: after each wake-up the socket is drained (non-blocking
reads until it is empty) and all messages are looked at. (The previous pyroute2-based loop took
one message per wake-up: a deletion that arrived behind another notice waited for the next
unrelated event, 3-8 s in the lab.) A receive-buffer overrun (ENOBUFS: notices were lost) also
pokes, so the full pass re-reads the kernel. The messages are decoded here with ``struct``
(fixed headers from ``linux/rtnetlink.h``): only a few header fields and one attribute are needed,
and decoding whole messages with pyroute2 costs ~0.2 ms each.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from netweft.backends.base import RTPROT_NETWEFT, Watched

log = logging.getLogger("netweft.agent")

# linux/rtnetlink.h message types and multicast groups (RTMGRP_* bit masks).
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
IFLA_IFNAME = 3
NLMSG_HDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")      # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")       # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")       # family, dst_len, src_len, tos, table, protocol, ...
NDMSG = struct.Struct("=BxxxiHBB")        # family, ifindex, state, flags, type
RTA_HDR = struct.Struct("=HH")            # len, type
RCVBUF = 4 * 1024 * 1024
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Notice:
    """One rtnetlink notice: its type, the interface index it concerns (link, address,
    neighbour), the link name (links only) and the route protocol (routes only)."""

    type: int
    index: int | None = None
    name: str | None = None
    proto: int | None = None


def messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, body offset, end offset) of each netlink message in one datagram (several may
    share it). Pure; truncated input ends the iteration."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        yield kind, offset + NLMSG_HDR.size, offset + length
        offset += (length + 3) & ~3


def attributes(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute between ``offset`` and ``end``. Pure."""
    while offset + RTA_HDR.size <= end:
        length, kind = RTA_HDR.unpack_from(data, offset)
        if length < RTA_HDR.size:
            return
        yield kind & 0x3FFF, data[offset + RTA_HDR.size:offset + length]
        offset += (length + 3) & ~3


def parse(data: bytes) -> list[Notice]:
    """The rtnetlink notices in one datagram; other message types are skipped. Pure; never
    raises on truncated input (the rest is dropped)."""
    out: list[Notice] = []
    for kind, body, end in messages(data):
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + IFINFOMSG.size <= end:
            index = IFINFOMSG.unpack_from(data, body)[2]
            name = next((v.rstrip(b"\0").decode(errors="replace")
                         for t, v in attributes(data, body + IFINFOMSG.size, end)
                         if t == IFLA_IFNAME), None)
            out.append(Notice(kind, index=index, name=name))
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and body + IFADDRMSG.size <= end:
            out.append(Notice(kind, index=IFADDRMSG.unpack_from(data, body)[4]))
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and body + RTMSG.size <= end:
            out.append(Notice(kind, proto=RTMSG.unpack_from(data, body)[5]))
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and body + NDMSG.size <= end:
            out.append(Notice(kind, index=NDMSG.unpack_from(data, body)[1]))
    return out


def relevant(notice: Notice, w: Watched) -> bool:
    """Pure: does ``notice`` concern what the backend keeps (``w``)?"""
    ours = {i for i in (w.device_index, w.underlay_index) if i is not None}
    if notice.type == RTM_DELLINK:
        return notice.name == w.device or notice.index in ours
    if notice.type in (RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR):
        return notice.index in ours
    if notice.type == RTM_DELNEIGH:
        return w.neighbour_index is not None and notice.index == w.neighbour_index
    if notice.type == RTM_DELROUTE:
        return notice.proto == RTPROT_NETWEFT
    return False


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``/run/netns/<name>``).
    Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def multicast_socket(protocol: int, groups: int, netns: str | None = None) -> socket.socket:
    """A non-blocking netlink socket of ``protocol`` joined to the ``groups`` bit mask (in
    ``netns`` when given: call from a thread of its own). Raises OSError."""
    if netns:
        enter_netns(netns)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_socket(netns: str | None = None) -> socket.socket:
    """The rtnetlink socket for the link, neighbour, IPv4 address and IPv4 route groups."""
    return multicast_socket(socket.NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_NEIGH
                            | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE, netns)


def drain(sock: socket.socket) -> tuple[list[bytes], bool]:
    """Every datagram queued on the non-blocking ``sock`` now: (datagrams, overrun).
    ``overrun`` is True when the kernel dropped notices (ENOBUFS). Raises other OSErrors."""
    datagrams: list[bytes] = []
    overrun = False
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return datagrams, overrun
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            overrun = True
            continue
        if not data:
            return datagrams, overrun
        datagrams.append(data)


class SocketWatcher:
    """A thread reading a netlink multicast socket: at every wake-up it drains the socket and
    calls ``poke()`` (from its thread) when ``wants(datagrams)`` is true or notices were lost.
    ``open_socket()`` runs in that thread (so it may enter a namespace) and returns a
    non-blocking socket; OSError there is logged and the thread ends (periodic passes remain).
    """

    def __init__(self, name: str, open_socket: Callable[[], socket.socket],
                 wants: Callable[[list[bytes]], bool], poke: Callable[[], None]) -> None:
        self.name = name
        self.open_socket = open_socket
        self.wants = wants
        self.poke = poke
        self._stop = threading.Event()
        # stop() wakes the thread's select() through this pair at once (a select timeout
        # instead cost up to half a second of every daemon stop, i.e. of a restart)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end (returns at once; :meth:`stop` waits for it)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """End the thread and wait for it (at most 3 s)."""
        self.request_stop()
        self._thread.join(timeout=3)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def _run(self) -> None:
        try:
            sock = self.open_socket()
        except OSError as exc:
            log.warning("%s listener not started: %s", self.name, exc)
            return
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock, self._wake_r], [], [])
                if sock not in ready:
                    continue
                datagrams, overrun = drain(sock)
                if overrun or self.wants(datagrams):
                    self.poke()
        except Exception as exc:  # noqa: BLE001 - the periodic pass still covers us
            log.warning("%s listener stopped: %s", self.name, exc)
        finally:
            sock.close()


class NetlinkWatcher(SocketWatcher):
    """Pokes when a rtnetlink notice concerns what the backend keeps; ``watched()`` is read at
    every wake-up (it changes when the device is recreated)."""

    def __init__(self, netns: str | None, watched: Callable[[], Watched],
                 poke: Callable[[], None]) -> None:
        def wants(datagrams: list[bytes]) -> bool:
            w = watched()
            return any(relevant(n, w) for data in datagrams for n in parse(data))

        super().__init__("netlink-events", lambda: open_socket(netns), wants, poke)
