"""Paths as the *caller* of the CNI server sees them.

A runtime names the pod's namespace by a path (``CNI_NETNS``, typically a bind mount under
``/run/netns``) that is only meaningful in the runtime's own mount namespace. The CNI server may
live in another one (the daemon in a DaemonSet container, a runtime with a private mount
namespace): there the path is missing, or is the empty placeholder file the bind mount sits on.
So the server opens it as ``/proc/<caller pid>/root/<path>``, which the kernel resolves in the
caller's root and mount namespace (proc(5), ``/proc/pid/root``).

The caller's pid: on the unix socket from SO_PEERCRED (set by the kernel, translated into the
server's pid namespace, 0 when the caller is not visible there); on the loopback TCP path the
launcher sends its pid (``NETWEFT_CALLER_PID``) and the server accepts it only if that process
holds the peer socket (its inode from sock_diag among the pid's open files), since a header
value alone proves nothing. When no pid is known, the path is opened as given (the old
behaviour: right whenever server and runtime share the mount namespace).
"""

from __future__ import annotations

import os

CALLER_PID_KEY = "NETWEFT_CALLER_PID"


def caller_path(path: str, pid: int | None) -> str:
    """``path`` (absolute) as seen by process ``pid``: ``/proc/<pid>/root<path>``; ``path``
    itself when ``pid`` is None or 0, or the path is not absolute."""
    if not pid or not path.startswith("/"):
        return path
    return f"/proc/{int(pid)}/root{path}"


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
