"""The etcd client: usable without an explicit connect(), and after close() again."""

from __future__ import annotations

import asyncio

from netweft.kv.etcd import EtcdClient, EtcdSettings


def test_fresh_client_connects_on_first_call_and_after_close(etcd_endpoint: str,
                                                            etcd_prefix: str) -> None:
    async def main() -> tuple[bytes | None, bytes | None]:
        etcd = EtcdClient(EtcdSettings.from_strings(etcd_endpoint, etcd_prefix))
        await etcd.put(f"{etcd_prefix}/k", b"v1")  # no connect() first
        first = await etcd.get(f"{etcd_prefix}/k")
        await etcd.close()
        lease = await etcd.grant(30)  # reconnects by itself
        await etcd.put(f"{etcd_prefix}/k", b"v2", lease=lease)
        second = await etcd.get(f"{etcd_prefix}/k")
        await etcd.close()
        return (first.value if first else None), (second.value if second else None)

    assert asyncio.run(main()) == (b"v1", b"v2")
