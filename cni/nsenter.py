"""Enter a network namespace for the calling thread only (``setns(2)`` through ctypes).

Network namespaces are per thread, so a server thread can step into a pod's namespace, open a
netlink socket (which stays bound to that namespace) or write a sysctl, and step back, while other
threads keep working in the node's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsGone(OSError):
    """The namespace path does not exist (any more) or is not a network namespace."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An O_RDONLY fd of the namespace file; :class:`NetnsGone` when it is missing/invalid."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(errno.ENOENT, f"network namespace {path} does not exist") from None


def current_netns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Run the block with this thread inside ``netns_fd``; always come back."""
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
