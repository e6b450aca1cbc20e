"""Execute a CNI plugin binary the way a container runtime does (libcni's exec, CNI spec
section "Execution protocol"): ``CNI_*`` environment, the network config on stdin, the result on
stdout; optionally inside a node's network namespace through ``ip netns exec``. The one plugin
executor of netweft: the lab's runtime (daemon/lab/runtime.py), tests and benchmarks use it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PluginCall:
    """One plugin invocation as a runtime makes it (CNI spec 1.1, Section 2 "Execution Protocol"):
    the executable, ``CNI_COMMAND``, the config for stdin, and the ``CNI_*`` parameters;
    ``node_netns`` runs it in that named network namespace."""

    plugin: str  # path of the executable
    command: str
    config: dict[str, Any] | str | bytes
    container_id: str = ""
    netns: str = ""
    ifname: str = "eth0"
    args: dict[str, str] = field(default_factory=dict)
    cni_path: str = "/opt/cni/bin"
    node_netns: str = ""  # run inside `ip netns exec <node_netns>`
    extra_env: dict[str, str] = field(default_factory=dict)  # applied last
    # the environment passed through (a runtime's own, without CNI_*); None: only a fixed PATH
    base_env: dict[str, str] | None = None

    def env(self) -> dict[str, str]:
        """The environment: ``CNI_COMMAND``, ``CNI_PATH``, ``CNI_CONTAINERID``, ``CNI_NETNS``
        (always for ADD/CHECK), ``CNI_IFNAME``, ``CNI_ARGS`` (``k=v;k=v``), the pass-through
        ``base_env`` (its CNI_* removed; a plain PATH when None) and ``extra_env`` last."""
        if self.base_env is None:
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        else:
            env = {k: v for k, v in self.base_env.items() if not k.startswith("CNI_")}
        env.update({"CNI_COMMAND": self.command, "CNI_PATH": self.cni_path})
        if self.container_id:
            env["CNI_CONTAINERID"] = self.container_id
        if self.netns or self.command in ("ADD", "CHECK"):
            env["CNI_NETNS"] = self.netns
        if self.ifname:
            env["CNI_IFNAME"] = self.ifname
        if self.args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args.items())
        env.update(self.extra_env)
        return env

    def argv(self) -> list[str]:
        """The command line: the plugin, under ``ip netns exec`` when ``node_netns`` is set."""
        if self.node_netns:
            return ["ip", "netns", "exec", self.node_netns, self.plugin]
        return [self.plugin]

    def stdin(self) -> bytes:
        """The config as bytes (a dict is JSON-encoded; text and bytes go as they are)."""
        if isinstance(self.config, bytes):
            return self.config
        if isinstance(self.config, str):
            return self.config.encode()
        return json.dumps(self.config).encode()


@dataclass
class PluginReply:
    """What the plugin did: its exit code, stdout and stderr (text, undecodable bytes replaced)."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout decoded as JSON, or None when it is empty. Raises ValueError when it is not JSON.
        """
        return json.loads(self.stdout) if self.stdout.strip() else None


def invoke(call: PluginCall, timeout: float = 60) -> PluginReply:
    """Run ``call`` and collect its exit code and output (decoded, undecodable bytes replaced).
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds, ``OSError`` when the
    executable cannot be started."""
    proc = subprocess.run(call.argv(), input=call.stdin(), env=call.env(), capture_output=True,
                          timeout=timeout)
    return PluginReply(proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"))
