"""Packet capture on the lab's underlay: ``tcpdump`` in the underlay namespace, on one node's
port of the bridge, into a pcap file (decoded by the tests with scapy)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Capture:
    netns: str
    iface: str
    bpf: str
    path: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> Capture:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tcpdump", "-i", self.iface, "-U", "-n",
             "--immediate-mode",
             "-s", "256", "-w", self.path, self.bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        # tcpdump prints "listening on ..." to stderr once the socket is attached
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stderr.read() or b""
            seen += chunk
            if b"listening on" in seen:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {seen.decode(errors='replace').strip()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("tcpdump did not start")

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path
