"""Network namespace helpers built on iproute2 (``ip netns``): create, run in, delete."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

NETNS_DIR = "/run/netns"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def add(name: str) -> str:
    """Create namespace ``name`` with its loopback up; returns its path."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    run(name, ["ip", "link", "set", "lo", "up"])
    return netns_path(name)


def delete(name: str) -> None:
    """Delete namespace ``name`` if it exists (links inside it go with it)."""
    if exists(name):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def run(
    name: str, cmd: Sequence[str], *, check: bool = True, input: bytes | str | None = None,
    env: dict[str, str] | None = None, timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside namespace ``name`` and return its completed process (text mode)."""
    if isinstance(input, bytes):
        input = input.decode()
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd], check=check, capture_output=True, text=True,
        input=input, env=env, timeout=timeout,
    )


def list_names(prefix: str = "") -> list[str]:
    if not os.path.isdir(NETNS_DIR):
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
