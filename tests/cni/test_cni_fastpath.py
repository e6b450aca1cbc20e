"""The bash launcher's TCP fast path: only the token holder gets an answer, a non-root caller
gets the slower path's normal behaviour, every failure of the fast path falls back with stdin
intact, and a runtime sees the same bytes whichever path served it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netweft.cni import nsenter, tcpwire
from netweft.cni.invoke import PluginCall, invoke
from netweft.cni.server import CniServer, _read_request, read_tcp_request
from support.cni_harness import CniNode

CNI_NODE = {"options": {"ipMasq": False}, "tcp_timeout": 2}

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True,
                         check=True).stdout
    return [link["ifname"] for link in json.loads(out)]


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    fd = nsenter.open_netns(f"/run/netns/{ns}")
    try:
        with nsenter.entered(fd):
            return fn()
    finally:
        os.close(fd)


def send_raw(n: CniNode, request: bytes) -> bytes:
    """Send ``request`` to the node's TCP listener; everything the server answers."""
    def go() -> bytes:
        with socket.create_connection(("127.0.0.1", n.tcp_port), timeout=10) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            return got
    return in_netns(n.node_netns, go)


def token(n: CniNode) -> str:
    with open(n.token_file) as f:
        return f.read().strip()


def test_token_file_is_root_only_and_fresh_per_start(node: CniNode) -> None:
    node.start_server()
    st = os.stat(node.token_file)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    first = token(node)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    node.stop_server()
    assert not os.path.exists(node.token_file)
    node.start_server()
    assert token(node) != first


def test_wrong_or_missing_token_gets_no_answer_and_changes_nothing(
        node: CniNode, netns_factory: Callable[[str], str]) -> None:
    node.start_server()
    pod = netns_factory("fpod")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "tok1", "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_IFNAME": "eth0", "CNI_PATH": node.bin_dir}
    conf = json.dumps(node.config()).encode()
    good = token(node)
    wrong = "0" * 64 if good != "0" * 64 else "1" * 64
    no_token_line = tcpwire.encode_request(good, env, conf).split(b"\n", 1)[1]
    for request in (tcpwire.encode_request(wrong, env, conf),
                    tcpwire.encode_request(good[:-1], env, conf),
                    tcpwire.encode_request("", env, conf),
                    no_token_line,
                    b"NWCNI1 10 10\n" + conf):  # the unix socket's framing
        assert send_raw(node, request) == b""
    # a non-root peer is dropped even with the right token (the uid of its socket is checked)
    sent = subprocess.run(["ip", "netns", "exec", node.node_netns, *NOBODY, "bash", "-c",
                           f'exec 3<>/dev/tcp/127.0.0.1/{node.tcp_port}; cat >&3; '
                           'IFS= read -r -d "" reply <&3; printf %s "$reply"'],
                          input=tcpwire.encode_request(good, env, conf), capture_output=True,
                          timeout=30)
    assert sent.stdout == b""
    assert node.ip_files() == []
    assert links(node.node_netns) == ["lo"]
    assert links(pod) == ["lo"]
    with open(node.log_file) as f:
        log = f.read()
    assert " ADD tok1/" not in log and log.count("tcp request dropped") == 6
    assert "peer uid 65534 may not" in log
    # the right token on the same listener works
    reply = send_raw(node, tcpwire.encode_request(good, env, conf))
    head, _, body = reply.partition(b"\n")
    assert head.split(b" ")[0] == b"0" and int(head.split(b" ")[1]) == len(body)
    assert json.loads(body)["ips"] and len(node.ip_files()) == 1


def test_non_root_gets_the_slow_paths_behaviour(node: CniNode,
                                                netns_factory: Callable[[str], str]) -> None:
    node.start_server()
    pod = netns_factory("fpod")
    read_token = subprocess.run(["ip", "netns", "exec", node.node_netns, *NOBODY, "bash", "-c",
                                 f"read -r t < {node.token_file}"], capture_output=True)
    assert read_token.returncode != 0 and b"Permission denied" in read_token.stderr

    def as_nobody(exe: str) -> subprocess.CompletedProcess[bytes]:
        call = PluginCall(exe, "ADD", node.config(), "nobody1", f"/run/netns/{pod}",
                          cni_path=node.bin_dir)
        return subprocess.run(["ip", "netns", "exec", node.node_netns, *NOBODY, "bash", "-c",
                               'exec "$0"', exe], input=call.stdin(), env=call.env(),
                              capture_output=True, timeout=120)

    # the slower path as a non-root runtime would run it: a CNI error JSON (code 4/5/999) when
    # this installation's interpreter is executable for the user; else the bash launcher
    # answers its failed exec with CNI error JSON itself (here the venv's python lives under
    # /root, 0700), where the Python launcher run directly can only fail exec (126). Never a
    # result, never bash's 126 from the installed executable (issue 9 item 13).
    fast, slow = as_nobody(node.executable), as_nobody(node.python_executable)
    assert fast.returncode == 1, fast
    err = json.loads(fast.stdout)
    assert isinstance(err["code"], int) and "Traceback" not in err["msg"]
    assert slow.returncode in (1, 126), slow
    if slow.returncode == 1:
        assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)
    assert node.ip_files() == [] and links(pod) == ["lo"]
    if os.path.exists(node.log_file):
        with open(node.log_file) as f:
            assert "nobody1" not in f.read()  # the server never saw it


class FakeServers:
    """A TCP listener and a unix socket in the node namespace that record what they get."""

    def __init__(self, n: CniNode, tcp_mode: str, unix_body: bytes) -> None:
        self.node, self.tcp_mode, self.unix_body = n, tcp_mode, unix_body
        self.tcp_seen: list[tuple[dict[str, str], bytes]] = []
        self.unix_seen: list[tuple[dict[str, str], bytes]] = []
        self.token = "ab" * 32
        tcpwire.write_token(n.token_file, self.token)
        subprocess.run(["ip", "-n", n.node_netns, "link", "set", "lo", "up"], check=True)

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", n.tcp_port))
            s.listen(4)
            return s

        self.tcp = in_netns(n.node_netns, listen)
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(n.socket_path)
        self.unix.listen(4)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._tcp, daemon=True),
                        threading.Thread(target=self._unix, daemon=True)]
        for t in self.threads:
            t.start()

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                self.tcp_seen.append(read_tcp_request(conn, self.token.encode()))
                if self.tcp_mode == "partial":
                    conn.sendall(b'0 500\n{"cniVersion":')
                elif self.tcp_mode == "silent":
                    self.stop.wait(30)
                elif self.tcp_mode == "full":
                    conn.sendall(b"0 %d\n" % len(self.unix_body) + self.unix_body)

    def _unix(self) -> None:
        while True:
            try:
                conn, _ = self.unix.accept()
            except OSError:
                return
            with conn:
                self.unix_seen.append(_read_request(conn))
                conn.sendall(b"0 %d\n" % len(self.unix_body) + self.unix_body)

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        for s in (self.tcp, self.unix):
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self.threads:
            t.join(timeout=10)
        os.unlink(self.node.socket_path)


@pytest.fixture
def fakes(node: CniNode) -> Iterator[Callable[[str, bytes], FakeServers]]:
    made: list[FakeServers] = []

    def make(mode: str, body: bytes) -> FakeServers:
        made.append(FakeServers(node, mode, body))
        return made[-1]

    yield make
    for f in made:
        f.close()


STDINS = {
    "trailing-newlines": b'{"cniVersion":"1.1.0","name":"x","t":"\xc3\xa9 \\\\ %s"}\n\n\n',
    "empty": b"",
    "nul": b'{"cniVersion":"1.1.0"}\x00tail\n',
}
BODY = b'{"cniVersion":"1.1.0","x":"%s \\\\ \\n","y":"\xc3\xa9"}\n\n'


@pytest.mark.parametrize("mode", ["partial", "close", "silent"])
@pytest.mark.parametrize("stdin", list(STDINS))
def test_fast_path_failure_falls_back_with_stdin_intact(node: CniNode, fakes, mode: str,
                                                        stdin: str) -> None:
    data = STDINS[stdin]
    f = fakes(mode, BODY)
    r = invoke(PluginCall(node.executable, "VERSION", data, node_netns=node.node_netns,
                          extra_env={"CNI_ARGS": "K8S_POD_NAME=a;X=b c"}), timeout=60)
    assert r.exit_code == 0 and r.stdout.encode() == BODY
    # the Python launcher got exactly the runtime's stdin and environment
    assert len(f.unix_seen) == 1 and f.unix_seen[0][1] == data
    env = f.unix_seen[0][0]
    assert env["CNI_COMMAND"] == "VERSION" and env["CNI_ARGS"] == "K8S_POD_NAME=a;X=b c"
    if stdin == "nul":  # not CNI JSON: the bash path does not even try
        assert f.tcp_seen == []
    else:
        assert len(f.tcp_seen) == 1
        tcp_env, tcp_data = f.tcp_seen[0]
        assert tcp_env.pop("NETWEFT_CALLER_PID").isdigit()  # the launcher's pid (callerns)
        assert (tcp_env, tcp_data) == (env, data)


@pytest.mark.parametrize("stdin", ["trailing-newlines", "empty"])
def test_fast_path_reply_is_passed_through_exactly(node: CniNode, fakes, stdin: str) -> None:
    f = fakes("full", BODY)
    r = subprocess.run(["ip", "netns", "exec", node.node_netns, node.executable],
                       input=STDINS[stdin], env={"CNI_COMMAND": "VERSION"},
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, BODY, b"")
    assert f.unix_seen == [] and len(f.tcp_seen) == 1
    assert f.tcp_seen[0][0].pop("NETWEFT_CALLER_PID").isdigit()
    assert f.tcp_seen == [
        ({"CNI_COMMAND": "VERSION", "NETWEFT_CNI_DEFAULT_LOG": node.log_file}, STDINS[stdin])]


def test_other_socket_path_in_config_skips_the_fast_path(node: CniNode, fakes) -> None:
    f = fakes("full", BODY)
    conf = json.dumps({**node.config(), "socketPath": node.socket_path + ".other"}).encode()
    r = invoke(PluginCall(node.executable, "VERSION", conf, node_netns=node.node_netns))
    assert f.tcp_seen == [] and f.unix_seen == []  # nothing listens there: in-process
    assert r.exit_code == 0 and json.loads(r.stdout)["supportedVersions"]


def _mask_host_mac(text: str) -> str:
    res = json.loads(text)
    for iface in res["interfaces"]:
        if iface["name"].startswith("nw"):  # the host veth's MAC is the kernel's random one
            text = text.replace(iface["mac"], "MAC")
    return text


def test_stdout_is_byte_identical_between_paths(node: CniNode,
                                                netns_factory: Callable[[str], str]) -> None:
    node.start_server()
    pod = f"/run/netns/{netns_factory('fpod')}"
    outputs: dict[str, list[str]] = {}
    for exe in (node.executable, node.python_executable):
        outs = outputs.setdefault(exe, [])
        for version in ("0.3.1", "1.1.0"):
            add = node.call("ADD", "same1", pod, version=version, executable=exe,
                            args={"IP": "10.244.1.50"})  # host-local would pick the next IP
            assert add.exit_code == 0, add.stdout
            outs.append(_mask_host_mac(add.stdout))
            assert node.call("DEL", "same1", pod, version=version, executable=exe).exit_code == 0
        for kw in ({"config": {"cniVersion": "1.0.0"}}, {}, {"config": b"{nope"}):
            r = node.call("VERSION", ifname="", executable=exe, **kw)  # type: ignore[arg-type]
            outs.append(f"{r.exit_code} {r.stdout}")
        r = node.call("ADD", "bad/id", pod, executable=exe)
        outs.append(f"{r.exit_code} {r.stdout}")
    assert outputs[node.executable] == outputs[node.python_executable]
    with open(node.log_file) as f:
        log = f.read()
    assert log.count(" tcp ADD same1/eth0 code=0") == 2  # the bash launcher used TCP
    assert log.count(" server ADD same1/eth0 code=0") == 2  # the Python one the unix socket


def test_no_fast_path_where_the_port_is_not_privileged(node: CniNode, fakes) -> None:
    subprocess.run(["ip", "netns", "exec", node.node_netns, "sysctl", "-qw",
                    "net.ipv4.ip_unprivileged_port_start=1000"], check=True)
    # the launcher does not trust the port (anyone could have bound it) ...
    f = fakes("full", BODY)
    r = invoke(PluginCall(node.executable, "VERSION", b"{}", node_netns=node.node_netns))
    assert r.exit_code == 0 and f.tcp_seen == [] and len(f.unix_seen) == 1
    f.close()
    # ... and the server does not listen on it nor write a token
    os.unlink(node.token_file)
    server = CniServer(node.socket_path, tcp_port=node.tcp_port, default_log=node.log_file)
    in_netns(node.node_netns, server.bind)
    try:
        assert server.token == b"" and "ip_unprivileged_port_start" in server.tcp_error
        assert not os.path.exists(node.token_file)
    finally:
        server.stop()
