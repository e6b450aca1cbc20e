"""Talk to the lab's etcd from outside its namespaces: ``etcdctl`` run inside the etcd namespace
(the lab's etcd listens only on the underlay; the root namespace has no route to it)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass


class EtcdctlError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabEtcd:
    netns: str
    endpoint: str

    def _run(self, *args: str, input: str | None = None, timeout: float = 10.0) -> str:
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, "etcdctl", f"--endpoints={self.endpoint}",
             "--dial-timeout=2s", "--command-timeout=5s", *args],
            input=input, capture_output=True, text=True, env=env, timeout=timeout,
        )
        if proc.returncode != 0:
            raise EtcdctlError(f"etcdctl {args[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def put(self, key: str, value: str, ttl: int | None = None) -> None:
        """Put ``key``; with ``ttl`` attached to a fresh etcd lease of that many seconds."""
        args = []
        if ttl is not None:
            out = self._run("lease", "grant", str(ttl))
            # "lease 694d7a2b1c8e4f05 granted with TTL(300s)"
            args.append(f"--lease={out.split()[1]}")
        # the value goes on stdin so JSON needs no quoting and may start with '-'
        self._run("put", *args, key, input=value)

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self._run("get", "--prefix", prefix, "-w", "json")
        data = json.loads(out)
        result = {}
        for kv in data.get("kvs", []) or []:
            key = base64.b64decode(kv["key"]).decode()
            result[key] = base64.b64decode(kv.get("value", "")).decode()
        return result

    def get(self, key: str) -> str | None:
        return self.get_prefix(key).get(key)

    def delete(self, key: str) -> int:
        out = self._run("del", key)
        return int(out.strip() or 0)

    def put_retrying(self, key: str, value: str, timeout: float = 30.0) -> None:
        """Put ``key``, retrying while a just-started (or busy) etcd is not answering yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.put(key, value)
                return
            except (EtcdctlError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() >= deadline:
                    raise EtcdctlError(f"etcd at {self.endpoint} did not take {key}: {exc}") \
                        from None
                time.sleep(0.2)

    def delete_prefix(self, prefix: str) -> int:
        out = self._run("del", "--prefix", prefix)
        return int(out.strip() or 0)

    def healthy(self) -> bool:
        try:
            self._run("endpoint", "health", timeout=5.0)
        except (EtcdctlError, subprocess.TimeoutExpired):
            return False
        return True
