"""Real container runtimes on a node namespace, for tests and the lab (test support: nothing in
the plugin's paths imports this).

* :func:`busybox_image` writes an offline image (a docker-archive tar built from Debian's
  static busybox, with ``/www/index.html`` for ``httpd``) that podman ``load``s and containerd
  ``ctr images import``s; it is also the CRI sandbox ("pause") image.
* :class:`PodmanNode`: Debian 12's podman 4.3 with the CNI backend, runc, cgroupfs, its own
  ``--root``/``--runroot``/``--tmpdir`` and a ``containers.conf`` pointing at the node's CNI
  dirs (without it podman would use netavark and touch the root namespace).
* :class:`ContainerdNode`: containerd (Debian's 1.6 or a 2.x built by ``deploy/runtimes.sh``)
  with its own root/state/socket, driven through CRI with ``crictl``.

Every runtime process runs in the node's network namespace and in a *private mount namespace*
held by a small holder process (``unshare --mount --propagation private``; entered with
``nsenter --mount --net``, never ``ip netns exec``, which remounts /sys and breaks runc's
cgroup lookup). The runtime's pod namespaces (bind mounts under /run/netns) therefore exist
only in that mount namespace, as for a runtime in its own container: the node's CNI server
must resolve CNI_NETNS in the caller's mount namespace (cni/callerns.py).

Each node is stopped by :meth:`close` (containers removed, processes stopped by pid, the
mount namespace's holder ended), also after a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

IMAGE_REF = "localhost/netweft-busybox:latest"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "wget", "nc", "ip", "cat", "echo", "ls", "hostname")
CRICTL_VERSION = "v1.37.0"
CONTAINERD2_VERSION = "v2.4.2"
GO_CACHE = os.path.join(os.environ.get("NETWEFT_CACHE", "/var/cache/netweft"), "go")
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RuntimeCommandError(RuntimeError):
    """A runtime command failed; the message holds the command and its output."""


def go_bin(name: str, version: str, program: str) -> str:
    """The path of ``program`` built by ``deploy/runtimes.sh`` (deploy/gobuild.sh's cache)."""
    return os.path.join(GO_CACHE, f"{name}-{version}", "bin", program)


def need(path: str, how: str) -> str:
    """``path`` if executable, else a RuntimeCommandError naming how to get it (tests then fail)."""
    if not os.access(path, os.X_OK):
        raise RuntimeCommandError(f"{path} is missing: {how}")
    return path


# -- the image --------------------------------------------------------------------------------

def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes | None = None,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if data is not None:
        info.size = len(data)
    return info, data


def busybox_image(path: str, ref: str = IMAGE_REF) -> str:
    """Write a docker-archive tar of a busybox image named ``ref`` to ``path`` (returns it).

    Layer: /bin/busybox and applet symlinks, /etc/passwd, /tmp, /www/index.html ("netweft
    busybox"). Default command: ``sleep`` for ~68 years (what a pause container does)."""
    with open(need(BUSYBOX, "apt-get install busybox-static (deploy/setup.sh)"), "rb") as f:
        busybox = f.read()
    members = [_entry("bin/", tarfile.DIRTYPE, 0o755), _entry("bin/busybox", mode=0o755,
                                                               data=busybox)]
    members += [_entry(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox")
                for a in BUSYBOX_APPLETS]
    members += [_entry("etc/", tarfile.DIRTYPE, 0o755),
                _entry("etc/passwd", data=b"root:x:0:0:root:/:/bin/sh\n"),
                _entry("etc/group", data=b"root:x:0:\n"),
                _entry("tmp/", tarfile.DIRTYPE, 0o1777), _entry("www/", tarfile.DIRTYPE, 0o755),
                _entry("www/index.html", data=b"netweft busybox\n"),
                _entry("proc/", tarfile.DIRTYPE, 0o755), _entry("sys/", tarfile.DIRTYPE, 0o755),
                _entry("dev/", tarfile.DIRTYPE, 0o755)]
    layer = _tar_bytes(members)
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"],
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created_by": "netweft cni/runtimes.py busybox_image"}],
    }, sort_keys=True).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [ref],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    archive = _tar_bytes([_entry(f"{layer_id}/", tarfile.DIRTYPE, 0o755),
                          _entry(f"{layer_id}/layer.tar", data=layer),
                          _entry(f"{config_id}.json", data=config),
                          _entry("manifest.json", data=manifest)])
    with open(path, "wb") as f:
        f.write(archive)
    return path


# -- a node's private mount namespace ---------------------------------------------------------

def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc`` (by its pid, it is ours), SIGKILL after ``timeout`` seconds, reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MountNamespace:
    """A private mount namespace kept alive by a holder process (``sleep``), entered by
    :meth:`argv` together with the node's network namespace."""

    def __init__(self, node_netns: str) -> None:
        self.node_netns = node_netns
        self.netns_path = f"/run/netns/{node_netns}"
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "2147483647"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        mine = os.readlink("/proc/self/ns/mnt")
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeCommandError("unshare --mount did not start its holder")
            time.sleep(0.01)

    def argv(self, cmd: list[str]) -> list[str]:
        """``cmd`` run in the held mount namespace and the node's network namespace (``nsenter``).
        """
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt",
                f"--net={self.netns_path}", "--", *cmd]

    def close(self) -> None:
        """Stop the holder process (at most 10 s); the mount namespace goes with it."""
        stop_process(self.holder, 10)


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120,
         check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise RuntimeCommandError(f"{' '.join(argv[-6:])}: exit {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# -- podman -----------------------------------------------------------------------------------

@dataclass
class RuntimeNode:
    """Where a runtime runs: node namespace ``node_netns``, a private directory ``root`` for
    its state, and ``cni_bin_dir``/``cni_conf_dir`` where ``netweft cni install`` wrote the
    launcher, the reference plugins and the conflist."""

    node_netns: str
    root: str
    cni_bin_dir: str
    cni_conf_dir: str


@dataclass
class PodmanNode(RuntimeNode):
    """podman 4.3 (Debian 12) with the CNI backend on node namespace ``node_netns``; loads
    ``image_tar`` (if given) into its own store."""

    image_tar: str = ""
    mnt: MountNamespace | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        need(shutil.which("podman") or "/usr/bin/podman", "apt-get install podman")
        os.makedirs(self.root, exist_ok=True)
        self.runroot = tempfile.mkdtemp(prefix="nwpr-")  # podman wants < 50 characters
        self.conf_file = os.path.join(self.root, "containers.conf")
        self.storage_conf = os.path.join(self.root, "storage.conf")
        with open(self.conf_file, "w") as f:
            f.write(self.containers_conf())
        with open(self.storage_conf, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}/storage"\n'
                    f'runroot = "{self.runroot}"\n')
        self.mnt = MountNamespace(self.node_netns)
        try:
            if self.image_tar:
                self.podman("load", "-q", "-i", self.image_tar)
        except BaseException:
            self.close()  # a failed start leaves no holder process behind
            raise

    def containers_conf(self) -> str:
        """The whole config podman reads (CONTAINERS_CONF): CNI backend on our dirs, runc,
        cgroupfs, file events, ulimits this machine's hard limits allow."""
        return (
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            'log_driver = "k8s-file"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.cni_bin_dir}"]\n'
            f'network_config_dir = "{self.cni_conf_dir}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root}/events.log"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{self.root}/tmp"\n'
            f'static_dir = "{self.root}/static"\n'
            f'volume_path = "{self.root}/volumes"\n'
        )

    def env(self) -> dict[str, str]:
        """The environment podman runs with: its own containers.conf and storage.conf, HOME and
        TMPDIR under ``root``."""
        return {"PATH": RUNTIME_PATH, "CONTAINERS_CONF": self.conf_file,
                "CONTAINERS_STORAGE_CONF": self.storage_conf, "HOME": self.root,
                "TMPDIR": os.path.join(self.root, "tmp")}

    def podman(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``podman <args>`` with this node's storage, run root and CNI config directory, in its
        mount and network namespaces. Raises subprocess.CalledProcessError when ``check`` and it
        fails, TimeoutExpired after ``timeout`` seconds."""
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        assert self.mnt is not None
        argv = ["podman", "--root", f"{self.root}/storage", "--runroot", self.runroot,
                "--tmpdir", f"{self.root}/tmp", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--network-config-dir", self.cni_conf_dir, *args]
        return _run(self.mnt.argv(argv), env=self.env(), check=check, timeout=timeout)

    def run(self, name: str, network: str, command: list[str], ports: list[str] = (),
            ) -> dict[str, Any]:
        """``podman run -d --name NAME --network NETWORK [-p P]... IMAGE COMMAND``; returns the
        container's inspect document."""
        publish = [a for p in ports for a in ("-p", p)]
        self.podman("run", "-d", "--name", name, "--network", network, *publish, IMAGE_REF,
                    *command)
        return self.inspect(name)

    def inspect(self, name: str) -> dict[str, Any]:
        """``podman inspect name`` as a dict. Raises CalledProcessError, ValueError."""
        out = self.podman("inspect", name).stdout
        return json.loads(out)[0]

    def ip_of(self, name: str, network: str) -> str:
        """The container's IP address on ``network`` as podman reports it. Raises KeyError when it
        has none."""
        nets = self.inspect(name)["NetworkSettings"]["Networks"]
        return str(nets[network]["IPAddress"])

    def exec(self, name: str, *cmd: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the container (``podman exec``; ``timeout`` in seconds). Raises as
        :meth:`podman`."""
        return self.podman("exec", name, *cmd, check=check, timeout=timeout)

    def close(self) -> None:
        """Remove every container, prune the storage and drop the mount namespace (failures ignored:
        clean-up)."""
        if self.mnt is None:
            return
        with contextlib.suppress(Exception):
            self.podman("rm", "-af", "-t", "0", check=False, timeout=180)
        with contextlib.suppress(Exception):
            # the storage's overlay mounts live in our mount namespace: gone with it
            self.podman("system", "prune", "-f", check=False, timeout=60)
        self.mnt.close()
        self.mnt = None
        shutil.rmtree(self.runroot, ignore_errors=True)


# -- containerd through CRI -------------------------------------------------------------------

def containerd_config(root: str, cni_bin_dir: str, cni_conf_dir: str,
                      sandbox_image: str = IMAGE_REF) -> str:
    """A config version 2 file (containerd 1.6; containerd 2.x converts it to version 3):
    its own root/state/socket, CRI with cgroupfs runc, the native snapshotter, a CNI conf dir
    holding only our conflist, and no pulls (the sandbox image is imported)."""
    return f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.internal.v1.restart", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
"""


@dataclass
class CriPod:
    """A pod sandbox made through CRI (crictl): its id, name, IP address and container ids."""

    pod_id: str
    name: str
    ip: str
    containers: list[str] = field(default_factory=list)


@dataclass
class ContainerdNode(RuntimeNode):
    """containerd on node namespace ``node_netns``, driven through CRI with crictl.

    ``image_tar`` is imported (it is also the sandbox image); ``version``: ``"1.6"``
    (Debian's /usr/bin/containerd) or ``"2"`` (the 2.x that ``deploy/runtimes.sh`` builds,
    with its own shim and ctr)."""

    image_tar: str = ""
    version: str = "1.6"
    mnt: MountNamespace | None = field(default=None, repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pods: list[CriPod] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_tar:
            raise RuntimeCommandError("ContainerdNode needs image_tar: CRI's sandbox image is "
                                "imported, never pulled")
        self.crictl_bin = need(go_bin("crictl", CRICTL_VERSION, "crictl"),
                               "run deploy/runtimes.sh (builds crictl)")
        if self.version == "2":
            bin_dir = os.path.dirname(go_bin("containerd", CONTAINERD2_VERSION, "containerd"))
            self.containerd_bin = need(os.path.join(bin_dir, "containerd"),
                                       "run deploy/runtimes.sh (builds containerd 2.x)")
            self.ctr_bin = need(os.path.join(bin_dir, "ctr"), "run deploy/runtimes.sh")
            self.path = f"{bin_dir}:{RUNTIME_PATH}"  # its own containerd-shim-runc-v2 first
        else:
            self.containerd_bin = need("/usr/bin/containerd", "apt-get install containerd")
            self.ctr_bin = need("/usr/bin/ctr", "apt-get install containerd")
            self.path = RUNTIME_PATH
        os.makedirs(self.root, exist_ok=True)
        self.socket = os.path.join(self.root, "containerd.sock")
        self.config_file = os.path.join(self.root, "config.toml")
        with open(self.config_file, "w") as f:
            f.write(containerd_config(self.root, self.cni_bin_dir, self.cni_conf_dir))
        self.log_file = os.path.join(self.root, "containerd.log")
        self.mnt = MountNamespace(self.node_netns)
        try:
            self._start()
        except BaseException:
            self.close()  # a failed start leaves no containerd nor holder behind
            raise

    def _start(self) -> None:
        assert self.mnt is not None
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                self.mnt.argv([self.containerd_bin, "--config", self.config_file]),
                env={"PATH": self.path, "HOME": self.root}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeCommandError(f"containerd {self.version} did not start: "
                                          f"{self.log_tail()}")
            time.sleep(0.2)
        _run([self.ctr_bin, "--address", self.socket, "-n", "k8s.io", "images", "import",
              self.image_tar], env={"PATH": self.path})

    def _ready(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        return self.crictl("info", check=False, timeout=10).returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of containerd's log ("" when unreadable), for failure messages.
        """
        with contextlib.suppress(OSError), open(self.log_file, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return ""

    def crictl(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run crictl in the node's namespaces (``exec`` streams from 127.0.0.1 there)."""
        endpoint = f"unix://{self.socket}"
        assert self.mnt is not None
        return _run(self.mnt.argv([self.crictl_bin, "--config", "/dev/null", "--runtime-endpoint",
                                   endpoint, "--image-endpoint", endpoint,
                                   "--timeout", f"{int(timeout)}s", *args]),
                    env={"PATH": self.path, "HOME": self.root}, check=check, timeout=timeout + 10)

    def info(self) -> dict[str, Any]:
        """``crictl info`` as a dict (the CRI plugin's status and config). Raises
        CalledProcessError, ValueError."""
        return json.loads(self.crictl("info").stdout)

    def run_pod(self, name: str, command: list[str] | None = None,
                host_ports: list[tuple[int, int]] = ()) -> CriPod:
        """RunPodSandbox (with ``hostPort``s ``(container port, host port)``, TCP), then one
        container running ``command`` in it (none when ``command`` is None)."""
        uid = hashlib.sha256(f"{self.root}/{name}".encode()).hexdigest()[:16]
        pod_conf = {
            "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
            "log_directory": os.path.join(self.root, "logs", name),
            "port_mappings": [{"protocol": 0, "container_port": c, "host_port": h}
                              for c, h in host_ports],
            "linux": {},
        }
        pod_file = os.path.join(self.root, f"{name}-pod.json")
        with open(pod_file, "w") as f:
            json.dump(pod_conf, f)
        pod_id = self.crictl("runp", pod_file).stdout.strip()
        status = json.loads(self.crictl("inspectp", pod_id).stdout)["status"]
        pod = CriPod(pod_id, name, status["network"]["ip"])
        self.pods.append(pod)
        if command is not None:
            ctr_conf = {"metadata": {"name": f"{name}-c"}, "image": {"image": IMAGE_REF},
                        "command": command, "log_path": f"{name}-c.log", "linux": {}}
            ctr_file = os.path.join(self.root, f"{name}-ctr.json")
            with open(ctr_file, "w") as f:
                json.dump(ctr_conf, f)
            cid = self.crictl("create", pod_id, ctr_file, pod_file).stdout.strip()
            self.crictl("start", cid)
            pod.containers.append(cid)
        return pod

    def exec(self, pod: CriPod, *cmd: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the pod's first container (``crictl exec``). Raises CalledProcessError
        when ``check`` and it fails, TimeoutExpired after ``timeout`` seconds."""
        return self.crictl("exec", pod.containers[0], *cmd, check=check, timeout=timeout)

    def remove_pod(self, pod: CriPod) -> None:
        """Stop and remove the pod sandbox (the runtime calls the plugin's DEL). Raises
        CalledProcessError."""
        self.crictl("stopp", pod.pod_id)
        self.crictl("rmp", pod.pod_id)
        self.pods = [p for p in self.pods if p.pod_id != pod.pod_id]

    def close(self) -> None:
        """Remove every pod, stop containerd (at most 30 s) and drop the mount namespace."""
        for pod in list(self.pods):
            with contextlib.suppress(Exception):
                self.remove_pod(pod)
        if self.proc is not None:
            stop_process(self.proc, 30)
        self.proc = None
        if self.mnt is not None:
            self.mnt.close()
            self.mnt = None


# -- the plugin as `netweft cni install` writes it --------------------------------------------

def netweft_cli() -> list[str]:
    """The installed ``netweft`` command of this environment (the venv's), else ``-m``."""
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "netweft")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "netweft.daemon.cli"]


def cli_install(cni: Any, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``netweft cni install`` for a :class:`cni.harness.CniNode`'s private paths (the
    lab's nodes share one filesystem, so every path is an option) plus ``extra`` options; the
    conflist is then exactly what the command wrote."""
    return _run([*netweft_cli(), "cni", "install", "--bin-dir", cni.bin_dir,
                 "--conf-dir", cni.conf_dir, "--subnet-file", cni.subnet_file,
                 "--data-dir", cni.data_dir, "--socket-path", cni.socket_path,
                 "--log-file", cni.log_file, *extra])


def http_get(netns_name: str, url: str, timeout: float = 5) -> str:
    """GET ``url`` from inside namespace ``netns_name`` within ``timeout`` seconds: the body
    (RuntimeCommandError on failure)."""
    code = ("import sys, urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read()"
            ".decode())\n")
    return _run(["ip", "netns", "exec", netns_name, "python3", "-c", code],
                timeout=timeout + 30).stdout
