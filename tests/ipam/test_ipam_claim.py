"""Which lease is this node's (issue 9 items 4 and 11): the pure decision, the identity file,
and the drift check renewals use."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from netweft.ipam.claim import Claimant, Drift, drift, plan_claim, previous_lease
from netweft.ipam.identity import IdentityError, load_or_create
from netweft.ipam.lease import Lease

ME, OTHER = "a" * 32, "b" * 32
MAC, MAC2 = "0a:00:00:00:00:01", "0a:00:00:00:00:02"
IP1, IP2 = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")


def lease(subnet: str, ip: IPv4Address, mac: str = MAC, node: str | None = ME,
          lease_id: int = 7) -> Lease:
    return Lease(subnet=IPv4Network(subnet), public_ip=ip, backend_type="vxlan",
                 backend_data={"VNI": 1, "VtepMAC": mac}, node_id=node, etcd_lease_id=lease_id)


def me(ip: IPv4Address = IP1, **kw: object) -> Claimant:
    kw.setdefault("node_id", ME)
    kw.setdefault("vtep_mac", MAC)
    return Claimant(public_ip=ip, **kw)  # type: ignore[arg-type]


def test_own_lease_is_found_by_identity_after_a_public_ip_change() -> None:
    old = lease("10.244.3.0/24", IP1)
    claim = plan_claim([old, lease("10.244.4.0/24", IP2, MAC2, OTHER)],
                       me(IP2, previous=IPv4Network("10.244.3.0/24")))
    assert claim.reuse == old and not claim.stale and claim.refuse is None
    assert "192.0.2.1 -> 192.0.2.2" in claim.why


def test_a_second_lease_of_ours_is_stale_and_the_subnet_env_one_is_kept() -> None:
    keep, extra = lease("10.244.3.0/24", IP1), lease("10.244.9.0/24", IP2)
    claim = plan_claim([extra, keep], me(IP2, previous=IPv4Network("10.244.3.0/24")))
    assert claim.reuse == keep and claim.stale == (extra,)


def test_a_pre_identity_lease_from_subnet_env_with_our_vtep_mac_is_ours() -> None:
    """Item 4 for a lease written before identities (or by Flannel): same MAC, old IP."""
    old = lease("10.244.3.0/24", IP1, node=None)
    claim = plan_claim([old], me(IP2, previous=IPv4Network("10.244.3.0/24")))
    assert claim.reuse == old


def test_one_vtep_mac_is_never_left_in_two_leases() -> None:
    stray = lease("10.244.8.0/24", IP1, node=None)  # our MAC, no identity, not subnet.env's
    claim = plan_claim([stray], me(IP2, previous=IPv4Network("10.244.3.0/24")))
    assert claim.reuse is None and claim.stale == (stray,)


def test_flannel_lease_holding_our_public_ip_is_reused_as_flannel_does() -> None:
    flannel = lease("10.244.5.0/24", IP1, MAC2, node=None)
    assert plan_claim([flannel], me()).reuse == flannel


def test_live_lease_of_another_identity_is_refused_with_one_line() -> None:
    victim = lease("10.244.5.0/24", IP1, MAC2, OTHER)
    claim = plan_claim([victim], me())
    assert claim.reuse is None and claim.wait_for is None
    assert claim.refuse is not None and "\n" not in claim.refuse
    assert f"node {OTHER}" in claim.refuse and "--take-over-lease" in claim.refuse


def test_a_node_with_a_new_identity_waits_for_the_old_lease() -> None:
    old = lease("10.244.5.0/24", IP1, MAC2, OTHER)
    claim = plan_claim([old], me(new_identity=True))
    assert claim.wait_for == old and claim.refuse is None and claim.reuse is None


def test_take_over_is_explicit_and_takes_the_old_identitys_other_leases_too() -> None:
    old = lease("10.244.5.0/24", IP1, MAC, OTHER)
    old_extra = lease("10.244.6.0/24", IP2, MAC, OTHER)
    claim = plan_claim([old, old_extra], me(new_identity=True, take_over=True))
    assert claim.reuse == old and claim.stale == (old_extra,)


def test_our_vtep_mac_in_another_identitys_lease_blocks_us() -> None:
    theirs = lease("10.244.5.0/24", IP2, MAC, OTHER)
    claim = plan_claim([theirs], me())
    assert claim.refuse is not None and f"VTEP MAC {MAC}" in claim.refuse


def test_previous_lease_for_backend_data_is_ours_by_identity_then_flannels_by_public_ip() -> None:
    """The lease whose BackendData (VTEP MAC) the backend may reuse (moved out of the agent)."""
    ours, flannels = lease("10.244.3.0/24", IP2), lease("10.244.4.0/24", IP1, MAC2, None)
    assert previous_lease([flannels, ours], ME, IP1, "vxlan") == ours
    assert previous_lease([flannels, ours], None, IP1, "vxlan") == flannels
    assert previous_lease([flannels, ours], OTHER, IP1, "vxlan") == flannels
    assert previous_lease([flannels, ours], ME, IP1, "host-gw") is None
    assert previous_lease([lease("10.244.5.0/24", IP1, node=OTHER)], ME, IP1, "vxlan") is None


def test_drift_tells_altered_from_foreign() -> None:
    ours = lease("10.244.3.0/24", IP1)
    assert drift(ours, ours) is Drift.SAME
    assert drift(ours, lease("10.244.3.0/24", IP2)) is Drift.ALTERED
    assert drift(ours, lease("10.244.3.0/24", IP1, MAC2)) is Drift.ALTERED
    assert drift(ours, lease("10.244.3.0/24", IP1, node=None)) is Drift.ALTERED
    assert drift(ours, None) is Drift.ALTERED
    assert drift(ours, lease("10.244.3.0/24", IP2, node=OTHER)) is Drift.FOREIGN
    anon = lease("10.244.3.0/24", IP1, node=None)  # no state directory: Flannel's PublicIP rule
    assert drift(anon, lease("10.244.3.0/24", IP1, MAC2, None)) is Drift.ALTERED
    assert drift(anon, lease("10.244.3.0/24", IP2, node=None)) is Drift.FOREIGN


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create(str(tmp_path / "state"))
    again = load_or_create(str(tmp_path / "state"))
    assert first.created and not again.created and first.node_id == again.node_id
    assert len(first.node_id) == 32 and oct(os.stat(first.path).st_mode)[-3:] == "644"


def test_a_damaged_identity_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("garbage\n")
    with pytest.raises(IdentityError) as info:
        load_or_create(str(tmp_path))
    assert str(tmp_path / "node-id") in str(info.value) and "\n" not in str(info.value)
