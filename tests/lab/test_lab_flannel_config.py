"""Pure parts of the lab's flanneld nodes: the flanneld command line and the bridge conflist
written from flanneld's subnet.env (what Flannel's CNI plugin hands to bridge)."""

from __future__ import annotations

import pytest
from netweft.daemon.lab import flannel
from netweft.daemon.lab.topology import LabSpec, plan

SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_subnet_env_parses_flannels_lines() -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV + "\n# comment\n")
    assert env == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.7.1/24",
                   "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}


def test_bridge_conflist_is_flannels_delegation() -> None:
    conf = flannel.bridge_conflist(flannel.parse_subnet_env(SUBNET_ENV), "/d")
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0"
    assert bridge["isGateway"] and bridge["isDefaultGateway"] and bridge["hairpinMode"]
    assert bridge["ipMasq"] is False          # flanneld --ip-masq masquerades already
    assert bridge["mtu"] == 1450
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.244.7.0/24"}]],
                              "routes": [{"dst": "10.244.0.0/16"}], "dataDir": "/d"}


def test_bridge_masquerades_when_flanneld_does_not() -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false"))
    assert flannel.bridge_conflist(env, "/d")["plugins"][0]["ipMasq"] is True


def test_bridge_conflist_needs_the_subnet() -> None:
    with pytest.raises(KeyError):
        flannel.bridge_conflist({"FLANNEL_NETWORK": "10.244.0.0/16"}, "/d")


def test_flanneld_runs_in_etcd_mode_on_the_nodes_paths() -> None:
    topo = plan(LabSpec(prefix="nwfx", nodes=2, flannel_nodes=1, state_root="/tmp/st"))
    cmd = flannel.flanneld_command("/b/flannel", topo, topo.nodes[0])
    assert cmd[0] == "/b/flannel"
    assert "--etcd-endpoints=http://192.0.2.2:2379" in cmd
    assert "--etcd-prefix=/coreos.com/network" in cmd
    assert "--subnet-file=/tmp/st/nwfx/nodes/node1/subnet.env" in cmd
    assert "--public-ip=192.0.2.11" in cmd and "--ip-masq" in cmd
    assert not any(a.startswith("--kube") for a in cmd)


def test_missing_build_names_the_script(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(flannel.FlannelMissing, match="deploy/flannel.sh"):
        flannel.load_build(str(tmp_path / "none.env"))
    bad = tmp_path / "f.env"
    bad.write_text(f"FLANNELD={tmp_path}/x\nFLANNEL_VERSION=v0\nCNI_PLUGINS_DIR={tmp_path}\n"
                   "CNI_PLUGINS_VERSION=v1\n")
    with pytest.raises(flannel.FlannelMissing, match="not executable"):
        flannel.load_build(str(bad))
