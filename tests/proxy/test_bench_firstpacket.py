"""bench/proxy_firstpacket.py's pure parts (issue 12: first packet vs kube-proxy nftables): the
confidence intervals the figures are read with, the rulesets grown from a dump, and the table
rendered by this tree. No kernel: the script itself runs under the bench lock."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from proxy_firstpacket import (  # noqa: E402
    extend_dump,
    median_ci,
    netweft_ruleset,
    round_bootstrap_ci,
)

KP_DUMP = """table ip kube-proxy {
\tset cluster-ips {
\t\ttype ipv4_addr
\t}
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t}
}
"""


def test_median_ci_is_the_sign_test_interval() -> None:
    # n = 24: the 95% interval of the median is the 7th..18th order statistic
    assert median_ci([float(x) for x in range(24)]) == (6.0, 17.0)
    assert median_ci([float(x) for x in range(100)]) == (39.0, 60.0)
    assert median_ci([1.0]) == (1.0, 1.0)


def test_round_bootstrap_ci_holds_the_ratio_of_two_samples() -> None:
    rng = random.Random(3)
    a = [[rng.gauss(110, 5) for _ in range(50)] for _ in range(20)]
    b = [[x / 1.1 for x in row] for row in a]         # the same rounds, 10% faster
    lo, hi = round_bootstrap_ci(a, b, 0.5)
    assert lo == pytest.approx(1.1) and hi == pytest.approx(1.1)
    lo, hi = round_bootstrap_ci(a, a, 0.99)
    assert lo == hi == 1.0


def test_extend_dump_grows_kube_proxy_in_its_layout() -> None:
    text = extend_dump(KP_DUMP, 13)                    # 3 more services
    added = text[len(KP_DUMP):]
    assert added.count("add chain ip kube-proxy service-F") == 3
    assert added.count("dnat ip to numgen random mod 3 map") == 3
    assert "add element ip kube-proxy cluster-ips { 10.97.0.1, 10.97.0.2, 10.97.0.3 }" in added
    assert ("10.97.0.3 . tcp . 80 : goto service-F0000003-bench/fill-3/tcp/http" in added)


def test_extend_dump_grows_netweft_in_its_layout() -> None:
    base = netweft_ruleset("10.96.0.50")
    added = extend_dump(base, 12)[len(base):]
    assert "10.97.0.2 . tcp . 80 : goto cluster-tcp-3" in added
    assert "10.97.0.2 . 80 . 2 : 10.130.0.8 . 8080" in added


def test_extend_dump_refuses_other_tables() -> None:
    with pytest.raises(ValueError):
        extend_dump("table inet filter {\n}\n", 20)


def test_netweft_ruleset_serves_the_target() -> None:
    text = netweft_ruleset("10.96.0.50")
    assert "10.96.0.50 . tcp . 80" in text and "10.244.1.13 . 8080" in text
    assert text.count("goto cluster-tcp-3") == 10
