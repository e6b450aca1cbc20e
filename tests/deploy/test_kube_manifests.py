"""deploy/kubernetes/: the manifests a kubeadm/kind user applies are accepted by the real
kube-apiserver (server-side apply, twice: the second apply changes nothing), and their RBAC is
exactly enough: the proxy, authenticating with a bound token of its own service account, lists
and watches Services and EndpointSlices to the exact model and can do nothing else.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import yaml
from netweft.cni.install import install as cni_install  # noqa: E402
from netweft.cni.install import plugin_entry  # noqa: E402
from netweft.daemon.controlplane import ControlPlane, ControlPlaneError  # noqa: E402
from netweft.ipam.config import parse_config  # noqa: E402
from netweft.proxy.model import ServiceKey  # noqa: E402
from support.kube_cluster import Cluster, converged, running_source, until  # noqa: E402

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
NAMESPACE = "netweft-system"


def documents() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def config_map() -> dict:
    (cm,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    return cm


def test_configmap_net_conf_and_conflist_match_what_netweft_reads_and_installs(
        tmp_path: Path) -> None:
    data = config_map()["data"]
    config = parse_config(data["net-conf.json"])
    assert str(config.network) == "10.244.0.0/16" and config.backend.type == "vxlan"
    shipped = json.loads(data["cni-conf.json"])
    done = cni_install(str(tmp_path / "bin"), str(tmp_path / "conf"))
    installed = json.loads(Path(done.conflist).read_text())
    # The netweft plugin's options are exactly the ones `netweft cni install` writes (the launcher
    # it installs bakes in the same socket and paths); portmap is chained after it.
    assert shipped["plugins"][0] == installed["plugins"][0] == plugin_entry(
        {k: v for k, v in installed["plugins"][0].items() if k not in ("type", "capabilities")})
    assert shipped["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}
    assert shipped["cniVersion"] == "1.0.0" and "1.1.0" in shipped["cniVersions"]


def test_daemonsets_tolerate_every_taint_and_mount_netns_with_host_to_container() -> None:
    sets = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "DaemonSet"}
    assert set(sets) == {"netweft", "netweft-proxy"}
    for ds in sets.values():
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert {"operator": "Exists"} in pod["tolerations"]
    agent = sets["netweft"]["spec"]["template"]["spec"]
    assert agent["serviceAccountName"] == "netweft"
    (container,) = agent["containers"]
    netns = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/netns"]
    assert netns == [{"name": "netns", "mountPath": "/run/netns",
                      "mountPropagation": "HostToContainer"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (init,) = agent["initContainers"]
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert {"/host/opt/cni/bin", "/host/etc/cni/net.d"} <= mounts
    assert sets["netweft-proxy"]["spec"]["template"]["spec"]["serviceAccountName"] == \
        "netweft-proxy"


def _apply(plane: ControlPlane) -> str:
    return plane.kubectl("apply", "--server-side", "--field-manager=netweft-test",
                         "-f", str(MANIFESTS))


def test_manifests_are_accepted_by_server_side_apply(control_plane: ControlPlane) -> None:
    first = _apply(control_plane)
    for kind_name in ("namespace/netweft-system", "serviceaccount/netweft",
                      "serviceaccount/netweft-proxy", "clusterrole.rbac.authorization.k8s.io/"
                      "netweft-proxy", "configmap/netweft-config", "daemonset.apps/netweft",
                      "daemonset.apps/netweft-proxy"):
        assert f"{kind_name} serverside-applied" in first, first
    before = json.loads(control_plane.kubectl("get", "daemonset", "-n", NAMESPACE, "-o", "json"))
    _apply(control_plane)  # again: accepted, and nothing changes
    after = json.loads(control_plane.kubectl("get", "daemonset", "-n", NAMESPACE, "-o", "json"))
    assert [d["metadata"]["generation"] for d in before["items"]] == \
        [d["metadata"]["generation"] for d in after["items"]]
    # The server took every field we sent (an unknown field would be dropped or refused).
    (agent,) = [d for d in after["items"] if d["metadata"]["name"] == "netweft"]
    mount = [m for m in agent["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
             if m["mountPath"] == "/run/netns"]
    assert mount[0]["mountPropagation"] == "HostToContainer"


def _can(plane: ControlPlane, config: Path, verb: str, resource: str,
         subresource: str = "") -> bool:
    """``kubectl auth can-i`` as that identity (prints yes/no; exits 1 for no)."""
    assert plane.binaries is not None
    args = [plane.binaries.kubectl, f"--kubeconfig={config}", "auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def _all_resource_rules(plane: ControlPlane, config: Path) -> set[tuple[str, str]]:
    """(resource, verb) pairs the identity may use on the API's resources, from a
    SelfSubjectRulesReview."""
    review = json.loads(plane.kubectl(
        "create", "--validate=false", "-f", "-", "-o", "json", kubeconfig_path=config,
        input=json.dumps({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": "default"}})))
    pairs = set()
    for rule in review["status"]["resourceRules"]:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                name = f"{resource}.{group}" if group else resource
                for verb in rule["verbs"]:
                    pairs.add((name, verb))
    return pairs


def _resource_rules(plane: ControlPlane, config: Path, tmp_path: Path) -> set[tuple[str, str]]:
    """The identity's rules less those of a service account bound to nothing (what the default
    roles give every authenticated identity: self reviews, ClusterTrustBundles, ...)."""
    try:
        plane.kubectl("create", "serviceaccount", "netweft-baseline", "-n", NAMESPACE)
    except ControlPlaneError as exc:
        if "AlreadyExists" not in str(exc) and "already exists" not in str(exc):
            raise
    baseline = _all_resource_rules(plane, plane.token_kubeconfig(
        NAMESPACE, "netweft-baseline", tmp_path / "baseline.kubeconfig"))
    return _all_resource_rules(plane, config) - baseline


def test_proxy_service_account_has_enough_rbac_and_nothing_more(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    _apply(control_plane)
    proxy_config = control_plane.token_kubeconfig(NAMESPACE, "netweft-proxy",
                                                  tmp_path / "proxy.kubeconfig")
    assert _resource_rules(control_plane, proxy_config, tmp_path) == {
        ("services", "list"), ("services", "watch"),
        ("endpointslices.discovery.k8s.io", "list"),
        ("endpointslices.discovery.k8s.io", "watch")}
    for verb, resource in (("get", "services"), ("create", "services"), ("list", "pods"),
                           ("get", "secrets"), ("list", "nodes"), ("list", "endpoints")):
        assert not _can(control_plane, proxy_config, verb, resource), (verb, resource)

    async def scenario() -> None:
        cluster = Cluster(control_plane)
        try:
            ns = await cluster.namespace("rbac")
            await cluster.service(ns, "web", {"selector": {"app": "web"}, "ports": [
                {"port": 80, "targetPort": 8080, "protocol": "TCP"}]})
            await cluster.node("kube-node-rbac")
            await cluster.pod(ns, "web-0", "kube-node-rbac", "10.244.9.9", {"app": "web"},
                              {"http": 8080})
            async with running_source(proxy_config) as (source, sink):
                key = ServiceKey(ns, "web")
                await until(lambda: (key in sink.endpoints), "slices read with the token")
                await converged(cluster, sink, "the proxy's model, read with its own token")
                assert all(r.lists == 1 for r in source.reflectors)
            await cluster.delete_namespace(ns)
        finally:
            await cluster.close()

    asyncio.run(scenario())


def test_agent_service_account_reads_nodes_and_patches_node_status_only(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    _apply(control_plane)
    agent_config = control_plane.token_kubeconfig(NAMESPACE, "netweft", tmp_path / "agent.kcfg")
    assert _resource_rules(control_plane, agent_config, tmp_path) == {
        ("nodes", "get"), ("nodes", "list"), ("nodes", "watch"), ("nodes/status", "patch")}
    assert _can(control_plane, agent_config, "patch", "nodes", "status")
    for verb, resource in (("patch", "nodes"), ("update", "nodes"), ("delete", "nodes"),
                           ("list", "pods"), ("list", "services"), ("get", "secrets")):
        assert not _can(control_plane, agent_config, verb, resource), (verb, resource)


def test_every_netweft_option_in_the_daemonsets_exists_in_the_cli() -> None:
    """The agent DaemonSet once passed ``--net-config-path`` (the option is ``--net-conf-path``):
    every ``--option`` a manifest gives a netweft command must be one that command knows."""
    from click.testing import CliRunner
    from netweft.daemon.cli import main as cli
    checked = 0
    for ds in (d for d in documents() if d["kind"] == "DaemonSet"):
        for c in ds["spec"]["template"]["spec"]["containers"]:
            command = c.get("command", []) + c.get("args", [])
            if command[:1] != ["netweft"]:
                continue
            sub = [w for w in command[1:] if not w.startswith("-")][:1]
            helptext = CliRunner().invoke(cli, [*sub, "--help"]).output
            for word in command[1:]:
                if word.startswith("--"):
                    assert f"{word.split('=')[0]} " in helptext or \
                        f"{word.split('=')[0]}\n" in helptext or \
                        f"{word.split('=')[0]}," in helptext or \
                        f"{word.split('=')[0]}/" in helptext, f"{sub}: {word}"
                    checked += 1
    assert checked >= 5
