"""Network config: Flannel's defaults, and one clear line naming the field for every refusal."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from netweft.ipam.config import ConfigError, parse_config


def test_defaults_follow_flannel() -> None:
    cfg = parse_config('{"Network": "10.244.0.0/16"}')
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.244.1.0")  # the first subnet is skipped
    assert cfg.subnet_max == IPv4Address("10.244.255.0")
    assert cfg.capacity == 255
    assert cfg.backend.type == "vxlan" and cfg.backend.vni == 1 and cfg.backend.port == 8472
    assert cfg.enable_ipv4 and not cfg.enable_ipv6


def test_small_network_gets_subnet_len_two_longer() -> None:
    cfg = parse_config('{"Network": "10.0.0.0/23"}')
    assert cfg.subnet_len == 25
    assert cfg.subnet_at(0) == IPv4Network("10.0.0.128/25")


def test_round_trip_through_json() -> None:
    text = json.dumps({"Network": "10.1.0.0/16", "SubnetLen": 26, "SubnetMin": "10.1.2.0",
                       "Backend": {"Type": "host-gw"}})
    cfg = parse_config(text)
    assert parse_config(cfg.to_json()) == cfg


def test_dual_stack_defaults() -> None:
    cfg = parse_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                       '"IPv6Network": "fd00:10:244::/56"}')
    assert cfg.ipv6_subnet_len == 64
    assert cfg.ipv6_capacity == 255


@pytest.mark.parametrize(
    ("config", "field", "reason"),
    [
        ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.7"}, "SubnetMin", "boundary"),
        ({"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.128"}, "SubnetMax", "boundary"),
        ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.1.0"}, "SubnetMin", "outside"),
        ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"},
         "SubnetMin", "above"),
        ({"Network": "10.244.0.0/16", "SubnetLen": 33}, "SubnetLen", "out of range"),
        ({"Network": "10.244.0.0/16", "SubnetLen": 16}, "SubnetLen", "out of range"),
        ({"Network": "10.244.0.0/16", "SubnetLen": 8}, "SubnetLen", "out of range"),
        # Flannel refuses a SubnetLen that fits fewer than four times (issue 9 item 6)
        ({"Network": "10.244.0.0/16", "SubnetLen": 17}, "SubnetLen", "at least four subnets"),
        ({"Network": "10.244.0.0/24", "SubnetLen": 25}, "SubnetLen", "from /26 to /30"),
        ({"Network": "10.244.0.0/16", "SubnetLen": 31}, "SubnetLen", "from /18 to /30"),
        ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/56",
          "IPv6SubnetLen": 57}, "IPv6SubnetLen", "at least four subnets"),
        ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/56",
          "IPv6SubnetLen": 127}, "IPv6SubnetLen", "from /58 to /126"),
        ({"Network": "10.244.0.0/16", "SubnetLen": "24"}, "SubnetLen", "integer"),
        ({"Network": "10.0.0.0/29"}, "Network", "smaller than a /28"),
        ({"Network": "10.244.1.0/16"}, "Network", "host bits"),
        ({"Network": "not-a-cidr"}, "Network", "not an IPv4 CIDR"),
        ({}, "Network", "missing"),
        ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type", "unknown"),
        ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}, "Backend.VNI",
         "out of range"),
        ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}},
         "Backend.Port", "out of range"),
        ({"Network": "10.244.0.0/16", "Backend": {"MTU": 20}}, "Backend.MTU", "out of range"),
        ({"Network": "10.244.0.0/16", "Backend": "vxlan"}, "Backend", "expected an object"),
        ({"Network": "10.244.0.0/16", "EnableIPv6": True}, "IPv6Network", "missing"),
        ({"Network": "10.244.0.0/16", "EnableIPv6": "yes"}, "EnableIPv6", "true or false"),
        ({"EnableIPv4": False, "EnableIPv6": False}, "EnableIPv4", "nothing to lease"),
        ([1, 2], "config", "JSON object"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(config: object, field: str,
                                                    reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(config))
    message = str(info.value)
    assert message.startswith(f"{field}:"), message
    assert reason in message, message
    assert "\n" not in message


def test_malformed_json_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^config: not valid JSON"):
        parse_config("{nope")


@pytest.mark.parametrize(("config", "subnet_len", "capacity"), [
    ({"Network": "10.244.0.0/16", "SubnetLen": 18}, 18, 3),  # four, the first skipped
    ({"Network": "10.244.0.0/16", "SubnetLen": 30}, 30, 16383),
    ({"Network": "10.244.0.0/28"}, 30, 3),
])
def test_subnet_lengths_flannel_accepts_are_accepted(config: dict, subnet_len: int,
                                                     capacity: int) -> None:
    cfg = parse_config(json.dumps(config))
    assert (cfg.subnet_len, cfg.capacity) == (subnet_len, capacity)


def test_summary_describes_each_enabled_family() -> None:
    v6 = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56"}')
    assert v6.summary() == "fd00::/56, /64 per node (255 subnets)"
    dual = parse_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                        '"IPv6Network": "fd00::/56", "IPv6SubnetLen": 60}')
    assert dual.summary() == ("10.244.0.0/16, /24 per node (255 subnets); "
                              "fd00::/56, /60 per node (15 subnets)")
