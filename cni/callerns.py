"""Paths as the *caller* of the CNI server sees them.

A runtime names the pod's namespace by a path (``CNI_NETNS``, typically a bind mount under
``/run/netns``) that is only meaningful in the runtime's own mount namespace. The CNI server may
live in another one (the daemon in a DaemonSet container, a runtime with a private mount
namespace): there the path is missing, or is the empty placeholder file the bind mount sits on.
So the server opens it relative to ``/proc/<caller pid>/root`` (the caller's root directory
in its mount namespace, proc(5)) with ``openat2(RESOLVE_IN_ROOT)``, so that absolute symlinks on
the way (``/var/run -> /run``, as in containerd's ``/var/run/netns/cni-...``) stay in the caller's
root too: a plain ``open("/proc/<pid>/root/var/run/...")`` would follow ``/run`` back into the
server's own mount namespace.

The caller's pid: on the unix socket from SO_PEERCRED (set by the kernel, translated into the
server's pid namespace, 0 when the caller is not visible there); on the loopback TCP path the
launcher sends its pid (``NETWEFT_CALLER_PID``) and the server accepts it only if that process
holds the peer socket (its inode from sock_diag among the pid's open files), since a header
value alone proves nothing. When no pid is known, the path is opened as given (the old
behaviour: right whenever server and runtime share the mount namespace).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

CALLER_PID_KEY = "NETWEFT_CALLER_PID"
SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic, Linux >= 5.6)
RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)


def open_in_root(pid: int, path: str, flags: int = os.O_RDONLY | os.O_CLOEXEC) -> int:
    """An fd of ``path`` as process ``pid`` sees it (its root and mount namespace; symlinks
    resolved inside that root). Raises OSError (FileNotFoundError when it is missing there).
    Without openat2 (Linux < 5.6), or for a path through a magic link such as
    ``/proc/<n>/ns/net``, it opens ``/proc/<pid>/root<path>`` instead."""
    root = os.open(f"/proc/{int(pid)}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = struct.pack("=QQQ", flags, 0, RESOLVE_IN_ROOT)
        fd = _libc.syscall(SYS_OPENAT2, root, path.encode(), how, len(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EXDEV, errno.ELOOP):
            raise OSError(err, os.strerror(err), path)
        # no openat2, or a magic link on the way (``/proc/<pid>/ns/net``, which
        # RESOLVE_IN_ROOT refuses): the caller's /proc, through its root
        return os.open(f"/proc/{int(pid)}/root{path}", flags)
    finally:
        os.close(root)


def pid_holds_socket(pid: int, inode: int) -> bool:
    """Does process ``pid`` have socket ``inode`` open (``/proc/<pid>/fd/* -> socket:[N]``)?
    False when the pid does not exist or is not ours to look at."""
    if pid <= 0 or inode <= 0:
        return False
    want = f"socket:[{inode}]"
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") == want:
                return True
        except OSError:
            continue
    return False


def parse_pid(text: str | None) -> int | None:
    """A positive decimal pid, or None."""
    if text and text.isdigit() and 0 < int(text) < 1 << 22:
        return int(text)
    return None
