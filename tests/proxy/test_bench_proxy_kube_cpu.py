"""bench/proxy_kube.py's CPU accounting of a proxy process (issue 12: the CPU seconds of a
proxy's restart). The kernel adds a child's CPU time to its parent's ``children_*`` only once
the parent has reaped it, so a proxy whose iptables-restore was still running showed almost no
CPU (kube-proxy iptables at 10,000 services: 3.4 s over 900 s). Real processes, no fakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from proxy_kube import cpu_seconds  # noqa: E402

# A parent that starts a child burning 1 s of CPU, then sleeping; the parent never reaps it
# while the test looks.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass\\n"
    "print('burnt', flush=True)\\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print('child done burning', flush=True)
time.sleep(60)
"""


def test_cpu_seconds_counts_a_child_still_running() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "child done burning"
        proc = psutil.Process(parent.pid)
        own = proc.cpu_times()
        reaped_only = own.user + own.system + own.children_user + own.children_system
        assert reaped_only < 0.9          # what the bench counted before: the child not yet in
        assert cpu_seconds(proc) >= 0.95  # the running child's second is counted now
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
