"""TLS and file mistakes with etcd are one line each, naming the file or the certificate problem,
exit 1, no traceback (issue 9 item 13). Real certificates (made with openssl per test), a real
etcd serving TLS with client-certificate authentication, the installed console script."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netweft.daemon.etcd_process import EtcdProcess, ServerTls  # noqa: E402
from support.tls_certs import Pki, make_pki  # noqa: E402

NETWEFT = str(Path(sys.executable).parent / "netweft")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki: Pki) -> Iterator[EtcdProcess]:
    """etcd on localhost serving TLS (certificate for DNS:localhost only), demanding client
    certificates signed by ``pki.ca``."""
    server = EtcdProcess(host="localhost", peer_host="127.0.0.1", tls=ServerTls(
        str(pki.server[0]), str(pki.server[1]), str(pki.ca),
        probe=(str(pki.client[0]), str(pki.client[1]), str(pki.ca))))
    server.start()
    try:
        yield server
    finally:
        server.remove()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NETWEFT, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_right_certificates_work(pki: Pki, tls_etcd: EtcdProcess) -> None:
    r = run("--etcd-endpoints", tls_etcd.endpoint, "--etcd-cafile", pki.ca,
            "--etcd-certfile", pki.client[0], "--etcd-keyfile", pki.client[1], "leases", "list")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_wrong_ca_says_the_server_certificate_is_not_trusted(pki: Pki,
                                                             tls_etcd: EtcdProcess) -> None:
    line = one_line_error(run("--etcd-endpoints", tls_etcd.endpoint, "--etcd-cafile",
                              pki.other_ca, "--etcd-certfile", pki.client[0],
                              "--etcd-keyfile", pki.client[1], "leases", "list"))
    assert "certificate is not trusted" in line and str(pki.other_ca) in line, line
    assert "unreachable" not in line


def test_missing_client_certificate_is_named(pki: Pki, tls_etcd: EtcdProcess) -> None:
    line = one_line_error(run("--etcd-endpoints", tls_etcd.endpoint, "--etcd-cafile", pki.ca,
                              "config", "show"))
    assert "wants a TLS client certificate" in line and "--etcd-certfile" in line, line


def test_client_certificate_from_an_untrusted_ca_is_named(pki: Pki,
                                                           tls_etcd: EtcdProcess) -> None:
    line = one_line_error(run("--etcd-endpoints", tls_etcd.endpoint, "--etcd-cafile", pki.ca,
                              "--etcd-certfile", pki.stranger[0],
                              "--etcd-keyfile", pki.stranger[1], "leases", "list"))
    assert "rejected the client certificate" in line and str(pki.stranger[0]) in line, line


def test_a_name_the_certificate_does_not_list_is_named(pki: Pki,
                                                       tls_etcd: EtcdProcess) -> None:
    by_ip = tls_etcd.endpoint.replace("localhost", "127.0.0.1")
    line = one_line_error(run("--etcd-endpoints", by_ip, "--etcd-cafile", pki.ca,
                              "--etcd-certfile", pki.client[0], "--etcd-keyfile",
                              pki.client[1], "leases", "list"))
    assert "not valid for '127.0.0.1'" in line, line


def test_plain_http_to_a_tls_etcd_hints_at_tls(tls_etcd: EtcdProcess) -> None:
    # By address: "localhost" resolves to ::1 too, where nothing listens, and that refusal could
    # be the last error reported.
    plain = f"http://127.0.0.1:{tls_etcd.client_port}"
    line = one_line_error(run("--etcd-endpoints", plain, "leases", "list"))
    assert "unreachable" in line and "https://" in line, line


@pytest.mark.parametrize("option", ["--etcd-cafile", "--etcd-certfile", "--etcd-keyfile"])
def test_missing_file_is_named_before_connecting(pki: Pki, tmp_path: Path, option: str) -> None:
    files = {"--etcd-cafile": pki.ca, "--etcd-certfile": pki.client[0],
             "--etcd-keyfile": pki.client[1]}
    files[option] = tmp_path / "nowhere.pem"
    args = [a for opt, path in files.items() for a in (opt, path)]
    line = one_line_error(run("--etcd-endpoints", "https://localhost:1", *args, "leases", "list"))
    assert line == f"netweft: {option} {tmp_path / 'nowhere.pem'}: no such file"


def test_broken_files_are_named(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    line = one_line_error(run("--etcd-endpoints", "https://localhost:1", "--etcd-cafile",
                              garbage, "leases", "list"))
    assert line == f"netweft: --etcd-cafile {garbage}: holds no valid PEM certificate"
    line = one_line_error(run("--etcd-endpoints", "https://localhost:1", "--etcd-cafile",
                              pki.ca, "--etcd-certfile", pki.client[0],
                              "--etcd-keyfile", pki.stranger[1], "leases", "list"))
    assert line == (f"netweft: --etcd-keyfile {pki.stranger[1]}: is not the key of the "
                    f"certificate in --etcd-certfile {pki.client[0]}")
    line = one_line_error(run("--etcd-endpoints", "https://localhost:1", "--etcd-cafile",
                              tmp_path, "leases", "list"))
    assert line == f"netweft: --etcd-cafile {tmp_path}: is a directory, not a PEM file"


def test_long_running_commands_refuse_a_tls_mistake_at_start(pki: Pki, tls_etcd: EtcdProcess,
                                                             tmp_path: Path) -> None:
    """The daemon and the proxy would otherwise retry forever; etcd being down is different
    (they wait), but no retry fixes a certificate."""
    common = ["--etcd-endpoints", tls_etcd.endpoint, "--etcd-cafile", pki.other_ca]
    daemon = run(*common, "daemon", "--subnet-file", tmp_path / "subnet.env",
                 "--state-dir", tmp_path / "state", "--metrics-addr", "", "--cni-socket", "")
    assert "certificate is not trusted" in one_line_error(daemon)
    proxy = run(*common, "proxy", "--source", "etcd", "--cluster-cidr", "10.244.0.0/16")
    assert "certificate is not trusted" in one_line_error(proxy)


def test_a_reset_right_after_the_handshake_names_the_client_certificate(pki: Pki) -> None:
    """etcd rejecting a client certificate under TLS 1.3 sends an alert after our handshake has
    finished; when its close reaches us as a reset first, the alert is lost and the error used to
    be "unreachable (Connection reset by peer)" (seen once in CI with
    test_client_certificate_from_an_untrusted_ca_is_named). etcd produces that ordering only by
    race, so a stand-in server (stdlib ssl; it is not etcd) completes the handshake and resets
    the connection at the first request, every time."""
    import asyncio
    import socket
    import ssl
    import struct
    import threading

    from netweft.kv.etcd import EtcdClient, EtcdSettings
    from netweft.kv.types import EtcdError

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server[0], pki.server[1])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                conn = ctx.wrap_socket(raw, server_side=True)  # takes over raw's descriptor
            except OSError:
                raw.close()
                continue
            try:
                conn.recv(1)  # the request's first byte: the client thinks all is well
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            conn.close()  # no close_notify, SO_LINGER 0: a reset, not a FIN

    threading.Thread(target=serve, daemon=True).start()

    async def call() -> str:
        settings = EtcdSettings((f"https://localhost:{port}",), cafile=str(pki.ca),
                                certfile=str(pki.stranger[0]), keyfile=str(pki.stranger[1]))
        async with EtcdClient(settings) as etcd:
            etcd.connect()
            try:
                await etcd.current_revision()
            except EtcdError as exc:
                return str(exc)
        return "no error"

    try:
        line = asyncio.run(call())
    finally:
        listener.close()
    assert "rejected the client certificate" in line and str(pki.stranger[0]) in line, line
