"""Issue 14 item 2 (cold time): the Debian 12 root filesystem is built once and shared by the lxc
box, the libvirt box and the offline image, cached by content. vagrant/box/build.sh --print-key
(the real script, on a copy of the tree) shows what invalidates what: a box layer's file rebuilds
that box only, never the shared root filesystem; the package list or the requirements rebuild
everything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "vagrant" / "box", tree / "vagrant" / "box")
    (tree / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "setup.sh", tree / "deploy" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def _keys(tree: Path) -> dict[str, str]:
    return {what: subprocess.run(["bash", str(tree / "vagrant" / "box" / "build.sh"),
                                  "--print-key", what], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.strip()
            for what in ("rootfs", "lxc", "libvirt")}


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_a_box_layer_change_rebuilds_that_box_and_never_the_shared_rootfs(tmp_path) -> None:
    tree = _tree(tmp_path)
    box = tree / "vagrant" / "box"
    before = _keys(tree)
    assert len(set(before.values())) == 3
    _append(box / "lxc-config", "# a change\n")
    after_lxc = _keys(tree)
    assert after_lxc["rootfs"] == before["rootfs"] and after_lxc["libvirt"] == before["libvirt"]
    assert after_lxc["lxc"] != before["lxc"]
    _append(box / "libvirt-layer.sh", "# a change\n")
    after_libvirt = _keys(tree)
    assert after_libvirt["rootfs"] == before["rootfs"]
    assert after_libvirt["libvirt"] != before["libvirt"]
    _append(box / "build.sh", "# a change\n")  # how boxes are assembled, not the rootfs
    assert _keys(tree)["rootfs"] == before["rootfs"]


def test_the_package_list_or_the_requirements_rebuild_everything(tmp_path) -> None:
    tree = _tree(tmp_path)
    before = _keys(tree)
    setup = tree / "deploy" / "setup.sh"
    setup.write_text(setup.read_text().replace('PKGS="etcd-server ', 'PKGS="jq etcd-server ', 1))
    after_pkgs = _keys(tree)
    assert all(after_pkgs[k] != before[k] for k in before)
    _append(tree / "vagrant" / "box" / "packages.txt", "jq\n")  # already in: same list
    assert _keys(tree) == after_pkgs
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("dependencies = [",
                                                       'dependencies = [\n    "six",', 1))
    after_reqs = _keys(tree)
    assert all(after_reqs[k] != after_pkgs[k] for k in before)
