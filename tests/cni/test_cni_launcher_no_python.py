"""Issue 11 item 3: on a kind node there is no Python. The CNI launcher the daemon's image installs
on the host (cni/launcher.sh, bash builtins only) must work there, and with the daemon down it
answers CNI error code 11, "try again later" (CNI spec, "Error" section: a transient condition),
on stdout with a non-zero exit: never bash's exit 126/127, a crash or a Python traceback.

The host is a chroot holding only bash and its libraries (no python anywhere in it, no python on
PATH), the plugin installed into its /opt/cni/bin by the real `netweft cni install` code (whose
Python launcher names this machine's interpreter, which the chroot does not have: as a launcher
installed from the image names the image's), entered in a network namespace of its own where
nothing listens on the fast path's port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from netweft.cni.install import install
from netweft.cni.tcpwire import DEFAULT_TCP_PORT


def _bash_only_root(root: Path) -> None:
    """A root filesystem with /bin/bash and the shared libraries it loads, nothing else."""
    bash = shutil.which("bash") or "/bin/bash"
    libs = [line.split()[-2] if "=>" in line else line.split()[0]
            for line in subprocess.run(["ldd", bash], capture_output=True, text=True,
                                       check=True).stdout.splitlines()
            if "/" in line]
    for path in [os.path.realpath(bash), *libs]:
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), dest)
    for sub in ("usr/bin", "bin", "usr/lib64", "lib64", "proc", "dev", "run/netweft"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if not (root / "bin" / "bash").exists():
        (root / "bin" / "bash").symlink_to("/usr/bin/bash")


def _call(netns_name: str, root: Path, command: str, stdin: str) -> subprocess.CompletedProcess:
    """Run the installed launcher in ``root`` (its /proc and /dev the real ones: the port
    sysctl is per network namespace) inside ``netns_name``, with a PATH that has no python."""
    script = (f"mount --rbind /proc {root}/proc && mount --rbind /dev {root}/dev && "
              f"exec chroot {root} /opt/cni/bin/netweft")
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns_name}", "--", "unshare", "-m", "--", "sh", "-c",
         script], input=stdin, capture_output=True, text=True, timeout=60,
        env={"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-kind", "CNI_IFNAME": "eth0",
             "CNI_NETNS": "/var/run/netns/cni-1234", "CNI_PATH": "/opt/cni/bin",
             "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.mark.parametrize("py_launcher", [False, True],
                         ids=["py-launcher-path-of-the-image", "py-launcher-without-interpreter"])
@pytest.mark.parametrize("token", [False, True], ids=["never-started", "stopped"])
def test_launcher_without_python_and_daemon_down_answers_try_again_later(
        netns_factory: Callable[[str], str], tmp_path: Path, token: bool,
        py_launcher: bool) -> None:
    """The Python launcher the bash one falls back to is either missing on the host (installed
    from the image through a mount at another path: the DaemonSet's /host/opt/cni/bin) or there
    with an interpreter the host does not have; neither may crash the call."""
    root = tmp_path / "kindnode"
    _bash_only_root(root)
    installed = install(str(root / "opt/cni/bin"), str(root / "etc/cni/net.d"), portmap=False)
    if py_launcher:  # the launcher's own path to its Python launcher resolves in the chroot
        inside = root / str(root / "opt/cni/bin").lstrip("/")
        inside.mkdir(parents=True)
        (inside / "netweft-py").symlink_to("/opt/cni/bin/netweft-py")
    assert not [p for p in root.rglob("python*")], "the chroot must hold no python"
    shebang = (root / "opt/cni/bin/netweft-py").read_text().splitlines()[0]
    assert shebang.startswith("#!/") and not (root / shebang[3:].split()[0]).exists()
    if token:  # the daemon ran once (its token is still there) and is down now
        (root / "run/netweft/cni.token").write_text("a" * 64 + "\n")
        os.chmod(root / "run/netweft/cni.token", 0o600)
    config = json.loads((root / "etc/cni/net.d/10-netweft.conflist").read_text())
    netconf = {"cniVersion": "1.0.0", "name": config["name"], **config["plugins"][0]}
    ns = netns_factory("kind")
    for command in ("ADD", "DEL", "CHECK"):
        proc = _call(ns, root, command, json.dumps(netconf))
        assert proc.returncode == 1, (command, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
        assert proc.stderr == "", proc.stderr
        err = json.loads(proc.stdout)
        assert err["code"] == 11, err
        assert err["cniVersion"] == "1.0.0"
        why = (f"does not answer on 127.0.0.1:{DEFAULT_TCP_PORT}" if token
               else "is not running (no token /run/netweft/cni.token)")
        assert why in err["msg"], err
        assert "try again later" in err["msg"]
        missing = shebang[2:].split()[0] if py_launcher else str(root / "opt/cni/bin/netweft-py")
        assert f"{missing} to do the work in-process is not on this host" in err["msg"], err
    assert installed.executable == str(root / "opt/cni/bin/netweft")
