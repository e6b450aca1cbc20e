"""What a runtime sees on stdout: results per spec version, VERSION, and CNI error JSON with the
documented code for each failure (never a traceback), also under fuzzed config and env."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netweft.cni.spec import SUPPORTED_VERSIONS
from support.cni_harness import CniNode

CNI_LAUNCHERS = ("bash", "python", "inproc")

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def validate_result(res: dict, version: str) -> None:
    """The spec's result schema for ``version`` (0.3.0 ... 1.1.0)."""
    assert res["cniVersion"] == version
    assert isinstance(res["interfaces"], list) and res["interfaces"]
    for iface in res["interfaces"]:
        assert isinstance(iface["name"], str) and iface["name"]
        assert MAC_RE.match(iface["mac"]), iface  # podman needs a mac on every interface
        if "sandbox" in iface:
            assert iface["sandbox"].startswith("/")
    assert res["ips"]
    for ip in res["ips"]:
        ipaddress.ip_interface(ip["address"])
        ipaddress.ip_address(ip["gateway"])
        index = ip["interface"]
        assert isinstance(index, int) and 0 <= index < len(res["interfaces"])
        assert "sandbox" in res["interfaces"][index]  # containerd: eth0 inside the pod
        if version.startswith("0."):
            assert ip["version"] == str(ipaddress.ip_interface(ip["address"]).version)
        else:
            assert "version" not in ip
    for route in res["routes"]:
        ipaddress.ip_network(route["dst"])
        if "gw" in route:
            ipaddress.ip_address(route["gw"])
    assert isinstance(res["dns"], dict)


def validate_error(text: str) -> dict:
    err = json.loads(text)
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(err["code"], int) and err["code"] > 0
    assert isinstance(err["msg"], str) and err["msg"] and "Traceback" not in err["msg"]
    assert err["cniVersion"] in SUPPORTED_VERSIONS
    return err


def test_version_output(module_node: CniNode) -> None:
    r = module_node.call("VERSION", ifname="", config={"cniVersion": "1.0.0"})
    assert r.exit_code == 0
    info = r.json()
    assert info["cniVersion"] in info["supportedVersions"]
    assert info["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_for_each_version_validates(module_node: CniNode,
                                           module_netns_factory: Callable[[str], str],
                                           version: str) -> None:
    pod = module_netns_factory("cpod")
    cid = f"ver-{version.replace('.', '')}"
    r = module_node.call("ADD", cid, f"/run/netns/{pod}", version=version)
    assert r.exit_code == 0, r.stdout
    validate_result(r.json(), version)
    assert module_node.call("DEL", cid, f"/run/netns/{pod}", version=version).exit_code == 0


def _code(module_node: CniNode, **kw: object) -> dict:
    r = module_node.call(**kw)  # type: ignore[arg-type]
    assert r.exit_code == 1, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    return validate_error(r.stdout)


def test_malformed_json_is_code_6(module_node: CniNode) -> None:
    err = _code(module_node, command="ADD", container_id="c1", netns="/run/netns/x",
                config=b"{nope")
    assert err["code"] == 6 and "JSON" in err["msg"]


@pytest.mark.parametrize("version", ["0.2.0", "0.1.0", "9.9.9", "1.2.0"])
def test_unknown_version_is_code_1(module_node: CniNode, version: str) -> None:
    err = _code(module_node, command="ADD", container_id="c1", netns="/run/netns/x",
                config=module_node.config(version))
    assert err["code"] == 1 and version in err["msg"]


@pytest.mark.parametrize("env,field", [
    ({"CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "a b"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": "x" * 16}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a/b"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": ""}, "CNI_IFNAME"),
    ({"CNI_NETNS": "relative/path"}, "CNI_NETNS"),
    ({"CNI_NETNS": ""}, "CNI_NETNS"),
    ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND"),
    ({"CNI_ARGS": "novalue"}, "CNI_ARGS"),
])
def test_bad_env_is_code_4(module_node: CniNode, env: dict[str, str], field: str) -> None:
    base = {"container_id": "c1", "netns": "/run/netns/whatever", "ifname": "eth0"}
    extra = {}
    for key, value in env.items():
        if key == "CNI_CONTAINERID":
            base["container_id"] = value
        elif key == "CNI_IFNAME":
            base["ifname"] = value
        elif key == "CNI_NETNS":
            base["netns"] = value
        else:
            extra[key] = value
    command = extra.pop("CNI_COMMAND", "ADD")
    err = _code(module_node, command=command, extra_env=extra, **base)
    assert err["code"] == 4 and field in err["msg"]


def test_missing_subnet_env_is_code_11(module_node: CniNode) -> None:
    conf = module_node.config(subnetFile="/nonexistent-netweft/subnet.env")
    err = _code(module_node, command="ADD", container_id="c1", netns="/run/netns/x", config=conf)
    assert err["code"] == 11 and "/nonexistent-netweft/subnet.env" in err["msg"]
    r = module_node.call("STATUS", ifname="", config=conf)
    assert r.exit_code == 1 and validate_error(r.stdout)["code"] == 50
    # DEL never needs the subnet file: a pod can always be torn down
    r = module_node.call("DEL", "c1", "/run/netns/x", config=conf)
    assert r.exit_code == 0 and r.stdout == ""


def test_invalid_field_is_code_7(module_node: CniNode) -> None:
    err = _code(module_node, command="ADD", container_id="c1", netns="/run/netns/x",
                config=module_node.config(mtu="big"))
    assert err["code"] == 7 and "mtu" in err["msg"]
    err = _code(module_node, command="CHECK", container_id="c1", netns="/run/netns/x",
                config=module_node.config())
    assert err["code"] == 7 and "prevResult" in err["msg"]
    err = _code(module_node, command="GC", ifname="", config=module_node.config())
    assert err["code"] == 7 and "valid-attachments" in err["msg"]


def test_subnet_exhaustion_is_code_100(module_netns_factory: Callable[[str], str],
                                       tmp_path) -> None:
    small = CniNode(module_netns_factory("cnode"), str(tmp_path), subnet="10.244.9.1/29",
                    options={"ipMasq": False})
    small.start_server()
    try:
        pods = [module_netns_factory("cpod") for _ in range(6)]
        for i in range(5):  # .2 - .6: network .0, gateway .1 and broadcast .7 are excluded
            r = small.call("ADD", f"ex-{i}", f"/run/netns/{pods[i]}")
            assert r.exit_code == 0, r.stdout
        got = sorted(small.ip_files())
        assert got == [f"10.244.9.{i}" for i in range(2, 7)]
        r = small.call("ADD", "ex-5", f"/run/netns/{pods[5]}")
        assert r.exit_code == 1
        err = validate_error(r.stdout)
        assert err["code"] == 100 and "10.244.9.0/29" in err["msg"]
        status = small.call("STATUS", ifname="")
        assert status.exit_code == 1 and validate_error(status.stdout)["code"] == 50
        assert small.call("DEL", "ex-0", f"/run/netns/{pods[0]}").exit_code == 0
        r = small.call("ADD", "ex-5", f"/run/netns/{pods[5]}")
        assert r.exit_code == 0 and r.json()["ips"][0]["address"] == "10.244.9.2/29"
    finally:
        small.stop_server()


# -- fuzzing ------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=20)


def _configs(module_node: CniNode) -> st.SearchStrategy[object]:
    base = module_node.config()
    paths = st.sampled_from([base["dataDir"], base["subnetFile"], "relative", 5, None,
                             os.path.join(module_node.root, "other")])
    fields = {
        "cniVersion": st.one_of(st.sampled_from([*SUPPORTED_VERSIONS, "0.2.0", "x"]), text,
                                st.integers()),
        "name": st.one_of(st.just("netweft"), text, st.integers(), st.none()),
        "type": st.one_of(st.just("netweft"), text),
        "bridge": st.one_of(st.just("cni0"), st.sampled_from(["cnf0", "x" * 16, "a b", ""]),
                            st.integers()),
        "mtu": st.one_of(st.none(), st.integers(-5, 70000), text, st.booleans()),
        "isGateway": st.one_of(st.booleans(), text, st.none()),
        "isDefaultGateway": st.one_of(st.booleans(), st.integers()),
        "hairpinMode": st.one_of(st.booleans(), st.none()),
        "routes": st.one_of(st.none(), st.just([{"dst": "192.168.0.0/16"}]),
                            st.lists(st.dictionaries(st.sampled_from(["dst", "gw"]), text),
                                     max_size=2), text),
        "subnetFile": paths, "dataDir": paths,
        "runtimeConfig": st.one_of(st.none(), st.just({"ips": ["10.244.1.200/24"]}),
                                   st.dictionaries(text, text, max_size=2)),
        "prevResult": st.one_of(st.none(), st.dictionaries(text, text, max_size=2),
                                st.just({"interfaces": "x"})),
        "cni.dev/valid-attachments": st.one_of(st.none(), st.just([]),
                                               st.lists(st.dictionaries(text, text), max_size=2)),
    }
    mutated = st.fixed_dictionaries({}, optional=fields).map(lambda extra: {**base, **extra})
    return st.one_of(mutated, st.binary(max_size=40), st.just([1, 2]), text)


FUZZ = dict(deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_fuzzed_config_and_env_give_result_or_error(module_node: CniNode, module_netns_factory,
                                                    data) -> None:
    if module_node.server is None:
        pytest.skip("the in-process path is fuzzed by the next test (fewer examples: slower)")
    fuzz_once(module_node, module_netns_factory, data)


@settings(max_examples=15, **FUZZ)
@given(data=st.data())
def test_fuzzed_in_process(module_node: CniNode, module_netns_factory, data) -> None:
    if module_node.server is not None:
        pytest.skip("fuzzed through the server by the previous test")
    fuzz_once(module_node, module_netns_factory, data)


def fuzz_once(module_node: CniNode, module_netns_factory, data) -> None:
    pod = getattr(module_node, "_fuzz_pod", None) or module_netns_factory("cpod")
    module_node._fuzz_pod = pod  # type: ignore[attr-defined]
    config = data.draw(_configs(module_node))
    command = data.draw(st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC",
                                         "", "add", "BOGUS"]))
    cid = data.draw(st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z"), text))
    ifname = data.draw(st.one_of(st.sampled_from(["eth0", "net1"]), text))
    netns = data.draw(st.sampled_from([f"/run/netns/{pod}", "/run/netns/nwc-nonexistent",
                                       "", "rel"]))
    cni_args = data.draw(st.one_of(st.just(""), st.just("IP=10.244.1.9"),
                                   st.just("K8S_POD_NAME=x;NETWEFT_POD_LABELS=a=b,c=d"), text))
    if isinstance(config, str):
        config = config.encode()
    r = module_node.call(command, cid, netns, ifname, config=config,
                  extra_env={"CNI_ARGS": cni_args} if cni_args else {})
    assert "Traceback" not in r.stdout + r.stderr
    if r.exit_code == 0:
        if r.stdout.strip():
            out = json.loads(r.stdout)
            if command == "ADD":
                validate_result(out, out["cniVersion"])
            else:
                assert command == "VERSION" and "supportedVersions" in out
        else:
            assert command in ("DEL", "CHECK", "STATUS", "GC")
        if command == "ADD":  # do not pile up pods: the next example starts clean
            module_node.call("DEL", cid, netns, ifname, config=config)
    else:
        assert r.exit_code == 1
        validate_error(r.stdout)
