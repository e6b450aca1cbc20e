"""The one atomic file writer (issue 10 item 6): readers see the old or the new file, the mode is
the final one from the first byte on, and no temporary file is left behind on any failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from netweft.common.atomicfile import copy_atomic, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_replaces_the_file_with_the_given_mode_and_makes_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    write_atomic(str(target), "one\n", 0o644)
    write_atomic(str(target), b"two\n", 0o600)
    assert target.read_text() == "two\n"
    assert _mode(target) == 0o600
    assert sorted(os.listdir(target.parent)) == ["file"]


def test_a_failed_rename_leaves_no_temporary_file_and_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)  # os.replace over a non-empty directory fails
    with pytest.raises(OSError):
        write_atomic(str(target), "x")
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]


def test_a_failure_while_writing_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(str(target), "\u20ac", encoding="ascii")
    with pytest.raises(FileNotFoundError):
        copy_atomic(str(tmp_path / "no-such-source"), str(target))
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert target.read_text() == "old"


def test_without_replace_an_existing_file_is_kept_and_nothing_left_behind(tmp_path: Path) -> None:
    target = tmp_path / "node-id"
    write_atomic(str(target), "first\n", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(str(target), "second\n", replace=False)
    assert target.read_text() == "first\n"
    assert sorted(os.listdir(tmp_path)) == ["node-id"]


def test_copy_gives_an_executable_copy(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"#!/bin/sh\nexit 0\n")
    copy_atomic(str(source), str(tmp_path / "bin" / "tool"), 0o755)
    assert (tmp_path / "bin" / "tool").read_bytes() == source.read_bytes()
    assert _mode(tmp_path / "bin" / "tool") == 0o755


def test_common_imports_only_the_standard_library() -> None:
    """netweft.common is importable by every room: it imports nothing of netweft."""
    root = Path(__file__).resolve().parents[2] / "ipam" / "common"
    offending = [f"{p.name}:{n}" for p in root.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("from netweft", "import netweft"))]
    assert offending == []


def test_writers_that_used_their_own_copy_leave_nothing_behind_on_failure(tmp_path: Path) -> None:
    """save_vtep_mac and the lab's pidfile writer had no clean-up: a failed rename left their
    temporary files in the directory."""
    from netweft.backends.vxlan import save_vtep_mac
    from netweft.daemon.lab.procs import ProcessRecord, write_pidfile

    (tmp_path / "vxlan-1.json" / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        save_vtep_mac(str(tmp_path), 1, "0a:00:00:00:00:01")
    (tmp_path / "etcd.pid" / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        write_pidfile(str(tmp_path / "etcd.pid"), ProcessRecord(1, 1))
    assert sorted(os.listdir(tmp_path)) == ["etcd.pid", "vxlan-1.json"]
