"""Leases read from etcd are not trusted (issue 9 item 12): strict parsing and the pure check
of every lease against the network config and the node's own subnet."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest
from netweft.ipam.config import parse_config
from netweft.ipam.lease import Lease, LeaseFormatError, parse_lease
from netweft.ipam.leasecheck import LeaseFilter, check_leases

CFG = parse_config('{"Network": "10.244.0.0/16"}')
MAC = "0a:00:00:00:00:01"


def lease(subnet: str, ip: str = "192.0.2.1", rev: int = 1, **kw: object) -> Lease:
    return Lease(subnet=IPv4Network(subnet), public_ip=IPv4Address(ip) if ip else None,
                 backend_data={"VNI": 1, "VtepMAC": MAC}, create_revision=rev,
                 mod_revision=rev, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("value, field", [
    ({"PublicIP": 3221225985, "BackendType": "vxlan"}, "PublicIP"),
    ({"PublicIP": "192.0.2.1", "BackendData": {"VtepMAC": 1234}}, "VtepMAC"),
    ({"PublicIP": "192.0.2.1", "BackendData": {"VtepMAC": "not-a-mac"}}, "VtepMAC"),
    ({"PublicIP": "192.0.2.1", "BackendData": {"VNI": "1"}}, "VNI"),
    ({"PublicIP": "192.0.2.1", "BackendData": [1, 2]}, "BackendData"),
    ({"PublicIP": "192.0.2.1", "BackendType": 7}, "BackendType"),
    ({"PublicIP": "192.0.2.1", "PublicIPv6": ["fd00::1"]}, "PublicIPv6"),
    ({"PublicIP": "192.0.2.1", "NetweftNodeID": 5}, "NetweftNodeID"),
])
def test_values_of_the_wrong_json_type_are_refused_not_coerced(value: dict[str, object],
                                                               field: str) -> None:
    with pytest.raises(LeaseFormatError) as info:
        parse_lease("10.244.3.0-24", json.dumps(value))
    assert field in str(info.value) and "\n" not in str(info.value)


def test_flannel_values_still_parse_including_null_ipv6_and_unknown_fields() -> None:
    raw = ('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"SomethingNew":1}')
    le = parse_lease("10.5.52.0-24", raw)
    assert le.public_ip == IPv4Address("192.168.64.3") and le.public_ipv6 is None
    assert le.vtep_mac == "c6:d2:32:6f:8f:44" and le.node_id is None


def test_an_ipv4_lease_is_written_in_flanneld_layout() -> None:
    """Field for field and in order what flanneld v0.28.10 wrote in the lab (interop test):
    PublicIPv6 is null, not left out; netweft's identity comes last."""
    le = Lease(subnet=IPv4Network("10.244.35.0/24"), public_ip=IPv4Address("192.0.2.11"),
               backend_data={"VNI": 1, "VtepMAC": "46:e2:d9:51:68:a4"})
    assert le.value_json() == ('{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan",'
                               '"BackendData":{"VNI":1,"VtepMAC":"46:e2:d9:51:68:a4"}}')
    assert list(lease("10.244.3.0/24", node_id="ab").value())[-1] == "NetweftNodeID"


def test_node_identity_round_trips_through_the_value() -> None:
    le = lease("10.244.3.0/24", node_id="abc123")
    assert json.loads(le.value_json())["NetweftNodeID"] == "abc123"
    assert parse_lease("10.244.3.0-24", le.value_json()).node_id == "abc123"
    assert Lease.from_dict(le.to_dict()).node_id == "abc123"


@pytest.mark.parametrize("bad, why", [
    (lease("10.244.3.0/25"), "SubnetLen"),
    (lease("10.245.3.0/24"), "Network: 10.245.3.0/24 is outside 10.244.0.0/16"),
    (lease("10.244.3.0/24", ip=""), "PublicIP: missing"),
    (lease("10.244.3.0/24", ip="127.0.0.1"), "PublicIP: 127.0.0.1 is not a unicast"),
    (lease("10.244.3.0/24", ip="0.0.0.0"), "not a unicast"),
    (Lease(subnet=None, public_ip=None, ipv6_subnet=IPv6Network("fd00::/64")), "IPv6Network"),
])
def test_leases_that_do_not_fit_the_config_are_invalid(bad: Lease, why: str) -> None:
    result = check_leases(CFG, [lease("10.244.1.0/24", "192.0.2.9"), bad])
    assert [le.subnet for le in result.valid] == [IPv4Network("10.244.1.0/24")]
    assert len(result.invalid) == 1 and why in result.invalid[0].reason


def test_a_lease_overlapping_the_nodes_own_subnet_is_never_valid() -> None:
    own = lease("10.244.3.0/24", "192.0.2.1", rev=1)
    # dual-stack key with the same IPv4 subnet: another key, same routes as our own subnet
    dual = parse_lease("10.244.3.0-24&fd00::-64", '{"PublicIP":"192.0.2.66"}', mod_revision=9)
    cfg = parse_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                       '"IPv6Network": "fd00::/56"}')
    result = check_leases(cfg, [own, dual, lease("10.244.4.0/24", "192.0.2.2", rev=3)], own=own)
    assert [le.key_name for le in result.valid] == ["10.244.3.0-24", "10.244.4.0-24"]
    assert result.invalid[0].key_name == "10.244.3.0-24&fd00::-64"
    assert "own subnet" in result.invalid[0].reason


def test_of_two_overlapping_peer_leases_the_earlier_one_wins_on_every_node() -> None:
    cfg = parse_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                       '"IPv6Network": "fd00::/56"}')
    late = parse_lease("10.244.5.0-24&fd00::-64", '{"PublicIP":"192.0.2.7"}',
                       create_revision=20)
    early = parse_lease("10.244.5.0-24", '{"PublicIP":"192.0.2.5"}', create_revision=10)
    for order in ([late, early], [early, late]):
        result = check_leases(cfg, order)
        assert [le.key_name for le in result.valid] == ["10.244.5.0-24"]
        assert "overlaps the earlier lease 10.244.5.0-24" in result.invalid[0].reason


def test_filter_logs_each_bad_lease_once_and_its_recovery(caplog: pytest.LogCaptureFixture) -> None:
    filt = LeaseFilter(CFG)
    good, bad = lease("10.244.1.0/24"), lease("10.245.0.0/24")
    with caplog.at_level(logging.INFO, logger="netweft.ipam.leasecheck"):
        for _ in range(5):
            assert filt.valid([good, bad]) == [good]
        fixed = lease("10.244.7.0/24")
        assert filt.valid([good, fixed]) == [good, fixed]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ignoring lease 10.245.0.0-24: Network: 10.245.0.0/24 is outside "
                     "10.244.0.0/16"]


def test_filter_says_once_when_a_bad_lease_is_fixed(caplog: pytest.LogCaptureFixture) -> None:
    filt = LeaseFilter(CFG)
    broken, fixed = lease("10.244.9.0/24", ip=""), lease("10.244.9.0/24", "192.0.2.9")
    with caplog.at_level(logging.INFO, logger="netweft.ipam.leasecheck"):
        assert filt.valid([broken]) == []
        assert filt.valid([fixed]) == [fixed]
        assert filt.valid([fixed]) == [fixed]
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring lease 10.244.9.0-24: PublicIP: missing for 10.244.9.0/24",
        "lease 10.244.9.0-24 is valid again"]


def test_the_filter_checks_each_lease_object_once_until_it_or_the_own_lease_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon re-filters its whole view at every lease event: with 1,000 leases arriving
    one by one that was 1,000 full checks (~0.25 s each under load). Unchanged lease objects
    keep their verdict; a replaced lease, or a new own lease, is checked again."""
    from netweft.ipam import leasecheck

    checked: list[str] = []
    real = leasecheck.solo_problem

    def counting(cfg, le, own):  # type: ignore[no-untyped-def]
        checked.append(le.key_name)
        return real(cfg, le, own)

    monkeypatch.setattr(leasecheck, "solo_problem", counting)
    own = lease("10.244.1.0/24")
    peers = [lease(f"10.244.{i}.0/24", f"192.0.2.{i}") for i in range(2, 6)]
    f = LeaseFilter(CFG)
    assert len(f.valid([own, *peers], own)) == 5
    assert len(checked) == 4
    replaced = lease("10.244.2.0/24", "192.0.2.99")
    assert len(f.valid([own, replaced, *peers[1:]], own)) == 5
    assert checked[4:] == ["10.244.2.0-24"]
    f.valid([own, replaced, *peers[1:]], lease("10.244.1.0/24", "192.0.2.77"))
    assert len(checked) == 9  # a new own lease: everything again
