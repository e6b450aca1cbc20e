"""The `netweft` CLI for config and leases, run as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netweft.daemon.etcd_process import free_port

NETWEFT = str(Path(sys.executable).parent / "netweft")


def netweft(endpoint: str, prefix: str, *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NETWEFT, "--etcd-endpoints", endpoint, "--etcd-prefix", prefix, *args],
                          capture_output=True, text=True, input=stdin, timeout=60)


def test_config_set_from_options_then_show(etcd_endpoint: str, etcd_prefix: str) -> None:
    r = netweft(etcd_endpoint, etcd_prefix, "config", "set", "--network", "10.244.0.0/16",
                "--backend", "host-gw")
    assert r.returncode == 0, r.stderr
    shown = json.loads(netweft(etcd_endpoint, etcd_prefix, "config", "show").stdout)
    assert shown["Network"] == "10.244.0.0/16" and shown["Backend"]["Type"] == "host-gw"
    assert shown["SubnetMin"] == "10.244.1.0"


def test_config_set_refuses_bad_config_with_one_line(etcd_endpoint: str, etcd_prefix: str,
                                                     tmp_path: Path) -> None:
    bad = tmp_path / "net.json"
    bad.write_text('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.9"}')
    r = netweft(etcd_endpoint, etcd_prefix, "config", "set", "-f", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "netweft: SubnetMin: 10.244.1.9 is not on a /24 boundary (SubnetLen)"]


def test_config_set_summarises_an_ipv6_only_network(etcd_endpoint: str,
                                                    etcd_prefix: str) -> None:
    r = netweft(etcd_endpoint, etcd_prefix, "config", "set", "-f", "-",
                stdin='{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10::/56"}')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"network config stored at {etcd_prefix}/config: "
                                "fd00:10::/56, /64 per node (255 subnets), vxlan")


def test_config_set_refuses_what_flannel_refuses(etcd_endpoint: str, etcd_prefix: str) -> None:
    r = netweft(etcd_endpoint, etcd_prefix, "config", "set", "--network", "10.244.0.0/16",
                "--subnet-len", "17")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "netweft: SubnetLen: 17 is out of range: the Network's /16 must hold at least four "
        "subnets (the first is skipped), so it must be from /18 to /30"]


def test_leases_list_json_round_trips(etcd_endpoint: str, etcd_prefix: str) -> None:
    import asyncio

    from netweft.ipam.config import parse_config
    from netweft.ipam.lease import Lease
    from netweft.ipam.leases import LeaseStore
    from netweft.kv.etcd import EtcdClient, EtcdSettings

    cfg = parse_config('{"Network": "10.244.0.0/16"}')

    async def make() -> list[Lease]:
        async with EtcdClient(EtcdSettings.from_strings(etcd_endpoint, etcd_prefix)) as etcd:
            store = LeaseStore(etcd, etcd_prefix)
            await store.set_config(cfg)
            from ipaddress import IPv4Address, IPv4Network
            out = [await store.acquire(cfg, IPv4Address(f"192.0.2.{i}"), "vxlan",
                                       {"VNI": 1, "VtepMAC": f"0a:00:00:00:00:0{i}"})
                   for i in (1, 2)]
            out.append(await store.reserve(IPv4Network("10.244.200.0/24"),
                                           IPv4Address("192.0.2.9"), cfg))
            return out

    made = asyncio.run(make())
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = [Lease.from_dict(d) for d in json.loads(r.stdout)]
    assert {(le.subnet, le.public_ip, le.vtep_mac, le.reserved) for le in listed} == {
        (le.subnet, le.public_ip, le.vtep_mac, le.reserved) for le in made}
    assert all(le.expiration for le in listed if not le.reserved)
    table = netweft(etcd_endpoint, etcd_prefix, "leases", "list").stdout
    assert "never (reserved)" in table and "0a:00:00:00:00:01" in table


def test_reserve_and_release_from_the_cli(etcd_endpoint: str, etcd_prefix: str) -> None:
    assert netweft(etcd_endpoint, etcd_prefix, "config", "set", "--network",
                   "10.244.0.0/16").returncode == 0
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "reserve", "10.244.7.0/24",
                "--public-ip", "192.0.2.7")
    assert r.returncode == 0, r.stderr
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "reserve", "10.244.7.0/24",
                "--public-ip", "192.0.2.8")
    assert r.returncode == 1 and "reserved for 192.0.2.7" in r.stderr
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "reserve", "10.244.7.128/25",
                "--public-ip", "192.0.2.8")
    assert r.returncode == 1 and "is not a /24 subnet" in r.stderr
    assert netweft(etcd_endpoint, etcd_prefix, "leases", "release", "10.244.7.0/24").returncode == 0
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "release", "10.244.7.0/24")
    assert r.returncode == 1 and "no lease or reservation" in r.stderr


def test_unreachable_etcd_is_one_line_and_exit_1() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["leases", "list"], ["config", "show"], ["leases", "list", "--json"]):
        r = netweft(dead, "/coreos.com/network", *args)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "unreachable" in lines[0], r.stderr
        assert "Traceback" not in r.stderr


def test_bad_endpoint_option_is_a_usage_error() -> None:
    r = subprocess.run([NETWEFT, "--etcd-endpoints", "ftp://x", "leases", "list"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--etcd-endpoints" in r.stderr


def test_leases_list_marks_malformed_and_misfit_leases_invalid(etcd_endpoint: str,
                                                               etcd_prefix: str) -> None:
    """Issue 9 item 12: what no node programs is shown as INVALID with the reason."""
    import asyncio

    from netweft.kv.etcd import EtcdClient, EtcdSettings

    assert netweft(etcd_endpoint, etcd_prefix, "config", "set", "--network",
                   "10.244.0.0/16").returncode == 0
    values = {
        "10.244.1.0-24": '{"PublicIP":"192.0.2.1","BackendType":"vxlan",'
                         '"BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}',
        "10.244.2.0-24": '{"PublicIP":3221225986,"BackendType":"vxlan"}',
        "10.244.3.0-24": '{"PublicIP":"192.0.2.3","BackendData":{"VtepMAC":42}}',
        "10.244.4.0-25": '{"PublicIP":"192.0.2.4","BackendType":"vxlan"}',
        "10.99.0.0-24": '{"PublicIP":"192.0.2.5","BackendType":"vxlan"}',
    }

    async def put() -> None:
        async with EtcdClient(EtcdSettings.from_strings(etcd_endpoint, etcd_prefix)) as etcd:
            for name, value in values.items():
                await etcd.put(f"{etcd_prefix}/subnets/{name}", value)

    asyncio.run(put())
    r = netweft(etcd_endpoint, etcd_prefix, "leases", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {d.get("subnet") or d.get("key"): d for d in json.loads(r.stdout)}
    assert rows["10.244.1.0/24"]["valid"] is True
    assert "PublicIP" in rows["10.244.2.0-24"]["invalid"]
    assert "VtepMAC" in rows["10.244.3.0-24"]["invalid"]
    assert "SubnetLen" in rows["10.244.4.0/25"]["invalid"]
    assert "outside 10.244.0.0/16" in rows["10.99.0.0/24"]["invalid"]
    table = netweft(etcd_endpoint, etcd_prefix, "leases", "list").stdout.splitlines()
    assert table[0].split()[-1] == "STATUS"
    status = {line.split()[0]: line for line in table[1:]}
    assert status["10.244.1.0/24"].endswith("ok")
    assert "INVALID: Network:" in status["10.99.0.0/24"]
    assert "INVALID: lease 10.244.2.0-24: PublicIP" in status["10.244.2.0-24"]
