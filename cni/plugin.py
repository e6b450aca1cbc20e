"""The CNI operations: ADD, DEL, CHECK, VERSION, STATUS, GC.

:func:`run` takes the environment and stdin and always returns an exit code and the exact text
for stdout: a result or a CNI error JSON, never a traceback (details go to the log file). The
executable (in-process fallback) and the CNI server call the very same function, so a runtime
sees the same results either way.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface, ip_network

from netweft.cni import config as cniconfig
from netweft.cni import masq, wiring
from netweft.cni.config import DEFAULT_LOG_FILE, NetConf
from netweft.cni.env import CniEnv, parse_env
from netweft.cni.rtnl import RawRtnl
from netweft.cni.spec import (
    CURRENT_VERSION,
    ERR_CHECK_FAILED,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IO,
    ERR_NO_FREE_IP,
    ERR_NOT_AVAILABLE,
    ERR_REQUESTED_IP_UNAVAILABLE,
    ERR_TRY_AGAIN_LATER,
    ERR_UNKNOWN_CONTAINER,
    SUPPORTED_VERSIONS,
    CniError,
    Interface,
    IPConfig,
    Result,
    Route,
    dumps,
    render_result,
    version_info,
)
from netweft.ipam import subnetenv
from netweft.ipam.allocator import (
    AllocatorError,
    IPRange,
    NodeAllocator,
    RangeExhausted,
    RequestedIPUnavailable,
    StoreError,
)


@dataclass(frozen=True)
class PodInfo:
    """What the node daemon learns about an attachment (hooks ``on_add``/``on_del``)."""

    command: str
    network: str
    container_id: str
    ifname: str
    netns: str
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ips: tuple[str, ...] = ()  # ADD: "10.244.1.5/24"; DEL: the released "10.244.1.5"
    host_veth: str = ""
    mac: str = ""
    ports: dict[str, int] = field(default_factory=dict)  # NETWEFT_PORTS: named container ports


@dataclass
class PluginResult:
    """One invocation's result: the process exit code, the exact stdout text (a CNI result or error
    JSON), the command, the pod it concerned (for the daemon's hooks) and the CNI error code when
    the exit code is not 0."""

    code: int  # process exit code
    stdout: str
    command: str = ""
    pod: PodInfo | None = None
    error_code: int = 0  # the CNI error code when code != 0


class WiringState:
    """Node-side facts worth remembering between requests in a long-lived server: the bridge
    that was verified (index + addresses) and whether forwarding is on. The in-process path
    starts from an empty one every time (slower, same result)."""

    def __init__(self) -> None:
        self.bridges: dict[str, wiring.BridgeState] = {}
        self.forwarding: set[int] = set()
        self.lock = threading.Lock()

    def bridge(self, conf: NetConf, gateways: list[IPv4Interface | IPv6Interface],
               mtu: int) -> tuple[wiring.BridgeState, str]:
        """The bridge state and its current MAC; verified fully only when not cached (``mtu``
        in bytes). Raises :class:`CniError` as ``wiring.ensure_bridge``."""
        key = tuple(str(g) for g in gateways)
        cached = self.bridges.get(conf.bridge)
        if cached is not None and cached.gateways == key:
            with RawRtnl() as rt:
                link = rt.link(conf.bridge)
            if link is not None and link.index == cached.index and link.up:
                return wiring.BridgeState(cached.name, cached.index, link.mac, key), link.mac
        with self.lock:
            state = wiring.bridge_ready(conf.bridge, gateways) or wiring.ensure_bridge(
                conf.bridge, gateways, mtu, conf.force_address)
            self.bridges[conf.bridge] = wiring.BridgeState(state.name, state.index, state.mac,
                                                           key)
        return state, state.mac

    def forward(self, families: set[int]) -> None:
        """Turn IP forwarding on for ``families`` (IP versions 4/6) once per process (the reference
        bridge plugin's behaviour for a gateway bridge). Raises OSError from the sysctl write."""
        missing = families - self.forwarding
        if missing:
            wiring.enable_forwarding(missing)
            self.forwarding |= missing


# -- helpers ----------------------------------------------------------------------------------

def _subnet_env(conf: NetConf) -> subnetenv.SubnetEnv:
    if not os.path.exists(conf.subnet_file):
        raise CniError(ERR_TRY_AGAIN_LATER,
                       f"subnetFile {conf.subnet_file} does not exist: the node has no pod subnet "
                       "yet (is the netweft daemon running?)")
    try:
        return subnetenv.read(conf.subnet_file)
    except subnetenv.SubnetEnvError as exc:
        raise CniError(ERR_INVALID_CONFIG, str(exc)) from None


def _ranges(senv: subnetenv.SubnetEnv) -> list[IPRange]:
    out = []
    for sub in (senv.subnet, senv.ipv6_subnet):
        if sub is not None:
            out.append(IPRange(sub.network, gateway=sub.ip))
    return out


def _gateways(senv: subnetenv.SubnetEnv) -> list[IPv4Interface | IPv6Interface]:
    return [s for s in (senv.subnet, senv.ipv6_subnet) if s is not None]


def _requested(env: CniEnv, conf: NetConf) -> list:
    out = []
    for text in ([env.requested_ip] if env.requested_ip else []) + conf.runtime_ips:
        for part in text.split(","):
            if not part:
                continue
            try:
                out.append(ip_interface(part).ip)
            except ValueError:
                raise CniError(ERR_INVALID_ENV if part in env.requested_ip else ERR_INVALID_CONFIG,
                               f"requested IP {part!r} is not an IP address") from None
    return out


def _allocator_error(exc: AllocatorError) -> CniError:
    if isinstance(exc, RangeExhausted):
        return CniError(ERR_NO_FREE_IP, str(exc))
    if isinstance(exc, RequestedIPUnavailable):
        return CniError(ERR_REQUESTED_IP_UNAVAILABLE, str(exc))
    if isinstance(exc, StoreError):
        return CniError(ERR_IO, str(exc))
    return CniError(ERR_INVALID_CONFIG, str(exc))


def _masq_enabled(conf: NetConf, senv: subnetenv.SubnetEnv | None) -> bool:
    if conf.ip_masq is not None:
        return conf.ip_masq
    return senv is None or not senv.ipmasq


def _routes(conf: NetConf, senv: subnetenv.SubnetEnv) -> list[wiring.PodRoute]:
    routes: list[wiring.PodRoute] = []
    pairs = [(senv.network, senv.subnet), (senv.ipv6_network, senv.ipv6_subnet)]
    for network, sub in pairs:
        if sub is None:
            continue
        gw = sub.ip
        if network is not None:
            routes.append(wiring.PodRoute(str(network), gw))
        if conf.is_default_gateway:
            routes.append(wiring.PodRoute("0.0.0.0/0" if gw.version == 4 else "::/0", gw))
    for extra in conf.routes:
        gw_ip = ip_address(extra.gw) if extra.gw else next(
            (s.ip for s in (senv.subnet, senv.ipv6_subnet)
             if s is not None and s.version == extra.dst.version), None)
        route = wiring.PodRoute(str(extra.dst), gw_ip)
        if route not in routes:
            routes.append(route)
    return routes


# -- operations -------------------------------------------------------------------------------

def cmd_add(env: CniEnv, conf: NetConf, state: WiringState) -> tuple[str, PodInfo]:
    """ADD (CNI spec 1.1, Section 2 "ADD"): allocate the pod's address(es) from the node subnet in
    ``subnet.env`` (host-local compatible), make the bridge (gateway address, forwarding) and the
    pod's veth on it, masquerade when ``ipMasq`` (everything undone on failure); returns the result
    JSON text in ``conf.cni_version``'s form and the pod. A second ADD for the same container and
    interface is refused (ERR_INVALID_ENV), as the reference bridge plugin. Raises
    :class:`CniError`."""
    senv = _subnet_env(conf)
    ranges = _ranges(senv)
    mtu = conf.mtu or senv.mtu
    if wiring.attached(env.container_id, env.ifname):
        # CNI spec ("ADD": a runtime must not call ADD twice without a DEL; the plugin
        # returns an error), as the reference bridge plugin does: the first one stays intact
        raise CniError(ERR_INVALID_ENV,
                       f"{env.container_id}/{env.ifname} is already attached to a network "
                       f"({wiring.host_veth_name(env.container_id, env.ifname)} exists): "
                       "DEL it first")
    allocator = NodeAllocator(conf.data_dir, conf.name, ranges)
    try:
        addresses = allocator.allocate(env.container_id, env.ifname, _requested(env, conf))
    except AllocatorError as exc:
        raise _allocator_error(exc) from None
    gateways = _gateways(senv)
    bridge: wiring.BridgeState | None = None
    try:
        bridge, bridge_mac = state.bridge(
            conf, gateways if conf.is_gateway else [], mtu)
        if conf.is_gateway:
            state.forward({g.version for g in gateways})
        plan = wiring.PodPlan(env.container_id, env.ifname, env.netns, conf.bridge, mtu,
                              addresses, _routes(conf, senv), conf.hairpin_mode,
                              caller_pid=env.caller_pid, network=conf.name)
        wired = wiring.wire_pod(plan, bridge.index)
        if _masq_enabled(conf, senv):
            cluster = senv.network or (senv.subnet.network if senv.subnet else None)
            if cluster is not None:
                masq.add(conf.name, cluster, [a.ip for a in addresses])
            if senv.ipv6_subnet is not None:
                masq.add(conf.name, senv.ipv6_network or senv.ipv6_subnet.network,
                         [a.ip for a in addresses])
    except BaseException:
        with contextlib.suppress(Exception):
            wiring.unwire_pod(env.container_id, env.ifname, env.netns)
        with contextlib.suppress(Exception):  # no host veth: no live attachment to keep
            allocator.release(env.container_id, env.ifname)
        if bridge is not None and bridge.created:
            with contextlib.suppress(Exception):
                wiring.delete_bridge_if_unused(bridge)
                state.bridges.pop(conf.bridge, None)
        raise
    gw_by_family = {g.version: str(g.ip) for g in gateways}
    result = Result(
        interfaces=[
            Interface(conf.bridge, bridge_mac),
            Interface(wired.host_veth.name, wired.host_veth.mac),
            Interface(env.ifname, plan.mac, sandbox=env.netns, mtu=mtu),
        ],
        ips=[IPConfig(a, gw_by_family.get(a.version, ""), 2) for a in addresses],
        routes=[Route(r.dst, str(r.gw) if r.gw else "") for r in plan.routes],
    )
    pod = PodInfo("ADD", conf.name, env.container_id, env.ifname, env.netns, env.pod_namespace,
                  env.pod_name, env.pod_uid, env.pod_labels, tuple(str(a) for a in addresses),
                  wired.host_veth.name, plan.mac, env.pod_ports)
    return dumps(render_result(result, conf.cni_version)), pod


def cmd_del(env: CniEnv, conf: NetConf) -> PodInfo:
    """DEL (CNI spec 1.1, Section 2 "DEL"): remove the pod's veth, release its addresses and their
    masquerade entries; idempotent (missing pieces are no error). Returns the pod. Raises
    :class:`CniError` when the IPAM store cannot be written."""
    wiring.unwire_pod(env.container_id, env.ifname, env.netns)
    allocator = NodeAllocator(conf.data_dir, conf.name)
    try:
        released = allocator.release(env.container_id, env.ifname)
    except AllocatorError as exc:
        raise _allocator_error(exc) from None
    if released:
        senv = None
        with contextlib.suppress(Exception):
            senv = subnetenv.read(conf.subnet_file)
        if _masq_enabled(conf, senv):
            with contextlib.suppress(masq.MasqError):
                masq.remove(conf.name, released)
    return PodInfo("DEL", conf.name, env.container_id, env.ifname, env.netns, env.pod_namespace,
                   env.pod_name, env.pod_uid, env.pod_labels, tuple(str(ip) for ip in released),
                   wiring.host_veth_name(env.container_id, env.ifname))


def cmd_check(env: CniEnv, conf: NetConf) -> None:
    """CHECK (CNI spec 1.1, Section 2 "CHECK"): verify the pod still has what ``prevResult`` says
    (allocation, sandbox interface, MAC, addresses, routes, MTU). Raises :class:`CniError`
    ERR_INVALID_CONFIG without ``prevResult``, ERR_UNKNOWN_CONTAINER without an allocation,
    ERR_CHECK_FAILED on a difference."""
    prev = conf.prev_result
    if prev is None:
        raise CniError(ERR_INVALID_CONFIG, "prevResult is required for CHECK")
    senv = _subnet_env(conf)
    held = set(NodeAllocator(conf.data_dir, conf.name).held_by(env.container_id, env.ifname))
    if not held:
        raise CniError(ERR_UNKNOWN_CONTAINER,
                       f"no IP is allocated to {env.container_id}/{env.ifname} in {conf.name}")
    index = next((i for i, iface in enumerate(prev.interfaces)
                  if iface.name == env.ifname and iface.sandbox), None)
    if index is None:
        raise CniError(ERR_CHECK_FAILED, f"prevResult has no sandbox interface {env.ifname}")
    addresses = [ipc.address for ipc in prev.ips if ipc.interface == index]
    for addr in addresses:
        if addr.ip not in held:
            raise CniError(ERR_CHECK_FAILED, f"{addr.ip} is not allocated to {env.container_id}")
    routes = [(str(ip_network(r.dst, strict=False)), r.gw) for r in prev.routes]
    mtu = prev.interfaces[index].mtu or conf.mtu or senv.mtu
    wiring.check_pod(env.container_id, env.ifname, env.netns, conf.bridge,
                     prev.interfaces[index].mac, addresses, routes,
                     caller_pid=env.caller_pid, mtu=mtu)


def cmd_gc(conf: NetConf) -> list[str]:
    """GC (CNI spec 1.1, Section 2 "GC"): release every allocation not in
    ``cni.dev/valid-attachments`` and remove its host veth (and this network's leaked veths on the
    bridge); returns one line per thing removed. Raises :class:`CniError` ERR_INVALID_CONFIG without
    the attachment list."""
    if conf.valid_attachments is None:
        raise CniError(ERR_INVALID_CONFIG,
                       "GC needs cni.dev/valid-attachments (or cni.dev/attachments)")
    allocator = NodeAllocator(conf.data_dir, conf.name)
    try:
        gone = allocator.gc(conf.valid_attachments)
    except AllocatorError as exc:
        raise _allocator_error(exc) from None
    valid_names = {wiring.host_veth_name(c, i) for c, i in conf.valid_attachments}
    stale = {wiring.host_veth_name(a.container_id, a.ifname) for a in gone} - valid_names
    # a leaked veth without an IPAM record: only this network's (its owner alias); another
    # network sharing the bridge has its own valid attachments
    mine = wiring.owner_alias(conf.name)
    stale |= {p for p, alias in wiring.bridge_ports(conf.bridge).items()
              if wiring.is_host_veth_name(p) and p not in valid_names and alias == mine}
    wiring.delete_links(sorted(stale))
    if gone:
        senv = None
        with contextlib.suppress(Exception):
            senv = subnetenv.read(conf.subnet_file)
        if _masq_enabled(conf, senv):
            with contextlib.suppress(masq.MasqError):
                masq.remove(conf.name, [a.ip for a in gone])
    return [f"{a.ip} {a.container_id}/{a.ifname}" for a in gone] + sorted(stale)


def cmd_status(conf: NetConf) -> None:
    """STATUS (CNI spec 1.1, Section 2 "STATUS"): return when ADD can succeed; raises
    :class:`CniError` ERR_NOT_AVAILABLE (50) when ``subnet.env`` is missing, the data directory is
    not writable or no address is free."""
    try:
        senv = _subnet_env(conf)
    except CniError as exc:
        raise CniError(ERR_NOT_AVAILABLE, exc.msg) from None
    allocator = NodeAllocator(conf.data_dir, conf.name, _ranges(senv))
    if not allocator.writable():
        raise CniError(ERR_NOT_AVAILABLE, f"dataDir {allocator.dir} is not writable")
    if allocator.free_count() <= 0:
        raise CniError(ERR_NOT_AVAILABLE, f"no free IP address left in {senv.subnet}")


# -- entry point ------------------------------------------------------------------------------

def _log(path: str, line: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")
    except OSError:
        pass


def run(environ: Mapping[str, str], stdin: bytes | str, state: WiringState | None = None,
        default_log: str = DEFAULT_LOG_FILE, via: str = "inproc",
        caller_pid: int | None = None) -> PluginResult:
    """Execute one CNI request; never raises (except KeyboardInterrupt/SystemExit).

    ``caller_pid``: the (verified) pid of the process that called the CNI server; CNI_NETNS is
    then opened in that process's mount namespace (:mod:`cni.callerns`). None in-process."""
    started = time.monotonic()
    version = CURRENT_VERSION
    log_file = default_log
    command = str(environ.get("CNI_COMMAND", ""))
    outcome: PluginResult
    detail = ""
    try:
        env = parse_env(environ)
        if caller_pid:
            env = replace(env, caller_pid=caller_pid)
        if env.command == "VERSION":
            outcome = PluginResult(0, dumps(version_info()), command)
        else:
            data = cniconfig.decode(stdin)
            if data.get("cniVersion") in SUPPORTED_VERSIONS:
                version = data["cniVersion"]
            if isinstance(data.get("logFile"), str) and data["logFile"].startswith("/"):
                log_file = data["logFile"]
            conf = cniconfig.parse(data)
            if env.command == "ADD":
                text, pod = cmd_add(env, conf, state or WiringState())
                outcome = PluginResult(0, text, command, pod)
            elif env.command == "DEL":
                outcome = PluginResult(0, "", command, cmd_del(env, conf))
            elif env.command == "CHECK":
                cmd_check(env, conf)
                outcome = PluginResult(0, "", command)
            elif env.command == "GC":
                detail = "; ".join(cmd_gc(conf))
                outcome = PluginResult(0, "", command)
            else:  # STATUS
                cmd_status(conf)
                outcome = PluginResult(0, "", command)
    except CniError as exc:
        outcome = PluginResult(1, dumps(exc.to_dict(version)), command, error_code=exc.code)
        detail = exc.msg
    except Exception as exc:  # noqa: BLE001 - reported as CNI error JSON, traceback to the log
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            msg = f"{type(exc).__name__}: {exc.strerror}"
        err = CniError(ERR_INTERNAL, f"netweft: {msg}", type(exc).__name__)
        outcome = PluginResult(1, dumps(err.to_dict(version)), command, error_code=ERR_INTERNAL)
        detail = traceback.format_exc()
    elapsed = (time.monotonic() - started) * 1000
    _log(log_file, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {via} {command or '-'} "
                   f"{environ.get('CNI_CONTAINERID', '-')}/{environ.get('CNI_IFNAME', '-')} "
                   f"code={outcome.error_code} {elapsed:.1f}ms v={version} {detail}".rstrip())
    return outcome
