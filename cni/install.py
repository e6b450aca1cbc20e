"""Install the plugin on a node: the ``netweft`` executable in the CNI bin dir and a
``10-netweft.conflist`` in the conf dir, each written atomically (temp file + rename).

The executable is a tiny stdlib-only launcher bound to this installation's interpreter
(``#!<python> -IS``: no site import, no environment-driven path changes) that puts this
installation's package directory on ``sys.path`` and runs :func:`netweft.cni.shim.main`.
"""

from __future__ import annotations

import contextlib
import json
import os
import py_compile
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from netweft import cni
from netweft.cni.config import (
    DEFAULT_BRIDGE,
    DEFAULT_DATA_DIR,
    DEFAULT_LOG_FILE,
    DEFAULT_SOCKET_PATH,
    DEFAULT_SUBNET_FILE,
)
from netweft.cni.spec import CURRENT_VERSION
from netweft.cni.tcpwire import DEFAULT_TCP_PORT, default_token_file

BIN_NAME = "netweft"
PY_BIN_NAME = "netweft-py"  # the Python launcher the bash one falls back to
DEFAULT_TCP_TIMEOUT = 120  # seconds the bash launcher waits for a reply before falling back
CONF_NAME = "10-netweft.conflist"
MARKER = "# netweft CNI plugin launcher"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


@dataclass(frozen=True)
class Installed:
    executable: str
    conflist: str


def package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))


def fallback_paths() -> list[str]:
    """Where the in-process path finds pyroute2 & co: site-packages and the plain directories
    listed in its ``.pth`` files (not the ``import`` lines: no site machinery at start-up)."""
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    for site_dir in list(paths):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(site_dir)):
                if not name.endswith(".pth"):
                    continue
                with open(os.path.join(site_dir, name), encoding="utf-8") as f:
                    for line in f:
                        line = line.strip()
                        if line and not line.startswith(("#", "import")) and os.path.isdir(line):
                            paths.append(line)
    return paths


def launcher_text(default_socket: str, default_log: str, python: str | None = None) -> str:
    python = python or sys.executable
    root = package_root()
    return (
        f"#!{python} -IS\n"
        f"{MARKER} (written by `netweft cni install`; do not edit).\n"
        "import sys\n"
        # no site machinery under -S (an editable install's import hook never runs): make
        # `netweft` a package whose path is the folder holding cni/, daemon/, ipam/, ...
        "netweft = type(sys)('netweft')\n"
        f"netweft.__path__ = [{root!r}]\n"
        "sys.modules['netweft'] = netweft\n"
        "from netweft.cni.shim import main\n"
        f"main({default_socket!r}, {default_log!r}, {fallback_paths()!r})\n"
    )


def bash_launcher_text(python_launcher: str, default_socket: str, default_log: str,
                       tcp_port: int, token_file: str,
                       timeout: int = DEFAULT_TCP_TIMEOUT) -> str:
    """The executable a runtime runs: ``cni/launcher.sh`` with this installation's values."""
    with open(os.path.join(os.path.dirname(os.path.abspath(cni.__file__)), "launcher.sh"),
              encoding="utf-8") as f:
        text = f.read()
    for key, value in (("@PY@", _sh_quote(python_launcher)), ("@PORT@", str(int(tcp_port))),
                       ("@TOKEN@", _sh_quote(token_file)), ("@SOCK@", _sh_quote(default_socket)),
                       ("@LOG@", _sh_quote(default_log)), ("@TIMEOUT@", str(int(timeout)))):
        text = text.replace(key, value)
    return text


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def conflist(name: str, options: dict[str, object]) -> dict[str, object]:
    plugin: dict[str, object] = {"type": BIN_NAME}
    plugin.update(options)
    plugin["capabilities"] = {"ips": True}
    return {"cniVersion": CURRENT_VERSION, "name": name, "plugins": [plugin]}


def write_atomic(path: str, text: str, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def install(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR, *,
            name: str = "netweft", bridge: str = DEFAULT_BRIDGE,
            subnet_file: str = DEFAULT_SUBNET_FILE, data_dir: str = DEFAULT_DATA_DIR,
            socket_path: str = DEFAULT_SOCKET_PATH, log_file: str = DEFAULT_LOG_FILE,
            mtu: int | None = None, ip_masq: bool | None = None,
            extra: dict[str, object] | None = None, tcp_port: int = DEFAULT_TCP_PORT,
            token_file: str | None = None,
            tcp_timeout: int = DEFAULT_TCP_TIMEOUT) -> Installed:
    """``tcp_port``/``token_file`` must match the CNI server's (0: no TCP fast path)."""
    if not 0 <= tcp_port < 1024:
        raise ValueError(f"tcp_port {tcp_port}: must be 0 (off) or a privileged port < 1024")
    options: dict[str, object] = {
        "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
        "subnetFile": subnet_file, "dataDir": data_dir, "socketPath": socket_path,
        "logFile": log_file,
    }
    if mtu is not None:
        options["mtu"] = mtu
    if ip_masq is not None:
        options["ipMasq"] = ip_masq
    options.update(extra or {})
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(os.path.join(package_root(), "cni", "shim.py"), doraise=True)
    exe = os.path.join(bin_dir, BIN_NAME)
    conf = os.path.join(conf_dir, CONF_NAME)
    py_exe = os.path.join(bin_dir, PY_BIN_NAME)
    write_atomic(py_exe, launcher_text(socket_path, log_file), 0o755)
    write_atomic(exe, bash_launcher_text(py_exe, socket_path, log_file, tcp_port,
                                         token_file or default_token_file(socket_path),
                                         tcp_timeout), 0o755)
    write_atomic(conf, json.dumps(conflist(name, options), indent=2) + "\n", 0o644)
    return Installed(exe, conf)


def uninstall(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR) -> list[str]:
    """Remove what :func:`install` wrote (an executable not ours is left alone)."""
    removed = []
    for exe in (os.path.join(bin_dir, BIN_NAME), os.path.join(bin_dir, PY_BIN_NAME)):
        with contextlib.suppress(OSError), open(exe, encoding="utf-8", errors="replace") as f:
            ours = MARKER in f.read(4096)
            if ours:
                os.unlink(exe)
                removed.append(exe)
    conf = os.path.join(conf_dir, CONF_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(conf)
        removed.append(conf)
    return removed
