"""Processes the lab starts inside its namespaces, tracked by PID files.

A PID file holds ``<pid> <start time>`` (field 22 of ``/proc/<pid>/stat``), so a recycled PID
is never mistaken for ours: :func:`stop` signals a process only if both still match.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from netweft.common.atomicfile import write_atomic


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int

    def render(self) -> str:
        return f"{self.pid} {self.start_time}\n"

    @classmethod
    def parse(cls, text: str) -> ProcessRecord | None:
        parts = text.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        return cls(int(parts[0]), int(parts[1]))


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = stat.rpartition(")")[2].split()
    return int(fields[19])  # field 22 overall


def started_at(record: ProcessRecord) -> float:
    """Wall-clock start time (seconds since the epoch) of ``record``'s process: its start time
    in clock ticks after the boot time (``btime`` in /proc/stat)."""
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + record.start_time / os.sysconf("SC_CLK_TCK")


def is_running(record: ProcessRecord) -> bool:
    if start_time(record.pid) != record.start_time:
        return False
    try:
        with open(f"/proc/{record.pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_pidfile(path: str) -> ProcessRecord | None:
    try:
        with open(path) as f:
            return ProcessRecord.parse(f.read())
    except OSError:
        return None


def write_pidfile(path: str, record: ProcessRecord) -> None:
    write_atomic(path, record.render())


def start(netns: str, cmd: Sequence[str], pidfile: str, log_path: str,
          env: dict[str, str] | None = None) -> ProcessRecord:
    """Start ``cmd`` inside ``netns`` (``ip netns exec`` execs it: same PID), detached in its own
    session, output appended to ``log_path``; records it in ``pidfile``."""
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *cmd], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    started = start_time(proc.pid)
    record = ProcessRecord(proc.pid, started if started is not None else 0)
    write_pidfile(pidfile, record)
    # Popen objects are dropped: lab processes outlive the command that starts them. Reap the
    # child if this process lives on (tests), so a killed daemon does not linger as a zombie.
    _children[proc.pid] = proc
    return record


_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=0)
        except subprocess.TimeoutExpired:
            _children[pid] = proc


def signal_process(record: ProcessRecord, sig: int) -> bool:
    if not is_running(record):
        return False
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        return False
    return True


KILL_WAIT = 30.0  # seconds to wait for a SIGKILLed process to be gone


def wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_running(record):
            return True
        time.sleep(0.02)
    return False


def stop(pidfile: str, timeout: float = 5.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the process recorded in ``pidfile`` (``sig``, then SIGKILL after ``timeout``) and
    remove the file. Returns True if a live process was signalled."""
    record = read_pidfile(pidfile)
    signalled = False
    if record is not None and signal_process(record, sig):
        signalled = True
        if not wait_gone(record, timeout):
            signal_process(record, signal.SIGKILL)
            # SIGKILL always ends it, but tearing down a large process (kube-apiserver, etcd)
            # took more than 5 s under load once, and `lab down` returned with it still alive
            wait_gone(record, KILL_WAIT)
    if record is not None:
        _reap(record.pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    return signalled


def pids_in_netns(netns: str) -> list[int]:
    """PIDs of processes whose network namespace is the named one (used by ``lab down`` to
    find anything left behind after a crash lost a PID file)."""
    try:
        target = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry))
    return found


def kill_netns_processes(netns: str, timeout: float = 3.0) -> int:
    """SIGTERM then SIGKILL every process living in namespace ``netns``; returns how many."""
    pids = pids_in_netns(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pids_in_netns(netns):
        for pid in list(_children):
            _reap(pid)
        time.sleep(0.05)
    for pid in pids_in_netns(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
