"""Stopping the processes a test started (each in its own session, ``start_new_session=True``)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes],
               timeout: float = 15) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``timeout`` seconds; nothing when the
    process has already exited."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
