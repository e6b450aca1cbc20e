"""Enter a network namespace for the calling thread only (``setns(2)`` through ctypes).

Network namespaces are per thread, so a server thread can step into a pod's namespace, open a
netlink socket (which stays bound to that namespace) or write a sysctl, and step back, while other
threads keep working in the node's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Iterator

from netweft.cni import callerns

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h: the CLONE_NEW* type of an nsfs file
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsGone(OSError):
    """The namespace path does not exist (any more) or is not a network namespace."""


class NotNetns(NetnsGone):
    """The path exists but is no network namespace: a plain file (e.g. the empty placeholder
    under ``/run/netns`` whose bind mount lives in another mount namespace), or another kind
    of namespace. ``strerror`` says which."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str, caller_pid: int = 0) -> int:
    """An O_RDONLY fd of the network namespace file ``path``; with ``caller_pid``, ``path``
    as that process sees it (its mount namespace, :mod:`cni.callerns`).

    Raises :class:`NetnsGone` when it is missing, :class:`NotNetns` when the file is not an
    nsfs file of a network namespace (checked with the ``NS_GET_NSTYPE`` ioctl, so nothing
    that is not a namespace ever reaches ``setns`` or ``IFLA_NET_NS_FD``, where the kernel
    answers a bare EINVAL)."""
    try:
        if caller_pid:
            fd = callerns.open_in_root(caller_pid, path)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NetnsGone(errno.ENOENT, f"network namespace {path} does not exist") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        what = "not an nsfs file"
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                what = f"a plain file of {st.st_size} bytes"
        os.close(fd)
        raise NotNetns(errno.EINVAL, f"{path} is not a network namespace ({what}: is its bind "
                       "mount in another mount namespace?)") from None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NotNetns(errno.EINVAL, f"{path} is a namespace of another type "
                       f"(0x{kind:x}), not a network namespace")
    return fd


def current_netns() -> int:
    """A new O_CLOEXEC descriptor of the calling thread's network namespace
    (``/proc/thread-self/ns/net``), to return to with ``setns``; the caller closes it. Raises
    OSError."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Run the block with this thread inside ``netns_fd``; always come back. Raises
    :class:`NetnsGone` when ``netns_fd`` is not a network namespace, OSError from ``setns``."""
    home = current_netns()
    try:
        try:
            _setns(netns_fd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise NetnsGone(errno.EINVAL, "not a network namespace") from None
            raise
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
