"""Control-plane child processes (kube-apiserver, controller-manager, kube-proxy) do not outlive
a killed test run or benchmark, and do not die with a worker thread that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from netweft.daemon.controlplane import Process
from support.polling import poll_until

STARTER = """
import sys, time
from pathlib import Path
from netweft.daemon.controlplane import Process
p = Process("sleeper", ["sleep", "3600"], Path(sys.argv[1]))
p.start()
print(p.pid, flush=True)
time.sleep(3600)
"""


def gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_child_goes_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "log")],
                               stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    pid = int(starter.stdout.readline())
    try:
        # setpriv arms the parent-death signal and then execs the program: kill the starter
        # only once that happened (a parent dying in the microseconds before is not covered)
        assert poll_until(lambda: psutil.Process(pid).name() == "sleep", timeout=10)
        starter.kill()                     # SIGKILL: no cleanup code of the starter runs
        starter.wait()
        assert gone(pid, within=10.0), "the child outlived the killed process that started it"
    finally:
        if not gone(pid, within=0):
            os.kill(pid, signal.SIGKILL)


def test_a_child_started_from_a_worker_thread_outlives_the_thread(tmp_path: Path) -> None:
    proc = Process("sleeper", ["sleep", "3600"], tmp_path / "log")
    worker = threading.Thread(target=proc.start)
    worker.start()
    worker.join()
    try:
        assert proc.pid is not None
        assert not gone(proc.pid, within=1.0), "the child died with the thread that started it"
    finally:
        proc.stop()
