"""Pure parts of the wireguard backend: options, desired peers and routes, the diff, the MTU,
``wg show dump`` parsing and the ``wg set`` batch."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from netweft.backends.base import ActualState, Route, Underlay, WgPeer, diff
from netweft.backends.netlink import Netlink
from netweft.backends.wireguard import (
    WireGuardBackend,
    WireGuardSettings,
    desired_wireguard,
    peer_endpoint,
)
from netweft.backends.wireguard_keys import DEFAULT_KEY_FILE, key_file_path
from netweft.backends.wireguard_wg import parse_dump, set_args
from netweft.ipam.config import ConfigError, parse_config
from netweft.ipam.lease import Lease

K1 = "A2/LGq4dyvZGn8JKc0ms2FVMQOiXvDCQ6yNOXMV2bAs="
K2 = "PPsKz2xtxTz4vszzdIwlyINb9piGaAKN8B2wSAYJYCw="
K3 = "gDUvotCWSbbyExWRhpnY8jOzgnGpiw7Sr7fFyTHTP3s="
PSK = "f4i+6UMm6sg3AZcF6FQDwl7lVhQFt1SHMd0BGUR+0Ik="


def lease(n: int, key: str | None, port: int | None = 51820, btype: str = "wireguard") -> Lease:
    data: dict[str, object] = {}
    if key:
        data["PublicKey"] = key
    if port:
        data["Port"] = port
    return Lease(IPv4Network(f"10.244.{n}.0/24"), IPv4Address(f"192.0.2.{10 + n}"), btype, data,
                 etcd_lease_id=1)


def cfg(backend: dict[str, object]) -> object:
    return parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": backend}))


def test_wireguard_options_take_flannels_defaults() -> None:
    b = cfg({"Type": "wireguard"}).backend  # type: ignore[attr-defined]
    assert (b.listen_port, b.listen_port_v6, b.keepalive, b.mode, b.psk, b.mtu) == \
        (51820, 51821, 0, "separate", None, None)
    b = cfg({"Type": "wireguard", "PSK": PSK, "ListenPort": 51999, "MTU": 1300,
             "PersistentKeepaliveInterval": 25, "Mode": "auto"}).backend  # type: ignore[attr-defined]
    assert (b.listen_port, b.keepalive, b.mode, b.psk, b.mtu) == (51999, 25, "auto", PSK, 1300)
    assert b.to_dict()["PSK"] == PSK and b.to_dict()["ListenPortV6"] == 51821
    assert PSK not in repr(b)  # the PSK never shows in logs of the config object


@pytest.mark.parametrize(("backend", "message"), [
    ({"PSK": "short"}, "Backend.PSK: not a base64 32-byte key"),
    ({"PSK": 7}, "Backend.PSK: expected a string"),
    ({"ListenPort": 70000}, "Backend.ListenPort: 70000 is out of range 1-65535"),
    ({"ListenPortV6": -1}, "Backend.ListenPortV6: -1 is out of range"),
    ({"PersistentKeepaliveInterval": 70000}, "Backend.PersistentKeepaliveInterval: 70000"),
    ({"PersistentKeepaliveInterval": "25s"}, "Backend.PersistentKeepaliveInterval: expected"),
    ({"Mode": "both"}, "Backend.Mode: unknown mode 'both'"),
])
def test_wireguard_option_errors_are_one_line_naming_the_field(backend: dict[str, object],
                                                               message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        cfg({"Type": "wireguard", **backend})
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_key_file_path_is_flannels_with_the_env_override() -> None:
    assert key_file_path({}) == DEFAULT_KEY_FILE == "/run/flannel/wgkey"
    assert key_file_path({"WIREGUARD_KEY_FILE": "/x/k"}) == "/x/k"


def test_desired_peers_and_routes_from_leases() -> None:
    own = lease(1, K1)
    s = WireGuardSettings(keepalive=25, psk=PSK, key_file="/nonexistent")
    want = desired_wireguard(own, [own, lease(2, K2, port=51999), lease(3, K3, port=None),
                                   lease(4, None), lease(5, K2, btype="vxlan")], "flannel-wg", s)
    assert want.wg_peers == {
        WgPeer(K2, "192.0.2.12:51999", ("10.244.2.0/24",), 25, PSK),
        WgPeer(K3, "192.0.2.13:51820", ("10.244.3.0/24",), 25, PSK),  # no Port: ours
    }
    assert want.routes == {Route(IPv4Network("10.244.2.0/24"), None, "flannel-wg"),
                           Route(IPv4Network("10.244.3.0/24"), None, "flannel-wg")}
    assert len(want.errors) == 2
    assert "10.244.4.0/24" in want.errors[0] and "PublicKey" in want.errors[0]
    assert "'vxlan', not wireguard" in want.errors[1]
    assert all(PSK not in p.describe() for p in want.wg_peers)


def test_peer_endpoint_modes() -> None:
    v6 = Lease(IPv4Network("10.244.2.0/24"), IPv4Address("192.0.2.12"), "wireguard",
               {"PublicKey": K2, "Port": 51821}, public_ipv6=IPv6Address("2001:db8::2"))
    assert peer_endpoint(v6, "separate", 51820) == "192.0.2.12:51821"
    assert peer_endpoint(v6, "ipv4", 51820) == "192.0.2.12:51821"
    assert peer_endpoint(v6, "auto", 51820) == "192.0.2.12:51821"
    assert peer_endpoint(v6, "ipv6", 51820) == "[2001:db8::2]:51821"
    assert peer_endpoint(lease(3, K3), "ipv6", 51820) is None


def test_a_changed_key_replaces_only_that_peer() -> None:
    own = lease(1, K1)
    s = WireGuardSettings(key_file="/nonexistent")
    before = desired_wireguard(own, [lease(2, K2), lease(3, K3)], "flannel-wg", s)
    after = desired_wireguard(own, [lease(2, K2), lease(3, PSK)], "flannel-wg", s)
    changes = diff(after, ActualState(before.routes, wg_peers=before.wg_peers))
    assert [p.public_key for p in changes.del_wg_peers] == [K3]
    assert [p.public_key for p in changes.add_wg_peers] == [PSK]
    assert not changes.add_routes and not changes.del_routes and changes.count == 2


def test_mtu_overhead_is_60_over_ipv4_80_over_ipv6_unless_mtu_given() -> None:
    ul = Underlay("eth0", 2, IPv4Address("192.0.2.11"), 1500)

    def mtu(**kw: object) -> int:
        return WireGuardBackend(Netlink(), ul, WireGuardSettings(  # type: ignore[arg-type]
            key_file="/nonexistent", **kw)).mtu()

    assert mtu() == 1440 and mtu(mode="ipv4") == 1440
    assert mtu(mode="ipv6") == 1420 and mtu(mode="auto") == 1420
    assert mtu(mtu=1300) == 1300


DUMP = (
    "cHJpdmF0ZQ==\t" + K1 + "\t51820\toff\n"
    + K2 + "\t(none)\t192.0.2.12:51820\t10.244.2.0/24\t1700000000\t100\t200\t25\n"
    + K3 + "\t" + PSK + "\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_dump_reads_peers_and_drops_the_private_key() -> None:
    d = parse_dump(DUMP)
    assert d.interface.public_key == K1 and d.interface.listen_port == 51820
    assert "cHJpdmF0ZQ==" not in repr(d)
    assert d.peers == (WgPeer(K2, "192.0.2.12:51820", ("10.244.2.0/24",), 25, None),
                       WgPeer(K3, "", (), 0, PSK))
    assert d.handshakes == {K2: 1700000000, K3: 0} and d.transfer[K2] == (100, 200)
    with pytest.raises(ValueError):
        parse_dump("a\tb\n")


def test_set_args_one_batch_removals_first() -> None:
    add = [WgPeer(K2, "192.0.2.12:51820", ("10.244.2.0/24",), 25, PSK),
           WgPeer(K3, "192.0.2.13:51820", ("10.244.3.0/24",), 0, None)]
    args = set_args("flannel-wg", add, [WgPeer(K1, "", (), 0)], "/s/psk")
    assert args == ["set", "flannel-wg", "peer", K1, "remove",
                    "peer", K2, "preshared-key", "/s/psk", "endpoint", "192.0.2.12:51820",
                    "persistent-keepalive", "25", "allowed-ips", "10.244.2.0/24",
                    "peer", K3, "preshared-key", "/dev/null", "endpoint", "192.0.2.13:51820",
                    "persistent-keepalive", "off", "allowed-ips", "10.244.3.0/24"]
    assert PSK not in " ".join(args)
    assert set_args("flannel-wg", [], [], None) == []


def test_flannel_lease_and_key_file_interoperate(tmp_path) -> None:
    """What flanneld writes (lease value, key file 0400 without newline) is what we read, and
    our lease value has Flannel's shape ({"PublicKey", "Port"} under BackendData)."""
    import os

    from netweft.backends.wireguard_keys import load_or_create, public_key
    from netweft.ipam.lease import parse_lease

    flannel_value = json.dumps({"PublicIP": "192.0.2.12", "BackendType": "wireguard",
                                "BackendData": {"PublicKey": K2, "Port": 51820}})
    peer = parse_lease("10.244.2.0-24", flannel_value, etcd_lease_id=1)
    want = desired_wireguard(lease(1, K1), [peer], "flannel-wg",
                             WireGuardSettings(key_file="/nonexistent"))
    assert want.wg_peers == {WgPeer(K2, "192.0.2.12:51820", ("10.244.2.0/24",))}
    key_file = tmp_path / "wgkey"
    key_file.write_text("YO3ieH0X3Kx4Yjz8C3yJ5EW2qaR2W6P3qC0Sk3nR0Wk=")
    os.chmod(key_file, 0o400)  # as flanneld leaves it
    private = load_or_create(str(key_file))
    assert private == key_file.read_text() and oct(key_file.stat().st_mode & 0o777) == "0o400"
    ours = Lease(IPv4Network("10.244.1.0/24"), IPv4Address("192.0.2.11"), "wireguard",
                 {"PublicKey": public_key(private), "Port": 51820}, etcd_lease_id=1)
    value = json.loads(ours.value_json())
    assert value["BackendType"] == "wireguard"
    assert set(value["BackendData"]) == {"PublicKey", "Port"}


def test_key_file_that_is_no_key_is_one_line_naming_the_file(tmp_path) -> None:
    from netweft.backends.base import BackendError
    from netweft.backends.wireguard_keys import load_or_create

    bad = tmp_path / "wgkey"
    bad.write_text("not a key")
    with pytest.raises(BackendError, match=rf"WIREGUARD_KEY_FILE {bad}: not a WireGuard private"):
        load_or_create(str(bad))


def test_socket_check_reaches_a_socket_deeper_than_af_unix_allows(tmp_path) -> None:
    """wireguard-go's socket under a deep state dir (>108 bytes) is still found answering."""
    import os
    import socket

    from netweft.backends.wireguard_go import socket_answers

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "flannel-wg.sock")
    assert len(path) > 108
    fd = os.open(deep, os.O_PATH)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(f"/proc/self/fd/{fd}/flannel-wg.sock")
        server.listen(1)
        assert socket_answers(path)
        assert not socket_answers(path + ".other")
    finally:
        server.close()
        os.close(fd)
