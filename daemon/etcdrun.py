"""Run one etcd-backed CLI action: connect, run, turn expected failures into one line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from netweft.daemon.clicontext import fail
from netweft.ipam.config import ConfigError
from netweft.ipam.leases import LeaseError, LeaseStore
from netweft.kv.etcd import EtcdClient, EtcdError, EtcdSettings, EtcdUnavailable

T = TypeVar("T")

CLI_TIMEOUT = 3.0


def with_store(settings: EtcdSettings, action: Callable[[LeaseStore], Awaitable[T]],
               timeout: float = CLI_TIMEOUT) -> T:
    """Run ``action(store)``; etcd, config and lease errors exit 1 with one line."""

    async def main() -> T:
        async with EtcdClient(settings, timeout=timeout) as etcd:
            return await action(LeaseStore(etcd, settings.prefix))

    try:
        return asyncio.run(main())
    except (EtcdError, ConfigError, LeaseError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def refuse_tls_mistakes(settings: EtcdSettings, timeout: float = 5.0) -> None:
    """Before a long-running command starts: exit 1 with one line when etcd cannot be talked to
    because of a certificate mistake (wrong CA, missing or rejected client certificate), which
    no retry fixes. etcd being down is no reason to refuse: the command waits for it."""
    if not settings.tls:
        return

    async def probe() -> None:
        async with EtcdClient(settings, timeout=timeout) as etcd:
            with contextlib.suppress(EtcdUnavailable):
                await etcd.current_revision()

    try:
        asyncio.run(probe())
    except EtcdError as exc:
        fail(str(exc))
