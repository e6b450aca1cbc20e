"""Read kernel state inside a test's own namespace (``ip -n``, ``bridge -n``) as text."""

from __future__ import annotations

import subprocess


def ip(ns: str, *args: str) -> str:
    """``ip -n ns ARGS`` stdout; empty text when the command fails (e.g. the device is gone)."""
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True).stdout


def ip_out(ns: str, *args: str) -> str:
    """``ip -n ns ARGS`` stdout; raises ``subprocess.CalledProcessError`` when it fails."""
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True).stdout


def fdb(ns: str, dev: str = "flannel.1") -> str:
    """The forwarding database of ``dev`` (``bridge fdb show dev``) in ``ns``."""
    return subprocess.run(["bridge", "-n", ns, "fdb", "show", "dev", dev], capture_output=True,
                          text=True).stdout
