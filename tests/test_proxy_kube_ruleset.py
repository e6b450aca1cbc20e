"""Kubernetes API events must end in exactly the right ruleset: the source feeds the proxy's real
change tracker, which is synced incrementally (as the proxy runner does: dirty services only)
into an nftables table state while the API server changes and fails underneath; at the end the
ruleset equals the one rendered from scratch from the model the server's objects describe.

Needs the proxy's tracker/planner/renderer (proxy/tracker.py, plan.py, nftables.py)."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import kubeapi_server as kapi  # noqa: E402
from kube_scenarios import (  # noqa: E402
    expected_model,
    populate,
    random_changes_with_faults,
    run_with_source,
)
from proxy_sink import eventually  # noqa: E402

from proxy.sources.kube import KubeSource  # noqa: E402

tracker_mod = pytest.importorskip("proxy.tracker")
plan_mod = pytest.importorskip("proxy.plan")
nft_mod = pytest.importorskip("proxy.nftables")

NODE = plan_mod.NodeContext("node1", ("192.0.2.11",), ("10.244.0.0/16",))


def fresh_ruleset(server: kapi.KubeApiServer) -> str:
    services, endpoints = expected_model(server)
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
