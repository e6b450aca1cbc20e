"""Noticing, at once, when someone else changes the proxy's nftables table (issue 9, item 9).

``nft monitor`` prints every committed change of the namespace's ruleset, one line per object
(``delete table ip netweft-proxy``, ``delete rule ip netweft-proxy services handle 4``, ``add
element ...``), and after each transaction ``# new generation <n> by process <pid> (<comm>)``.
The proxy's own transactions come from its own process (libnftables) or from ``nft`` children it
started (``NftApplier.own_pids``); any other process whose transaction touched the table -- an
``nft flush ruleset``, ``nft delete table ip netweft-proxy``, a deleted element or rule -- makes
the proxy reload the whole table (which keeps affinity clients, see ``proxy/affinity.py``).

Cost: nft decodes every event, also the proxy's own; a full load of 10,000 services is about
43,000 lines (1.4 s of nft CPU measured on a loaded 2-vCPU machine), deltas a few lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The kernel's fixed inode of the initial pid namespace (PROC_PID_INIT_INO): nft monitor names
# committing processes by their pid there, so only a proxy running in it can tell its own.
INITIAL_PID_NAMESPACE = "pid:[4026531836]"


def in_initial_pid_namespace() -> bool:
    """Whether this process's pids are the ones ``nft monitor`` reports (host pid namespace)."""
    try:
        return os.readlink("/proc/self/ns/pid") == INITIAL_PID_NAMESPACE
    except OSError:
        return False

_GENERATION = re.compile(r"^# new generation \d+ by process (\d+)")


@dataclass
class MonitorParser:
    """Reads ``nft monitor`` lines; ``feed`` returns the committing process's pid when a
    transaction that touched ``table`` (e.g. ``ip netweft-proxy``) ends, else None. Pure."""
    table: str
    touched: bool = False

    def feed(self, line: str) -> int | None:
        m = _GENERATION.match(line)
        if m is not None:
            touched, self.touched = self.touched, False
            return int(m.group(1)) if touched else None
        words = line.split(maxsplit=4)          # <verb> <object> <family> <table> ...
        if len(words) >= 4 and f"{words[2]} {words[3]}" == self.table:
            self.touched = True
        return None


class TableMonitor:
    """Runs ``nft monitor`` (inside ``command_prefix``, e.g. ``ip netns exec NS``) and calls
    ``on_foreign_change()`` for each transaction on ``table`` made by a process for which
    ``is_own(pid)`` is false, and when the monitor had to be restarted (events may be lost).
    ``run`` returns only when cancelled."""

    def __init__(self, table: str, is_own: Callable[[int], bool],
                 on_foreign_change: Callable[[], None],
                 command_prefix: Sequence[str] = (), restart_delay: float = 1.0) -> None:
        self.table = table
        self.is_own = is_own
        self.on_foreign_change = on_foreign_change
        self.command = [*command_prefix, "nft", "monitor"]
        self.restart_delay = restart_delay
        self.started = asyncio.Event()      # the first monitor process is running (tests)

    async def run(self) -> None:
        delay = self.restart_delay
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self._run_once()
            except FileNotFoundError:
                log.error("nft is not installed: foreign changes of %s are only healed by the "
                          "periodic full resync", self.table)
                return
            except OSError as exc:
                log.warning("nft monitor could not run (%s)", exc)
            if asyncio.get_running_loop().time() - started > 60:
                delay = self.restart_delay       # it ran for a while: not a crash loop
            log.warning("nft monitor stopped: restarting in %.0f s, then a full resync", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            self.on_foreign_change()             # what happened meanwhile is unknown

    async def _run_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        parser = MonitorParser(self.table)
        errors = asyncio.create_task(self._errors(proc.stderr))
        self.started.set()
        try:
            while line := await proc.stdout.readline():
                pid = parser.feed(line.decode(errors="replace"))
                if pid is not None and not self.is_own(pid):
                    log.warning("table %s changed by process %d: restoring it", self.table, pid)
                    self.on_foreign_change()
        finally:
            errors.cancel()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def _errors(self, stream: asyncio.StreamReader) -> None:
        """nft prints lost events (a full netlink buffer) on stderr: resync then."""
        while line := await stream.readline():
            log.warning("nft monitor: %s", line.decode(errors="replace").strip())
            self.on_foreign_change()
