"""Run a real Kubernetes control plane: etcd + kube-apiserver (+ kube-controller-manager).

The binaries are the ones ``deploy/controlplane.sh`` builds from the published Go modules
(``$NETWEFT_CACHE/controlplane.env`` names their directories). Everything runs on free loopback
ports with real TLS (a throwaway CA made with the ``openssl`` CLI), client-certificate
authentication for the admin and the controller-manager, RBAC (+ Node) authorization and
service-account tokens signed by a key of its own. Processes are stopped by their PID.

Used by the tests (tests/conftest.py ``control_plane``) and meant for the lab's Kubernetes mode.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netweft.daemon.etcd_process import EtcdProcess, free_port

ENV_FILE = "controlplane.env"


class ControlPlaneError(RuntimeError):
    """The control plane is not built, or one of its processes failed (message: one line)."""


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Paths of the built programs (deploy/controlplane.sh)."""

    etcd: str
    etcdctl: str
    apiserver: str
    controller_manager: str
    kubectl: str
    kube_proxy: str
    version: str

    @classmethod
    def find(cls) -> ControlPlaneBinaries:
        """Read ``$NETWEFT_CACHE/controlplane.env`` (NETWEFT_CACHE defaults to
        /var/cache/netweft). Raises ControlPlaneError naming the missing file or program."""
        cache = Path(os.environ.get("NETWEFT_CACHE", "/var/cache/netweft"))
        env_file = cache / ENV_FILE
        try:
            text = env_file.read_text()
        except OSError:
            raise ControlPlaneError(f"{env_file} is missing: build the control plane with "
                                    "deploy/controlplane.sh (deploy/setup.sh runs it)") from None
        env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        etcd_bin, kube_bin = Path(env.get("NETWEFT_ETCD_BIN", "")), Path(env.get(
            "NETWEFT_KUBE_BIN", ""))
        found = cls(
            etcd=str(etcd_bin / "etcd"), etcdctl=str(etcd_bin / "etcdctl"),
            apiserver=str(kube_bin / "kube-apiserver"),
            controller_manager=str(kube_bin / "kube-controller-manager"),
            kubectl=str(kube_bin / "kubectl"), kube_proxy=str(kube_bin / "kube-proxy"),
            version=env.get("NETWEFT_KUBE_VERSION", "?"))
        for path in (found.etcd, found.apiserver):
            found.require(path)
        return found

    def require(self, path: str) -> str:
        """``path`` if it is an executable; else ControlPlaneError (one line)."""
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"{path} is missing: run deploy/controlplane.sh")
        return path


# --- PKI -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files in one directory: a CA, the apiserver's serving pair, the service-account signing
    pair, and client pairs by name (``clients[name] = (cert, key)``)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    clients: dict[str, tuple[Path, Path]]


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1]}")


def _ec_key(path: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(path)]


def _sign(pki_dir: Path, name: str, subject: str, extensions: str, days: int = 30) -> None:
    """Make ``name.key`` + ``name.crt`` signed by ``ca.crt`` with the given x509v3 extensions."""
    _openssl("req", *_ec_key(pki_dir / f"{name}.key"), "-out", f"{name}.csr", "-subj", subject,
             cwd=pki_dir)
    (pki_dir / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days),
             "-extfile", f"{name}.ext", cwd=pki_dir)


CLIENT_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=clientAuth\n")


def make_pki(directory: Path, ips: list[str], names: list[str],
             clients: dict[str, str]) -> Pki:
    """Create the PKI in ``directory``. ``ips``/``names``: the serving certificate's SANs;
    ``clients``: name -> subject (``/O=group/CN=user``, as Kubernetes reads client certs)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_ec_key(directory / "ca.key"), "-out", "ca.crt", "-days", "30",
             "-subj", "/CN=netweft-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=directory)
    sans = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{n}" for n in names])
    _sign(directory, "apiserver", "/CN=kube-apiserver",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "sa.key", cwd=directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    pairs = {}
    for name, subject in clients.items():
        _sign(directory, name, subject, CLIENT_EXT)
        pairs[name] = (directory / f"{name}.crt", directory / f"{name}.key")
    return Pki(directory, directory / "ca.crt", directory / "ca.key", directory / "apiserver.crt",
               directory / "apiserver.key", directory / "sa.key", directory / "sa.pub", pairs)


def kubeconfig(server: str, ca_file: Path, *, cert: Path | None = None, key: Path | None = None,
               token: str | None = None, user: str = "user") -> str:
    """A kubeconfig (JSON, which is YAML too) for one cluster/user/context."""
    auth: dict[str, str] = {}
    if cert is not None and key is not None:
        auth = {"client-certificate": str(cert), "client-key": str(key)}
    if token is not None:
        auth["token"] = token
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "netweft",
        "clusters": [{"name": "netweft", "cluster": {"server": server,
                                                     "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "netweft", "context": {"cluster": "netweft", "user": user}}],
    }, indent=1)


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    """One child process with its log file; stopped by PID (SIGTERM, then SIGKILL).

    ``stop_with_parent``: when started from the main thread, the child gets SIGTERM when the
    process that started it dies (``setpriv --pdeathsig``, as etcd and wireguard-go), so a killed
    test run or benchmark leaves no apiserver behind. Linux sends that signal when the starting
    *thread* ends, so a start from any other thread (an ``asyncio.to_thread`` worker) goes
    without it rather than die with its worker; so does a parent dying in the instant between
    the fork and setpriv arming the signal. The lab, whose control plane outlives
    ``netweft lab up``, turns it off."""

    name: str
    cmd: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_with_parent: bool = True

    def start(self) -> None:
        cmd = self.cmd
        if self.stop_with_parent and threading.current_thread() is threading.main_thread():
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ControlPlaneError(f"{self.name} exited with {self.proc.returncode}; "
                                    f"{self.log_path}: {' | '.join(tail)}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1.

    Stopping the apiserver and starting it again (:meth:`stop_apiserver`,
    :meth:`start_apiserver`) keeps its port, etcd and keys, as a restarted static pod would.

    ``controllers``: kube-controller-manager's ``--controllers``. The default leaves out the
    node-lifecycle controller: no kubelet heartbeats here, so it would mark every Node unreachable
    (and its pods not ready) after 40 s. ``controller_manager=False`` runs none.
    """

    service_cidr: str = "10.96.0.0/12"
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask: int = 24
    controller_manager: bool = True
    controllers: tuple[str, ...] = ("*", "-nodelifecycle")
    apiserver_args: tuple[str, ...] = ()  # more kube-apiserver flags (e.g. --watch-cache=false)
    # More addresses the apiserver serves on (its certificate's IP SANs; it then binds 0.0.0.0):
    # the lab runs it in its control-plane namespace and nodes reach it on the underlay.
    serving_ips: tuple[str, ...] = ()
    # The processes outlive the Python process that started them (the lab's, which `lab up`
    # leaves running): no parent-death signal for any of them. Stopped by PID all the same.
    detached: bool = False
    workdir: Path | None = None
    binaries: ControlPlaneBinaries | None = None
    etcd: EtcdProcess | None = None
    apiserver: Process | None = None
    kcm: Process | None = None
    port: int = 0
    pki: Pki | None = None
    _own_workdir: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.kubeconfig"

    def start(self, timeout: float = 180.0) -> ControlPlane:
        """Start everything and wait until the apiserver is ready (``/readyz``) and, with a
        controller-manager, until it has created the default service account. Raises
        ControlPlaneError (after stopping what it started) on failure."""
        self.binaries = self.binaries or ControlPlaneBinaries.find()
        if shutil.which("openssl") is None:
            raise ControlPlaneError("openssl is not installed (apt-get install openssl)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="netweft-k8s-"))
            self._own_workdir = True
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        assert self.workdir is not None and self.binaries is not None
        self.pki = make_pki(self.workdir / "pki",
                            ["127.0.0.1", _first_ip(self.service_cidr), *self.serving_ips],
                            ["localhost", "kubernetes", "kubernetes.default",
                             "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
                            {"admin": "/O=system:masters/CN=netweft-admin",
                             "controller-manager": "/CN=system:kube-controller-manager"})
        (self.workdir / "etcd").mkdir(exist_ok=True)
        self.etcd = EtcdProcess(binary=self.binaries.etcd, name="netweft-k8s-etcd",
                                data_dir=str(self.workdir / "etcd"),
                                stop_with_parent=not self.detached).start()
        self.port = free_port()
        self.admin_kubeconfig.write_text(kubeconfig(
            self.url, self.pki.ca_cert, cert=self.pki.clients["admin"][0],
            key=self.pki.clients["admin"][1], user="admin"))
        self.start_apiserver(timeout)
        if self.controller_manager:
            self.start_controller_manager()
            self.wait(self._has_default_service_account, timeout,
                      "the controller-manager created the default service account")

    def start_apiserver(self, timeout: float = 120.0) -> None:
        """(Re)start kube-apiserver on the same port, etcd and keys; wait for ``/readyz``."""
        assert self.workdir is not None and self.binaries is not None and self.pki is not None
        assert self.etcd is not None
        pki = self.pki
        self.apiserver = Process("kube-apiserver", [
            self.binaries.apiserver,
            f"--etcd-servers={self.etcd.endpoint}",
            f"--bind-address={'0.0.0.0' if self.serving_ips else '127.0.0.1'}",
            "--advertise-address=127.0.0.1",
            # The endpoint reconciler refuses a loopback address: no endpoints for the
            # default/kubernetes Service (nothing here reaches the apiserver through it).
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allow-privileged=true",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--profiling=false", "--v=1", *self.apiserver_args,
        ], self.workdir / "kube-apiserver.log", stop_with_parent=not self.detached)
        self.apiserver.start()
        self.wait(self._apiserver_ready, timeout, "kube-apiserver /readyz")

    def start_controller_manager(self) -> None:
        assert self.workdir is not None and self.binaries is not None and self.pki is not None
        pki = self.pki
        config = self.workdir / "controller-manager.kubeconfig"
        config.write_text(kubeconfig(self.url, pki.ca_cert,
                                     cert=pki.clients["controller-manager"][0],
                                     key=pki.clients["controller-manager"][1],
                                     user="system:kube-controller-manager"))
        self.kcm = Process("kube-controller-manager", [
            self.binaries.require(self.binaries.controller_manager),
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}", f"--authorization-kubeconfig={config}",
            "--secure-port=0", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--controllers={','.join(self.controllers)}",
            "--allocate-node-cidrs=true", f"--cluster-cidr={self.cluster_cidr}",
            f"--node-cidr-mask-size={self.node_cidr_mask}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--v=1",
        ], self.workdir / "kube-controller-manager.log", stop_with_parent=not self.detached)
        self.kcm.start()

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()

    def stop(self) -> None:
        """Stop every process by PID (controller-manager, apiserver, etcd) and remove the
        working directory if this object made it."""
        for proc in (self.kcm, self.apiserver):
            if proc is not None:
                proc.stop()
        if self.etcd is not None:
            self.etcd.remove()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- waiting ---------------------------------------------------------------------------------

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check()`` until true; raise ControlPlaneError naming ``what`` (and a process
        that died meanwhile) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in (self.apiserver, self.kcm):
                if proc is not None:
                    proc.check_alive()
            if check():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.clients["admin"]
        context.load_cert_chain(str(cert), str(key))
        return context

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` as the admin; (status, body); (0, b"") when nothing answers."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl_context(),
                                           timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def _has_default_service_account(self) -> bool:
        return self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    # --- tools -----------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None,
                kubeconfig_path: Path | None = None) -> str:
        """Run the built kubectl against this control plane (admin unless ``kubeconfig_path``);
        returns stdout; raises ControlPlaneError with kubectl's last error line."""
        assert self.binaries is not None
        cmd = [self.binaries.require(self.binaries.kubectl),
               f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ControlPlaneError(f"kubectl {' '.join(args[:3])}: {last}")
        return proc.stdout

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path,
                         duration: str = "1h") -> Path:
        """A kubeconfig at ``path`` that authenticates with a bound token of that service
        account (TokenRequest API, as a projected token in a pod gets)."""
        assert self.pki is not None
        token = self.kubectl("create", "token", service_account, "-n", namespace,
                             f"--duration={duration}").strip()
        path.write_text(kubeconfig(self.url, self.pki.ca_cert, token=token,
                                   user=f"system:serviceaccount:{namespace}:{service_account}"))
        return path

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what the apiserver also does every
        5 minutes); returns that revision."""
        from netweft.kv.etcd import EtcdClient, EtcdSettings

        assert self.etcd is not None

        async def compact() -> int:
            async with EtcdClient(EtcdSettings(endpoints=(self.etcd.endpoint,))) as client:
                revision = await client.current_revision()
                await client.compact(revision)
                return revision

        return asyncio.run(compact())


def _first_ip(cidr: str) -> str:
    """The first host address of ``cidr`` (the apiserver's Service IP, 10.96.0.1 by default)."""
    return str(next(ipaddress.ip_network(cidr).hosts()))
