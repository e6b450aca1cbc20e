"""Source events must end in exactly the right ruleset: a source feeds the proxy's real change
tracker, which is synced incrementally (as the proxy runner does: dirty services only) into an
nftables table state while the API server (or etcd) changes and fails underneath; at the end the
ruleset equals the one rendered from scratch from the model the objects describe.

Needs the proxy's tracker/planner/renderer (proxy/tracker.py, plan.py, nftables.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netweft.daemon.etcd_process import EtcdProcess  # noqa: E402
from netweft.kv.backoff import Backoff  # noqa: E402
from netweft.kv.etcd import EtcdClient, EtcdSettings  # noqa: E402
from netweft.proxy import nftables as nft_mod  # noqa: E402
from netweft.proxy import plan as plan_mod  # noqa: E402
from netweft.proxy import tracker as tracker_mod  # noqa: E402
from netweft.proxy.sources.etcd import EtcdSource  # noqa: E402
from netweft.proxy.sources.kube import KubeSource  # noqa: E402
from support import kubeapi_server as kapi  # noqa: E402
from support.etcd_scenarios import random_changes, truth  # noqa: E402
from support.kube_scenarios import (  # noqa: E402
    expected_model,
    populate,
    random_changes_with_faults,
    run_with_source,
)
from support.polling import eventually  # noqa: E402

NODE = plan_mod.NodeContext("node1", ("192.0.2.11",), ("10.244.0.0/16",))


def fresh_ruleset(server: kapi.KubeApiServer) -> str:
    return render_model(*expected_model(server))


def render_model(services: dict, endpoints: dict) -> str:
    state = nft_mod.NftState(NODE)
    state.update({k: plan_mod.plan_service(s, endpoints.get(k, ()), NODE)
                  for k, s in services.items()})
    return str(state.full_text())


def sync_once(tracker: Any, state: Any) -> None:
    """One runner-style sync: plans for the dirty services only (None for deleted ones)."""
    batch = tracker.take()
    plans = {}
    for key in batch.keys:
        svc = tracker.services.get(key)
        plans[key] = None if svc is None else plan_mod.plan_service(
            svc, tracker.endpoints.get(key, ()), NODE)
    state.update(plans)


@pytest.mark.parametrize("seed", [3, 17])
def test_events_and_faults_end_in_exactly_the_right_ruleset(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)

    async def scenario(server: kapi.KubeApiServer, source: KubeSource, tracker: Any) -> None:
        state = nft_mod.NftState(NODE)

        async def syncer() -> None:
            while True:
                if tracker.pending:
                    sync_once(tracker, state)
                await asyncio.sleep(0.005)

        task = asyncio.create_task(syncer())
        try:
            await eventually(lambda: state.full_text() == fresh_ruleset(server), "initial")
            await random_changes_with_faults(server, rng, 200)
            await eventually(lambda: not tracker.pending
                             and state.full_text() == fresh_ruleset(server),
                             "the ruleset after 200 random changes and faults")
            assert sum(r.lists for r in source.reflectors) > 2  # faults did force relists
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run_with_source(scenario, tmp_path, setup=populate, make_sink=tracker_mod.ChangeTracker)


def test_etcd_records_through_compaction_end_in_exactly_the_right_ruleset(
        etcd_factory: Callable[[], EtcdProcess]) -> None:
    server = etcd_factory()
    prefix = "/nws-ruleset"
    rng = random.Random(9)
    settings = EtcdSettings.from_strings(server.endpoint)

    async def main() -> None:
        async with EtcdClient(settings, timeout=30) as etcd:
            await random_changes(etcd, prefix, rng, 40)
            tracker = tracker_mod.ChangeTracker()
            state = nft_mod.NftState(NODE)
            source = EtcdSource(settings, prefix, backoff=lambda: Backoff(0.05, 0.5))

            async def syncer() -> None:
                while True:
                    if tracker.pending:
                        sync_once(tracker, state)
                    await asyncio.sleep(0.005)

            async def converge(what: str) -> None:
                want = render_model(*await truth(etcd, prefix))
                await eventually(lambda: not tracker.pending and state.full_text() == want, what)

            sync_task = asyncio.create_task(syncer())
            task = asyncio.create_task(source.run(tracker))
            try:
                await converge("initial")
                await random_changes(etcd, prefix, rng, 60)
                await converge("watched")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await random_changes(etcd, prefix, rng, 60)
                await etcd.compact(await etcd.current_revision())
                task = asyncio.create_task(source.run(tracker))
                await converge("after compaction while away")
                assert source.lists == 2
            finally:
                for t in (task, sync_task):
                    t.cancel()
                await asyncio.gather(task, sync_task, return_exceptions=True)

    asyncio.run(main())
