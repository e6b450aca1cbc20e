"""Defaults shared by several rooms are defined once, in netweft.common.defaults (issue 10 item
6): no module of the shipped packages spells one of them as a literal of its own."""

from __future__ import annotations

import ast
from pathlib import Path

from netweft.common import defaults

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cni", "daemon", "ipam", "backends", "proxy")
DEFAULTS_FILE = ROOT / "ipam" / "common" / "defaults.py"


def _literals(tree: ast.AST) -> list[ast.Constant]:
    """Every constant but docstrings (prose may name a default)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings]


def test_shared_defaults_are_spelled_only_in_the_defaults_module() -> None:
    values = {v: k for k, v in vars(defaults).items()
              if k.isupper() and isinstance(v, str) and v.startswith(("/", "http"))}
    values[defaults.CNI_TCP_PORT] = "CNI_TCP_PORT"
    found = []
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            if path == DEFAULTS_FILE:
                continue
            for node in _literals(ast.parse(path.read_text())):
                if type(node.value) in (str, int) and node.value in values:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                 f"{node.value!r} (defaults.{values[node.value]})")
    assert found == []


def test_the_defaults_are_flannels_where_flannel_has_one() -> None:
    """A netweft node and a flanneld node agree without configuration (flanneld --help)."""
    assert defaults.ETCD_PREFIX == "/coreos.com/network"
    assert defaults.SUBNET_FILE == "/run/flannel/subnet.env"
    assert defaults.NET_CONF_PATH == "/etc/kube-flannel/net-conf.json"
    assert defaults.LEASE_TTL == 24 * 3600
    assert defaults.VXLAN_PORT == 8472
