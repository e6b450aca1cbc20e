"""The container-runtime side of the lab: create a pod's namespace and run the node's CNI
network config list inside the node's namespace, the way libcni does it (each plugin's
executable found in ``CNI_PATH`` by its ``type``, config on stdin with ``name``/``cniVersion``
injected and the previous plugin's result as ``prevResult``, results cached for DEL)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any

from netweft.cni.invoke import PluginCall, invoke
from netweft.daemon import netns
from netweft.daemon.lab.topology import POD_IFACE, Node, Pod, cni_args

CNI_TIMEOUT = 30.0


class PluginCallError(RuntimeError):
    """A lab call of a CNI plugin failed (not ``cni.spec.CniError``, the plugin's own error
    result); the message carries its CNI error code and msg."""


@dataclass(frozen=True)
class PodNetwork:
    pod: str
    address: IPv4Interface
    gateway: str | None
    result: dict[str, Any]


def load_conflist(node: Node) -> dict[str, Any]:
    with open(node.conflist_path) as f:
        conf = json.load(f)
    if not isinstance(conf, dict) or not isinstance(conf.get("plugins"), list):
        raise PluginCallError(f"{node.conflist_path}: plugins: missing or not a list")
    return conf


def plugin_stdin(conflist: dict[str, Any], plugin: dict[str, Any],
                 prev_result: dict[str, Any] | None) -> dict[str, Any]:
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def find_plugin(node: Node, plugin_type: str) -> str:
    path = os.path.join(node.cni_bin_dir, plugin_type)
    if not os.access(path, os.X_OK):
        raise PluginCallError(f"CNI plugin {plugin_type!r} not found in {node.cni_bin_dir}")
    return path


def plugin_call(node: Node, pod: Pod, command: str, exe: str, stdin: dict[str, Any],
                netns_path: str) -> PluginCall:
    """The call libcni makes: the runtime's environment without ``CNI_*``, the CNI variables
    (``CNI_NETNS`` always set, empty on a DEL whose namespace is gone), run in the node."""
    args = dict(part.split("=", 1) for part in cni_args(pod).split(";"))
    return PluginCall(exe, command, stdin, container_id=pod.container_id, netns=netns_path,
                      ifname=POD_IFACE, args=args, cni_path=node.cni_bin_dir,
                      node_netns=node.netns, extra_env={"CNI_NETNS": netns_path},
                      base_env=dict(os.environ))


def exec_plugin(node: Node, pod: Pod, command: str, plugin_type: str, stdin: dict[str, Any],
                netns_path: str) -> dict[str, Any] | None:
    """Run one plugin inside the node namespace (cni/invoke.py); its parsed stdout (None when
    empty). Raises :class:`PluginCallError` with the plugin's CNI error code and msg, its exit
    code, or the timeout (``CNI_TIMEOUT`` seconds)."""
    exe = find_plugin(node, plugin_type)
    try:
        reply = invoke(plugin_call(node, pod, command, exe, stdin, netns_path),
                       timeout=CNI_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PluginCallError(f"{plugin_type} {command} {pod.name}: no answer in "
                              f"{CNI_TIMEOUT:.0f}s (see {node.cni_log})") from None
    out = reply.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError:
            parsed = None
    if reply.exit_code != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise PluginCallError(f"{plugin_type} {command} {pod.name}: code {parsed.get('code')}: "
                                  f"{parsed.get('msg')} {parsed.get('details', '')}".rstrip())
        raise PluginCallError(f"{plugin_type} {command} {pod.name}: exit {reply.exit_code}: "
                              f"{(reply.stderr or out).strip()[:500]}")
    return parsed if isinstance(parsed, dict) else None


def cache_dir(node: Node) -> str:
    """The node's libcni cache directory (``/var/lib/cni`` on a real node)."""
    return os.path.join(node.state_dir, "cni")


def _cache_path(node: Node, conflist: dict[str, Any], pod: Pod) -> str:
    """libcni's cache file name: ``<cacheDir>/results/<network>-<container id>-<ifname>``."""
    return os.path.join(cache_dir(node), "results",
                        f"{conflist['name']}-{pod.container_id}-{POD_IFACE}")


def _cache_entry(conflist: dict[str, Any], pod: Pod, result: dict[str, Any]) -> dict[str, Any]:
    """What libcni caches after an ADD (``cniCacheV1``): the daemon reads ``cniArgs`` from it
    to rebuild pod records (daemon/podsync.py), as it does from containerd's or podman's."""
    args = [list(p.split("=", 1)) for p in cni_args(pod).split(";") if "=" in p]
    return {"kind": "cniCacheV1", "containerId": pod.container_id, "ifName": POD_IFACE,
            "networkName": conflist["name"], "netns": pod.netns_path, "cniArgs": args,
            "result": result}


def pod_address(result: dict[str, Any]) -> tuple[IPv4Interface, str | None]:
    for ip in result.get("ips", []):
        addr = IPv4Interface(ip["address"]) if ":" not in ip["address"] else None
        if addr is not None:
            return addr, ip.get("gateway")
    raise PluginCallError("CNI result has no IPv4 address in ips")


def add(node: Node, pod: Pod) -> PodNetwork:
    """Create ``pod``'s namespace and run ADD through the node's conflist."""
    conflist = load_conflist(node)
    if not netns.exists(pod.netns):
        netns.add(pod.netns)
    prev: dict[str, Any] | None = None
    for plugin in conflist["plugins"]:
        result = exec_plugin(node, pod, "ADD", plugin["type"],
                             plugin_stdin(conflist, plugin, prev), pod.netns_path)
        if result is None:
            raise PluginCallError(f"{plugin['type']} ADD {pod.name}: printed no result")
        prev = result
    assert prev is not None
    cache = _cache_path(node, conflist, pod)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(_cache_entry(conflist, pod, prev), f)
    address, gateway = pod_address(prev)
    return PodNetwork(pod.name, address, gateway, prev)


def check(node: Node, pod: Pod) -> None:
    conflist = load_conflist(node)
    prev = cached_result(node, pod)
    for plugin in conflist["plugins"]:
        exec_plugin(node, pod, "CHECK", plugin["type"], plugin_stdin(conflist, plugin, prev),
                    pod.netns_path)


def cached_result(node: Node, pod: Pod) -> dict[str, Any] | None:
    try:
        conflist = load_conflist(node)
        with open(_cache_path(node, conflist, pod)) as f:
            data = json.load(f)
    except (OSError, ValueError, PluginCallError):
        return None
    result = data.get("result") if isinstance(data, dict) else None
    return result if isinstance(result, dict) else None


def delete(node: Node, pod: Pod) -> None:
    """Run DEL (plugins in reverse order) and remove the pod's namespace."""
    conflist = load_conflist(node)
    prev = cached_result(node, pod)
    path = pod.netns_path if netns.exists(pod.netns) else ""
    errors = []
    for plugin in reversed(conflist["plugins"]):
        try:
            exec_plugin(node, pod, "DEL", plugin["type"], plugin_stdin(conflist, plugin, prev),
                        path)
        except PluginCallError as exc:
            errors.append(str(exc))
    netns.delete(pod.netns)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_cache_path(node, conflist, pod))
    if errors:
        raise PluginCallError("; ".join(errors))
