"""One import namespace (issue 10 item 1): the repository's fixed top-level folders install as
``netweft.<folder>`` and nothing of ours lands at the top of site-packages but ``netweft``."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("cni", "daemon", "ipam", "backends", "proxy")
# Folders that install as their own package, not as a sub-package of the folder they sit in.
NESTED = {"netweft.kv": "ipam/kv", "netweft.common": "ipam/common"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_under_the_netweft_namespace() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping = {f"netweft.{d}": d for d in FOLDERS} | NESTED

    def name(rel: str) -> str:
        # the longest mapped folder containing ``rel`` names its package
        pkg, folder = max(((p, f) for p, f in mapping.items()
                           if rel == f or rel.startswith(f + "/")), key=lambda m: len(m[1]))
        return pkg + rel[len(folder):].replace("/", ".")

    found = {
        name(str(Path(dirpath).relative_to(ROOT)).replace(os.sep, "/"))
        for top in FOLDERS
        for dirpath, _dirs, files in os.walk(ROOT / top)
        if "__init__.py" in files and "__pycache__" not in dirpath
    }
    assert set(setuptools["packages"]) == found
    assert setuptools["package-dir"] == mapping


def test_key_value_layer_imports_nothing_from_ipam() -> None:
    """netweft.kv is not IPAM (issue 10 item 3): it sits under ipam/ only because the top-level
    folders are fixed."""
    offending = [f"{path.name}:{n}" for path in (ROOT / "ipam" / "kv").rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("from netweft.ipam", "import netweft.ipam"))]
    assert offending == []


def test_nft_package_imports_nothing_of_netweft_but_itself() -> None:
    """netweft.backends.nft serves the proxy, the daemon and the CNI plugin (issue 10 item 4):
    it may import only the standard library and itself, so every room can use it."""
    own = ("from netweft.backends.nft", "import netweft.backends.nft")
    offending = [f"{path.name}:{n}" for path in (ROOT / "backends" / "nft").rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("from netweft.", "import netweft."))
                 and not line.lstrip().startswith(own)]
    assert offending == []


def test_console_script_points_into_the_namespace() -> None:
    assert _pyproject()["project"]["scripts"]["netweft"] == "netweft.daemon.cli:main"


def test_no_source_file_imports_a_bare_top_level_folder() -> None:
    bare = []
    for top in (*FOLDERS, "tests", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                words = line.strip().split()
                if len(words) >= 2 and words[0] in ("import", "from") and \
                        words[1].split(".")[0] in FOLDERS:
                    bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bare == []


@pytest.mark.slow
def test_wheel_holds_only_the_netweft_namespace(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("netweft-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"netweft"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "netweft/cni/launcher.sh" in names and "netweft/daemon/cli.py" in names
    assert "netweft/kv/etcd.py" in names and not any(n.startswith("netweft/ipam/kv/")
                                                     for n in names)


# The module each runtime dependency is imported as, where it differs from the distribution name.
IMPORT_NAMES: dict[str, str] = {}
# Declared for a dependency's sake, not imported by us (the reason is the value).
INDIRECT: dict[str, str] = {}


def test_every_declared_dependency_is_imported_by_the_shipped_packages() -> None:
    """A dependency nothing imports (netaddr was one) is only weight on every install."""
    import re

    sources = "\n".join(p.read_text() for top in FOLDERS for p in (ROOT / top).rglob("*.py"))
    unused = []
    for requirement in _pyproject()["project"]["dependencies"]:
        dist = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        if dist in INDIRECT:
            continue
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(dist)
    assert unused == []


# -- test support in one place, tests per room (issue 10 item 5) -----------------------------
TEST_ONLY_MODULES = ("cni/harness.py", "cni/trace.py", "proxy/testbed.py", "proxy/trace.py",
                     "daemon/nodelab.py", "daemon/underlay.py")


def test_test_support_is_not_in_the_shipped_packages() -> None:
    """Test-only helpers live in tests/support (imported as ``support``), not in the wheel, and
    nothing shipped imports them."""
    assert [m for m in TEST_ONLY_MODULES if (ROOT / m).exists()] == []
    offending = [f"{path.relative_to(ROOT)}:{n}"
                 for top in FOLDERS for path in (ROOT / top).rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("from support", "import support"))]
    assert offending == []
    assert "tests" in _pyproject()["tool"]["pytest"]["ini_options"]["pythonpath"]
    assert (ROOT / "tests" / "support" / "__init__.py").exists()


def test_every_test_file_sits_in_a_room_folder() -> None:
    """tests/<room>/test_*.py, one folder per package (cni, daemon, ipam, backends, proxy, lab,
    kv) plus deploy; nothing at the top of tests/ but the shared conftest."""
    assert sorted(p.name for p in (ROOT / "tests").glob("*.py")) == ["conftest.py"]
    rooms = {p.parent.name for p in (ROOT / "tests").rglob("test_*.py")}
    assert rooms <= {"cni", "daemon", "ipam", "backends", "proxy", "lab", "kv", "deploy"}


def test_no_fixture_is_defined_twice() -> None:
    """A fixture name means one fixture across all conftests and test modules (shared ones in
    tests/conftest.py, each room's in its own conftest.py)."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if not line.startswith("@pytest.fixture"):
                continue
            following = next(x for x in lines[n + 1:] if not x.startswith("@"))
            name = following.split("def ", 1)[1].split("(", 1)[0]
            seen.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
