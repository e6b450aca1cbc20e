"""Pure parts of the daemon: firewall rendering, metrics, subnet.env for a lease, iface errors."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest
from netweft.backends import registry
from netweft.daemon.firewall import FirewallSpec, iptables_rules, make_firewall, render_nft
from netweft.daemon.iface import IfaceError, parse_options
from netweft.daemon.leasekeeper import subnet_env_for
from netweft.daemon.metrics import HttpEndpoint, daemon_metrics
from netweft.ipam.config import parse_config
from netweft.ipam.lease import Lease
from prometheus_client.parser import text_string_to_metric_families

SPEC = FirewallSpec(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24"))


def test_nft_ruleset_has_flannels_masquerade_rules_in_order() -> None:
    text = render_nft(SPEC)
    rules = [line.strip() for line in text.splitlines() if "return" in line or "masq" in line]
    assert rules == [
        "meta mark & 0x00004000 == 0x00004000 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ]
    assert "ip saddr 10.244.0.0/16 accept" in text and "ip daddr 10.244.0.0/16 accept" in text
    assert text.startswith("table ip netweft {")


def test_nft_without_masquerade_keeps_forward_only() -> None:
    text = render_nft(FirewallSpec(SPEC.network, SPEC.subnet, masquerade=False))
    assert "postrouting" not in text and "chain forward" in text


def test_iptables_rules_only_in_own_chains() -> None:
    rules = iptables_rules(SPEC)
    assert all(r.startswith("-A NETWEFT-POSTRTG ") for r in rules["nat"])
    assert all(r.startswith("-A NETWEFT-FWD ") for r in rules["filter"])
    assert "-A NETWEFT-POSTRTG -m mark --mark 0x4000/0x4000 " in rules["nat"][0]
    with pytest.raises(ValueError, match="--firewall: 'pf'"):
        make_firewall("pf")


def test_subnet_env_for_lease() -> None:
    cfg = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    lease = Lease(IPv4Network("10.244.3.0/24"), IPv4Address("192.0.2.10"))
    env = subnet_env_for(cfg, lease, 1450, True)
    assert env.render() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_unknown_backend_is_one_clear_line() -> None:
    from dataclasses import replace

    cfg = parse_config('{"Network": "10.244.0.0/16"}')
    cfg = replace(cfg, backend=replace(cfg.backend, type="ipsec"))
    with pytest.raises(registry.UnknownBackend,
                       match="Backend.Type: 'ipsec' is not supported"):
        registry.create(registry.BackendParams(cfg.backend, None, None))  # type: ignore[arg-type]


def test_iface_option_errors_name_the_option() -> None:
    with pytest.raises(IfaceError, match="--iface-can-reach: 'x' is not an IPv4 address"):
        parse_options([], [], "x", None)
    with pytest.raises(IfaceError, match="--public-ip"):
        parse_options([], [], None, "1.2.3")


def _sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus text (parsed: ``7`` and ``7.0`` are the same)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return None


def test_metric_label_values_with_quote_backslash_and_newline_are_escaped() -> None:
    """Prometheus text format: a label value escapes \\, \" and newline; unescaped, one odd
    label value broke the whole /metrics page for the scraper."""
    m = daemon_metrics()
    odd = 'a"b\\c\nd'
    m.set("netweft_cni_requests_total", 2, {"command": odd, "result": "ok"})
    text = m.render()
    assert 'netweft_cni_requests_total{command="a\\"b\\\\c\\nd",result="ok"} 2' in text
    assert _sample(text, "netweft_cni_requests_total", {"command": odd, "result": "ok"}) == 2


def test_metrics_text_format_and_http_endpoints() -> None:
    m = daemon_metrics()
    m.inc("netweft_reconcile_runs_total")
    m.set("netweft_peers_programmed", 7)
    m.set("netweft_last_reconcile_timestamp_seconds", 1795320000.25)
    m.add_collector(lambda mm: mm.set("netweft_cni_requests_total", 3,
                                      {"command": "ADD", "result": "ok"}))
    m.set("netweft_cni_request_duration_seconds_sum", 0.012, {"command": "ADD"})
    m.set("netweft_cni_request_duration_seconds_count", 3, {"command": "ADD"})
    m.observe("netweft_reconcile_duration_seconds", 0.004)
    text = m.render()
    assert "# TYPE netweft_reconcile_runs_total counter" in text
    assert _sample(text, "netweft_peers_programmed") == 7
    assert _sample(text, "netweft_last_reconcile_timestamp_seconds") == 1795320000.25
    assert 'netweft_cni_requests_total{command="ADD",result="ok"} 3' in text
    assert "# TYPE netweft_cni_request_duration_seconds summary" in text
    assert 'netweft_cni_request_duration_seconds_count{command="ADD"} 3' in text
    assert "# TYPE netweft_cni_request_duration_seconds_count" not in text
    assert 'netweft_reconcile_duration_seconds_bucket{le="0.005"} 1' in text
    assert 'netweft_reconcile_duration_seconds_bucket{le="0.0025"} 0' in text

    async def scenario() -> list[bytes]:
        state = {"ready": (False, "waiting for the network config")}
        ep = HttpEndpoint(m, lambda: state["ready"])
        host, port = await ep.start("127.0.0.1:0")
        out = []
        for path in ("/healthz", "/readyz", "/metrics", "/nope"):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            out.append(await reader.read())
            writer.close()
        state["ready"] = (True, "ready")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        out.append(await reader.read())
        await ep.stop()
        return out

    healthz, notready, metrics, missing, ready = asyncio.run(scenario())
    assert healthz.startswith(b"HTTP/1.0 200")
    assert notready.startswith(b"HTTP/1.0 503") and b"waiting for the network config" in notready
    assert metrics.startswith(b"HTTP/1.0 200") and b"netweft_peers_programmed 7" in metrics
    assert missing.startswith(b"HTTP/1.0 404")
    assert ready.startswith(b"HTTP/1.0 200")


def test_wait_helpers_time_out_and_never_swallow_cancellation() -> None:
    from netweft.daemon.asyncutil import wait_event, with_timeout

    async def scenario() -> None:
        ev = asyncio.Event()
        assert await wait_event(ev, 0.01) is False
        ev.set()
        assert await wait_event(ev, 0.01) is True
        with pytest.raises(TimeoutError):
            await with_timeout(asyncio.sleep(5), 0.01)
        assert await with_timeout(asyncio.sleep(0, result=7), 1) == 7

        async def loop(flag: asyncio.Event) -> None:
            while True:  # what the daemon's loops look like
                await wait_event(flag, 0.001)
                flag.set()
                await asyncio.sleep(0)
                flag.clear()

        for _ in range(200):
            task = asyncio.create_task(loop(asyncio.Event()))
            await asyncio.sleep(0.0005)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2)
            assert done and task.cancelled()

    asyncio.run(scenario())


def test_status_names_each_mismatch_between_kernel_and_published_state() -> None:
    from netweft.daemon.commands.inspect import mismatches

    lease = Lease(IPv4Network("10.244.3.0/24"), IPv4Address("192.0.2.10"), backend_type="vxlan",
                  backend_data={"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
    status = {"device": "flannel.1", "iface": "eth0", "mtu": 1450, "address": "192.0.2.10",
              "underlayMTU": 1500, "publicIP": "192.0.2.10"}
    good_dev = {"present": True, "mac": "0E:00:00:00:00:01", "mtu": 1450}
    good_pub = {"present": True, "addresses": ["192.0.2.10"], "mtu": 1500}
    assert mismatches(status, lease, good_dev, good_pub) == []
    assert mismatches(status, lease, {**good_dev, "mac": "02:11:22:33:44:55", "mtu": 1300},
                      {"present": True, "addresses": ["192.0.2.20"], "mtu": 1400}) == [
        "device flannel.1 has MAC 02:11:22:33:44:55, the lease publishes 0e:00:00:00:00:01",
        "device flannel.1 has MTU 1300, the daemon set 1450",
        "public interface eth0 no longer has 192.0.2.10",
        "public interface eth0 has MTU 1400, the daemon uses 1500",
    ]
    assert mismatches(status, lease, good_dev, {"present": False}) == [
        "public interface eth0 is gone"]
    moved = Lease(lease.subnet, IPv4Address("192.0.2.20"), backend_type="vxlan",
                  backend_data=lease.backend_data)
    assert mismatches(status, moved, good_dev, good_pub) == [
        "the lease publishes 192.0.2.20, the daemon uses 192.0.2.10"]


def test_backend_registry_creates_by_type_name_and_takes_new_types() -> None:
    from netweft.backends.base import Underlay
    from netweft.backends.hostgw import HostGwBackend
    from netweft.backends.vxlan import VxlanBackend

    cfg = parse_config('{"Network": "10.244.0.0/16"}')
    under = Underlay("eth0", 2, IPv4Address("192.0.2.10"), 1500)
    previous = Lease(IPv4Network("10.244.3.0/24"), IPv4Address("192.0.2.10"),
                     backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": "0e:00:00:00:00:07"})
    vx = registry.create(registry.BackendParams(cfg.backend, None, under,  # type: ignore[arg-type]
                                                previous=previous))
    assert isinstance(vx, VxlanBackend) and vx.mac == "0e:00:00:00:00:07" and vx.mtu() == 1450
    from dataclasses import replace

    hg = registry.create(registry.BackendParams(replace(cfg.backend, type="host-gw"), None,  # type: ignore[arg-type]
                                                under))
    assert isinstance(hg, HostGwBackend) and hg.mtu() == 1500
    assert hg.watched().device == "eth0" and hg.watched().neighbour_index is None
    assert {"vxlan", "host-gw"} <= set(registry.names())
    registry.register("test-only", lambda p: HostGwBackend(p.nl, p.underlay, 1400))
    try:
        made = registry.create(registry.BackendParams(replace(cfg.backend, type="test-only"),
                                                      None, under))  # type: ignore[arg-type]
        assert made.mtu() == 1400
    finally:
        registry.unregister("test-only")
    assert "test-only" not in registry.names()



def test_nft_firewall_loads_one_typed_table_through_the_applier() -> None:
    """The daemon's table goes through the one nftables applier as typed chains (here the
    in-memory fake, tests/support/fake_nft.py): loaded once, left alone while it matches, reloaded
    after someone flushes a chain."""

    from netweft.daemon.firewall import (
        NFT_FORWARD_CHAIN,
        NFT_POSTROUTING_CHAIN,
        NFT_TABLE,
        NftFirewall,
        nft_chains,
    )
    from support.fake_nft import FakeNft

    nft = FakeNft()
    fw = NftFirewall(nft=nft)  # type: ignore[arg-type]
    assert fw.ensure(SPEC) is True
    assert fw.ensure(SPEC) is False
    table = nft.table(f"ip {NFT_TABLE}")
    assert list(table.chains) == [NFT_POSTROUTING_CHAIN, NFT_FORWARD_CHAIN]
    assert table.chains[NFT_FORWARD_CHAIN].rules == list(nft_chains(SPEC)[1].rules)
    table.chains[NFT_POSTROUTING_CHAIN].rules.clear()
    assert fw.ensure(SPEC) is True and nft.transactions == 2
    fw.teardown()
    assert nft.tables == {}


def test_a_daemon_loop_that_ends_is_an_internal_error_naming_it() -> None:
    """The agent's loops never end: one that does stops the daemon with one line naming it
    (``asyncutil.until_one_ends``); its own exception, if any, propagates as it is."""
    from netweft.daemon.asyncutil import cancel_all, until_one_ends
    from netweft.daemon.errors import AgentError

    async def scenario() -> None:
        stop = asyncio.get_running_loop().create_future()

        async def ends() -> None:
            return None

        async def fails() -> None:
            raise OSError("boom")

        with pytest.raises(AgentError, match="internal error: the lease watch loop stopped"):
            await until_one_ends(stop, [asyncio.create_task(ends(), name="lease watch")])
        with pytest.raises(OSError, match="boom"):
            await until_one_ends(stop, [asyncio.create_task(fails(), name="x")])
        stop.set_result(None)
        forever = asyncio.create_task(asyncio.sleep(3600))
        await until_one_ends(stop, [forever])  # stopped: returns
        assert await cancel_all({forever}) == set() and forever.cancelled()

    asyncio.run(scenario())


def test_start_is_abandoned_when_stop_comes_first() -> None:
    """``asyncutil.unless_stopped``: a stop while starting (e.g. waiting for the network
    config) cancels the start and reports False; a finished start reports True."""
    from netweft.daemon.asyncutil import unless_stopped

    async def scenario() -> None:
        stop = asyncio.get_running_loop().create_future()
        assert await unless_stopped(asyncio.sleep(0), stop) is True
        stop.set_result(None)
        assert await unless_stopped(asyncio.sleep(3600), stop) is False

    asyncio.run(scenario())
