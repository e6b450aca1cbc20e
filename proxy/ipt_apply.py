"""Applying iptables-restore text (``--noflush``: only the chains named in it are touched), and
keeping the built-in chains' jumps into ours."""

from __future__ import annotations

import subprocess

from netweft.backends.nft.applier import netns_prefix
from netweft.proxy.iptables import JUMPS, TABLES, ChainId, P


class IptablesError(RuntimeError):
    """iptables-restore refused the input (a table's COMMIT is atomic)."""


class IptablesApplier:
    def __init__(self, netns: str | None = None, binary: str = "iptables") -> None:
        self.netns = netns
        self.binary = binary

    def _run(self, args: list[str], text: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*netns_prefix(self.netns), *args], input=text,
                              capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            line = (proc.stderr.strip().splitlines() or ["failed"])[0]
            raise IptablesError(f"{args[0]}: {line}")
        return proc

    def restore(self, text: str) -> None:
        if text:
            self._run([f"{self.binary}-restore", "-w", "--noflush"], text)

    def existing_chains(self) -> set[ChainId]:
        found: set[ChainId] = set()
        for table in TABLES:
            out = self._run([f"{self.binary}-save", "-t", table], check=False).stdout
            found.update((table, ln[1:].split()[0]) for ln in out.splitlines()
                         if ln.startswith(":" + P))
        return found

    def ensure_jumps(self) -> None:
        for table, builtin, rule in JUMPS:
            probe = self._run([self.binary, "-w", "-t", table, "-C", builtin, *rule], check=False)
            if probe.returncode != 0:
                self._run([self.binary, "-w", "-t", table, "-I", builtin, "1", *rule])

    def remove_all(self) -> None:
        """Remove the jumps and every NETWEFT chain (``netweft proxy --cleanup``)."""
        for table, builtin, rule in JUMPS:
            while self._run([self.binary, "-w", "-t", table, "-D", builtin, *rule],
                            check=False).returncode == 0:
                pass
        existing = self.existing_chains()
        lines: list[str] = []
        for table in TABLES:
            chains = sorted(c for t, c in existing if t == table)
            if chains:
                lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains),
                          *(f"-X {c}" for c in chains), "COMMIT"]
        if lines:
            self.restore("\n".join(lines) + "\n")
