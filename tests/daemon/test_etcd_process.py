"""The etcd the tests start never outlives them: a test run killed before its fixtures' cleanup
(a CI timeout, kill -9) left etcd servers running for hours on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

STARTER = """
import sys, time
from netweft.daemon.etcd_process import EtcdProcess
server = EtcdProcess().start()
print(server.pid, server.data_dir, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_etcd_stops_when_the_process_that_started_it_is_killed() -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    try:
        pid_text, data_dir = starter.stdout.readline().split()  # type: ignore[union-attr]
        pid = int(pid_text)
        assert _alive(pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = _alive(pid)
        if alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "etcd outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    subprocess.run(["rm", "-rf", data_dir], check=False)
