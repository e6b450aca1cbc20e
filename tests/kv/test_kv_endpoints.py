"""Several etcd endpoints (issue 9 item 7): every URL is used, host names and IPv6 literals
included. Pure parsing here; the failover against a real 3-member cluster is in
test_etcd_cluster.py."""

from __future__ import annotations

import pytest
from netweft.kv.endpoints import parse_endpoints
from netweft.kv.etcd import EtcdSettings


def test_every_endpoint_is_parsed_to_host_port_and_scheme() -> None:
    s = EtcdSettings.from_strings(
        "http://etcd-a:2379, http://etcd-b:2380,http://[fd00::1]:2379,10.0.0.7,https://[::1]")
    eps = parse_endpoints(s.endpoints)
    assert [(e.host, e.port) for e in eps] == [
        ("etcd-a", 2379), ("etcd-b", 2380), ("fd00::1", 2379), ("10.0.0.7", 2379), ("::1", 2379)]
    assert [e.https for e in eps] == [False, False, False, False, True]
    assert s.tls  # one https endpoint turns TLS on


def test_duplicates_are_dropped_order_kept() -> None:
    eps = parse_endpoints(("http://b:1", "http://a:1", "b:1"))
    assert [e.host for e in eps] == ["b", "a"]


@pytest.mark.parametrize("text", ["ftp://etcd:2379", "http://fd00::1:2379", "http://etcd:99999",
                                  "http://etcd:2379/v3", ","])
def test_bad_endpoints_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="^--etcd-endpoints: "):
        EtcdSettings.from_strings(text)
