"""A CNI node harness for tests and benchmarks (test support, not shipped): the plugin
installed into private directories of one node namespace, an optional CNI server for that node,
and calls made exactly as a runtime makes them (``ip netns exec <node> <bin>/netweft`` with
``CNI_*`` and stdin, through netweft.cni.invoke)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from netweft.cni.install import DEFAULT_TCP_TIMEOUT, PY_BIN_NAME, install
from netweft.cni.invoke import PluginCall, PluginReply, invoke
from netweft.cni.tcpwire import DEFAULT_TCP_PORT


@dataclass
class CniNode:
    """A CNI test node: the plugin installed (launcher, conflist) into a private directory, a
    ``subnet.env``, and optionally the CNI server, all for the network namespace ``node_netns``.
    ``mtu`` is bytes."""

    node_netns: str
    root: str  # private directory for bin/conf/data/log/subnet.env/socket
    subnet: str = "10.244.1.1/24"
    network: str = "10.244.0.0/16"
    mtu: int = 1450
    ipmasq: bool = True
    name: str = "netweft"
    options: dict[str, Any] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    tcp_port: int = DEFAULT_TCP_PORT  # the bash launcher's fast path (0: the launcher skips it)
    tcp_timeout: int = DEFAULT_TCP_TIMEOUT  # seconds the bash launcher waits for a reply

    def __post_init__(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.subnet_file = os.path.join(self.root, "subnet.env")
        self.data_dir = os.path.join(self.root, "data")
        self.socket_path = os.path.join(self.root, "cni.sock")
        self.log_file = os.path.join(self.root, "cni.log")
        self.bin_dir = os.path.join(self.root, "bin")
        self.conf_dir = os.path.join(self.root, "conf")
        self.write_subnet_env()
        done = install(self.bin_dir, self.conf_dir, name=self.name, subnet_file=self.subnet_file,
                       data_dir=self.data_dir, socket_path=self.socket_path,
                       log_file=self.log_file, extra=self.options, tcp_port=self.tcp_port,
                       tcp_timeout=self.tcp_timeout)
        self.token_file = os.path.join(self.root, "cni.token")
        self.executable = done.executable
        self.python_executable = os.path.join(self.bin_dir, PY_BIN_NAME)
        self.conflist_path = done.conflist

    def write_subnet_env(self) -> None:
        """Write the node's ``subnet.env`` (Flannel's keys) from ``network``, ``subnet``, ``mtu``
        and ``ipmasq``. Raises OSError."""
        with open(self.subnet_file, "w") as f:
            masq = "true" if self.ipmasq else "false"
            f.write(f"FLANNEL_NETWORK={self.network}\nFLANNEL_SUBNET={self.subnet}\n"
                    f"FLANNEL_MTU={self.mtu}\nFLANNEL_IPMASQ={masq}\n")

    @property
    def ipam_dir(self) -> str:
        """The host-local-compatible store of the network (``<data dir>/<name>``)."""
        return os.path.join(self.data_dir, self.name)

    def config(self, version: str = "1.1.0", **overrides: Any) -> dict[str, Any]:
        """The plugin entry of the installed conflist as a runtime passes it (name, version)."""
        with open(self.conflist_path) as f:
            conflist = json.load(f)
        conf = {"cniVersion": version, "name": conflist["name"], **conflist["plugins"][0]}
        conf.pop("capabilities", None)
        conf.update(overrides)
        return conf

    def call(self, command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
             config: dict[str, Any] | str | bytes | None = None, args: dict[str, str] | None = None,
             version: str = "1.1.0", extra_env: dict[str, str] | None = None,
             executable: str | None = None, timeout: float = 60) -> PluginReply:
        """``executable``: another launcher than the installed one (e.g. the Python one);
        ``timeout``: seconds before the call counts as hung."""
        return invoke(PluginCall(
            executable or self.executable, command,
            config if config is not None else self.config(version),
            container_id, netns, ifname, args or {}, cni_path=self.bin_dir,
            node_netns=self.node_netns, extra_env=extra_env or {}), timeout=timeout)

    # -- the CNI server of this node ------------------------------------------------------
    def start_server(self, tcp: bool = True, command: list[str] | None = None) -> None:
        """Run the CNI server in the node namespace (``python -m netweft.cni.server`` unless another
        command line, e.g. ``netweft cni-server``, is given; the options are appended).
        ``tcp=False``: the server has no TCP listener (no token file), so the bash launcher
        falls back to the Python launcher and the unix socket. Raises RuntimeError when the
        server does not come up."""
        # the loopback the TCP fast path listens on (a runtime's node namespace has it up)
        subprocess.run(["ip", "-n", self.node_netns, "link", "set", "lo", "up"], check=True)
        port = self.tcp_port if tcp else 0
        argv = command or [sys.executable, "-m", "netweft.cni.server"]
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.node_netns, *argv,
             "--socket-path", self.socket_path, "--log-file", self.log_file,
             "--tcp-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket_path) or (port and not os.path.exists(
                self.token_file)):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"CNI server did not start (see {self.log_file})")
            time.sleep(0.05)

    def stop_server(self) -> None:
        """Stop the CNI server process (at most 15 s) if one runs."""
        if self.server is not None:
            from netweft.cni.runtimes import stop_process

            stop_process(self.server, 15)
            self.server = None

    def ip_files(self) -> list[str]:
        """The names of the allocation files in the store (addresses), sorted; empty when there is
        no store."""
        if not os.path.isdir(self.ipam_dir):
            return []
        return sorted(n for n in os.listdir(self.ipam_dir)
                      if n[0].isdigit() or ":" in n)


LAUNCHERS = ("bash", "python", "inproc")


@contextlib.contextmanager
def serving(node: CniNode, launcher: str | None) -> Iterator[CniNode]:
    """``node`` with the CNI server ``launcher`` needs, stopped afterwards: ``bash``, the
    installed launcher's TCP fast path; ``python``, the server without its TCP listener (no token
    file: the launcher falls back to the unix socket); ``inproc`` or None, no server (the plugin
    works in-process, or the test starts the server itself)."""
    if launcher in ("bash", "python"):
        node.start_server(tcp=launcher == "bash")
    try:
        yield node
    finally:
        node.stop_server()
