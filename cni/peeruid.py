"""Who is on the other end of a loopback TCP connection: the uid that owns the peer's socket,
from the kernel's socket table (sock_diag netlink, an exact lookup of one 4-tuple, as ``ss -e``
shows it). For a unix socket SO_PEERCRED gives this; TCP has no such option.

The owner is the effective uid of the process that created the socket, set by the kernel:
a non-root process cannot make a socket that reports uid 0.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport (network order), src, dst
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_SOCKID_LEN = _SOCKID.size + _SOCKID_TAIL.size


def tcp_peer_uid(conn: socket.socket) -> int | None:
    """The uid owning the peer socket of IPv4 TCP connection ``conn`` (both ends on this
    host, in this network namespace), or None when the kernel does not know it."""
    peer = tcp_peer(conn)
    return None if peer is None else peer[0]


def tcp_peer(conn: socket.socket) -> tuple[int, int] | None:
    """``(uid, inode)`` of the peer socket of loopback TCP connection ``conn``, or None when
    the kernel does not know it. The inode names the socket in ``/proc/<pid>/fd``."""
    local_ip, local_port = conn.getsockname()[:2]
    peer_ip, peer_port = conn.getpeername()[:2]
    # the peer's socket: its source is the peer address, its destination is us
    sockid = _SOCKID.pack(peer_port, local_port, socket.inet_aton(peer_ip).ljust(16, b"\0"),
                          socket.inet_aton(local_ip).ljust(16, b"\0"))
    sockid += _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = _REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    seq = 1
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq,
                         0) + body
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG)
    try:
        nl.settimeout(2.0)
        nl.sendto(msg, (0, 0))
        data = nl.recv(65536)
    except OSError:
        return None
    finally:
        nl.close()
    if len(data) < _NLMSGHDR.size:
        return None
    length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data)
    if kind != SOCK_DIAG_BY_FAMILY or got_seq != seq:
        return None  # NLMSG_ERROR: no such socket (or no inet_diag in this kernel)
    offset = _NLMSGHDR.size + _MSG_HEAD.size + _SOCKID_LEN
    if length < offset + _MSG_TAIL.size:
        return None
    uid, inode = _MSG_TAIL.unpack_from(data, offset)[3:5]
    return int(uid), int(inode)
