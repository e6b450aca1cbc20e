"""Pure pieces of the plugin: spec rendering, env/config validation, the shim's wire format,
names, and the installer (files only, in tmp dirs)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from ipaddress import ip_interface

import click
import pytest
from click.testing import CliRunner
from netweft.cni import config as cniconfig
from netweft.cni.env import parse_env
from netweft.cni.install import CONF_NAME, MARKER, install, uninstall
from netweft.cni.server import _read_request
from netweft.cni.shim import call_server, encode_request, socket_path_of
from netweft.cni.spec import (
    CniError,
    Interface,
    IPConfig,
    Result,
    Route,
    parse_result,
    render_result,
)
from netweft.cni.wiring import host_veth_name, is_host_veth_name, pod_mac


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sample() -> Result:
    return Result(
        [Interface("cni0", "0a:58:0a:f4:01:01"), Interface("nwabc", "aa:bb:cc:dd:ee:ff"),
         Interface("eth0", "0a:58:0a:f4:01:05", "/run/netns/p", 1450)],
        [IPConfig(ip_interface("10.244.1.5/24"), "10.244.1.1", 2)],
        [Route("0.0.0.0/0", "10.244.1.1")])


def test_render_per_version() -> None:
    old = render_result(sample(), "0.4.0")
    assert old["ips"][0]["version"] == "4" and "mtu" not in old["interfaces"][2]
    new = render_result(sample(), "1.0.0")
    assert "version" not in new["ips"][0] and "mtu" not in new["interfaces"][2]
    assert render_result(sample(), "1.1.0")["interfaces"][2]["mtu"] == 1450
    back = parse_result(json.loads(json.dumps(new)))
    assert back.ips[0].interface == 2 and back.interfaces[2].sandbox == "/run/netns/p"


def test_env_parsing() -> None:
    env = parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc_1.2-3",
                     "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                     "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;"
                                 "NETWEFT_POD_LABELS=app=web,tier=fe;IP=10.0.0.5"})
    assert env.pod_namespace == "ns" and env.pod_name == "p"
    assert env.pod_labels == {"app": "web", "tier": "fe"}
    assert env.requested_ip == "10.0.0.5"
    assert parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0"})
    assert parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    with pytest.raises(CniError) as exc:
        parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_IFNAME": "eth0"})
    assert exc.value.code == 4 and "CNI_NETNS" in exc.value.msg


def test_named_ports_come_from_cni_args_beside_the_labels() -> None:
    env = parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_IFNAME": "eth0",
                     "CNI_NETNS": "/run/netns/x",
                     "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
                                 "NETWEFT_POD_LABELS=app=web,tier=front;"
                                 "NETWEFT_PORTS=http:8080,dns:53"})
    assert env.pod_labels == {"app": "web", "tier": "front"}
    assert env.pod_ports == {"http": 8080, "dns": 53}


@pytest.mark.parametrize("ports", ["http", "http:0", "http:70000", ":80", "http:8o"])
def test_malformed_named_ports_refuse_the_add_up_front(ports: str) -> None:
    with pytest.raises(CniError) as info:
        parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_IFNAME": "eth0",
                   "CNI_NETNS": "/run/netns/x", "CNI_ARGS": f"NETWEFT_PORTS={ports}"})
    assert info.value.code == 4 and "NETWEFT_PORTS" in info.value.msg


def test_config_defaults_and_errors() -> None:
    conf = cniconfig.parse({"cniVersion": "1.0.0", "name": "n", "type": "netweft"})
    assert conf.bridge == "cni0" and conf.is_gateway and conf.is_default_gateway
    assert conf.mtu is None and conf.ip_masq is None
    assert conf.subnet_file == "/run/flannel/subnet.env"
    assert conf.socket_path == "/run/netweft/cni.sock"
    assert conf.log_file == "/var/log/netweft/cni.log"
    for bad, word in [({"isGateway": "yes"}, "isGateway"), ({"mtu": 10}, "mtu"),
                      ({"dataDir": "rel"}, "dataDir"), ({"bridge": "x" * 16}, "bridge"),
                      ({"routes": [{"dst": "nope"}]}, "routes"), ({"name": ""}, "name")]:
        with pytest.raises(CniError) as exc:
            cniconfig.parse({"cniVersion": "1.0.0", "name": "n", **bad})
        assert exc.value.code == 7 and word in exc.value.msg
    gc = cniconfig.parse({"cniVersion": "1.1.0", "name": "n", "cni.dev/attachments": [
        {"containerID": "c", "ifname": "eth0"}]})
    assert gc.valid_attachments == [("c", "eth0")]


def test_shim_reads_socket_path_without_json_module() -> None:
    assert socket_path_of(b' {"name":"x","socketPath":"/run/a.sock","n":[1,2.5]}') == "/run/a.sock"
    assert socket_path_of(b'{"socketPath": 7}') == ""
    assert socket_path_of(b"garbage socketPath") == ""
    assert socket_path_of(b'{"name":"x"}') == ""


def test_wire_format_roundtrip(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen = {}

    def serve() -> None:
        conn, _ = listener.accept()
        seen["env"], seen["stdin"] = _read_request(conn)
        body = b'{"ok":true}\n'
        conn.sendall(b"0 %d\n" % len(body) + body)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    stdin = json.dumps({"cniVersion": "1.1.0", "x": "é" * 5000}).encode()
    code, out = call_server(path, encode_request({"CNI_COMMAND": "ADD", "CNI_ARGS": "a=b;c=d"},
                                                 stdin))
    t.join()
    listener.close()
    assert (code, out) == (0, b'{"ok":true}\n')
    assert seen == {"env": {"CNI_COMMAND": "ADD", "CNI_ARGS": "a=b;c=d"}, "stdin": stdin}


def test_names() -> None:
    name = host_veth_name("0123456789abcdef" * 4, "eth0")
    assert len(name) <= 15 and is_host_veth_name(name)
    assert name == host_veth_name("0123456789abcdef" * 4, "eth0")
    assert name != host_veth_name("0123456789abcdef" * 4, "net1")
    assert pod_mac([ip_interface("10.244.1.5/24")], "x") == "0a:58:0a:f4:01:05"


def test_install_and_uninstall(tmp_path) -> None:
    bin_dir, conf_dir = str(tmp_path / "bin"), str(tmp_path / "conf")
    done = install(bin_dir, conf_dir, subnet_file="/x/subnet.env", data_dir="/x/data",
                   socket_path="/x/cni.sock", log_file="/x/cni.log", mtu=1400)
    mode = os.stat(done.executable).st_mode
    assert stat.S_IMODE(mode) == 0o755
    text = read(done.executable)  # the bash launcher, falling back to the Python one
    assert text.startswith("#!/bin/bash -p\n") and MARKER in text
    assert "nw_port=1019\n" in text and "nw_token='/x/cni.token'\n" in text
    assert f"nw_py='{bin_dir}/netweft-py'\n" in text and "@PORT@" not in text
    py_text = read(os.path.join(bin_dir, "netweft-py"))
    assert py_text.startswith("#!") and " -IS\n" in py_text.splitlines()[0] + "\n"
    assert MARKER in py_text
    conf = json.loads(read(done.conflist))
    assert done.conflist.endswith(CONF_NAME) and conf["cniVersion"] == "1.0.0"
    plugin = conf["plugins"][0]
    assert plugin["type"] == "netweft" and plugin["mtu"] == 1400
    assert plugin["subnetFile"] == "/x/subnet.env" and plugin["socketPath"] == "/x/cni.sock"
    assert plugin["capabilities"] == {"ips": True}
    # no temp files left; the reference plugins the chain and containerd need came along
    assert sorted(os.listdir(bin_dir)) == ["loopback", "netweft", "netweft-py", "portmap"]
    assert sorted(uninstall(bin_dir, conf_dir)) == sorted(
        [done.executable, os.path.join(bin_dir, "netweft-py"), done.conflist])
    assert sorted(os.listdir(bin_dir)) == ["loopback", "portmap"]  # shared: left in place
    assert os.listdir(conf_dir) == []


def test_uninstall_leaves_foreign_executable(tmp_path) -> None:
    (tmp_path / "netweft").write_text("#!/bin/sh\necho not ours\n")
    assert uninstall(str(tmp_path), str(tmp_path)) == []
    assert (tmp_path / "netweft").exists()


def test_cli_install_uninstall(tmp_path) -> None:
    from netweft.daemon.commands import cni as cni_commands

    @click.group()
    def root() -> None:
        pass

    cni_commands.register(root)
    runner = CliRunner()
    res = runner.invoke(root, ["cni", "install", "--bin-dir", str(tmp_path / "b"),
                               "--conf-dir", str(tmp_path / "c"), "--subnet-file", "/s/env",
                               "--data-dir", "/s/data", "--socket-path", "/s/sock",
                               "--log-file", "/s/log", "--no-ip-masq"])
    assert res.exit_code == 0, res.output
    plugin = json.loads(read(str(tmp_path / "c" / CONF_NAME)))["plugins"][0]
    assert plugin["ipMasq"] is False and plugin["dataDir"] == "/s/data"
    res = runner.invoke(root, ["cni", "uninstall", "--bin-dir", str(tmp_path / "b"),
                               "--conf-dir", str(tmp_path / "c")])
    assert res.exit_code == 0 and res.output.count("removed") == 3


def test_tcp_wire_format_roundtrip_and_token_check() -> None:
    from netweft.cni import tcpwire
    from netweft.cni.server import read_tcp_request

    token = "ab" * 32
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "a=b;c=d", "NETWEFT_CNI_DEFAULT_LOG": "/l"}
    for stdin in (b"", b'{"x":"\xc3\xa9"}\n\n\n', b"\n" * 3):
        a, b = socket.socketpair()
        with a, b:
            a.sendall(tcpwire.encode_request(token, env, stdin))
            assert read_tcp_request(b, token.encode()) == (env, stdin)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(tcpwire.encode_request("cd" * 32, env, b"{}"))
        with pytest.raises(ValueError, match="bad token"):
            read_tcp_request(b, token.encode())
    assert not tcpwire.token_ok(b"NWTCP1 ", b"")  # no token yet: nothing matches
    with pytest.raises(ValueError):
        tcpwire.parse_header([b"CNI_COMMAND=ADD"])
    assert tcpwire.default_token_file("/run/netweft/cni.sock") == "/run/netweft/cni.token"


def test_install_tcp_port_options(tmp_path) -> None:
    done = install(str(tmp_path / "b"), str(tmp_path / "c"), socket_path="/s/x.sock",
                   tcp_port=0, token_file="/t/tok")
    text = read(done.executable)
    assert "nw_port=0\n" in text and "nw_token='/t/tok'\n" in text
    with pytest.raises(ValueError, match="tcp_port"):
        install(str(tmp_path / "b"), str(tmp_path / "c"), tcp_port=8080)
