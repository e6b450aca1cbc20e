"""Public interface selection inside a namespace with several interfaces."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest
from netweft.backends.netlink import Netlink
from netweft.daemon.iface import IfaceError, IfaceOptions, select


@pytest.fixture
def nl(netns_factory):  # type: ignore[no-untyped-def]
    ns = netns_factory("difc")

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    for name, addr in (("eth0", "192.0.2.10/24"), ("eth1", "198.51.100.5/24"), ("bond7", None)):
        ip("link", "add", name, "mtu", "9000" if name == "eth1" else "1500", "type", "veth",
           "peer", "name", f"{name}p")
        if addr:
            ip("addr", "add", addr, "dev", name)
        ip("link", "set", name, "up")
        ip("link", "set", f"{name}p", "up")
    ip("route", "add", "default", "via", "198.51.100.1")
    ip("route", "add", "203.0.113.0/24", "via", "192.0.2.1")
    link = Netlink(netns=ns)
    yield link
    link.close()


def test_default_route_interface(nl: Netlink) -> None:
    side = select(nl, IfaceOptions())
    assert side.underlay.iface == "eth1" and side.public_ip == IPv4Address("198.51.100.5")
    assert side.underlay.mtu == 9000
    assert side.underlay.networks == (IPv4Network("198.51.100.0/24"),)


def test_iface_by_name_by_ip_first_present_wins(nl: Netlink) -> None:
    assert select(nl, IfaceOptions(ifaces=("eth9", "eth0"))).underlay.iface == "eth0"
    assert select(nl, IfaceOptions(ifaces=("198.51.100.5",))).underlay.iface == "eth1"
    with pytest.raises(IfaceError, match="--iface: none of eth8, eth9 exists here"):
        select(nl, IfaceOptions(ifaces=("eth8", "eth9")))
    with pytest.raises(IfaceError, match="--iface bond7: the interface has no IPv4 address"):
        select(nl, IfaceOptions(ifaces=("bond7",)))


def test_iface_regex_can_reach_and_public_ip(nl: Netlink) -> None:
    assert select(nl, IfaceOptions(regexes=(r"^192\.0\.2\.",))).underlay.iface == "eth0"
    assert select(nl, IfaceOptions(regexes=(r"^eth1$",))).underlay.iface == "eth1"
    side = select(nl, IfaceOptions(can_reach=IPv4Address("203.0.113.9")))
    assert side.underlay.iface == "eth0" and side.underlay.ip == IPv4Address("192.0.2.10")
    side = select(nl, IfaceOptions(ifaces=("eth0",), public_ip=IPv4Address("203.0.113.50")))
    assert side.public_ip == IPv4Address("203.0.113.50")
    assert side.underlay.ip == IPv4Address("192.0.2.10")  # the VXLAN source stays local
    with pytest.raises(IfaceError, match="--iface-regex: no interface"):
        select(nl, IfaceOptions(regexes=("^wlan",)))
