"""The one nftables applier: hands typed transactions (``netweft.backends.nft.tx``) or nft command
text to the kernel through libnftables (Debian's python3-nftables) when it can be imported, is
wanted and no namespace is asked for, else an ``nft -f -`` process (optionally inside a network
namespace, for tests and benchmarks driven from outside the node). The service proxy, the daemon's
firewall table and the CNI ``ipMasq`` table all apply through it; tests/support/fake_nft.py is its
in-memory stand-in."""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

from netweft.backends.nft.tx import Transaction


class NftError(RuntimeError):
    """nft refused a transaction (nothing of it was applied: transactions are atomic)."""


def netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


class NftApplier:
    """Applies transactions in ``netns`` (None: the calling thread's namespace). With
    ``use_library`` False it always runs ``nft -f -`` (a child process, in the namespace of the
    thread that starts it, as the firewall and the CNI plugin have always done)."""

    def __init__(self, netns: str | None = None, use_library: bool = True) -> None:
        self.netns = netns
        self._children: collections.deque[int] = collections.deque(maxlen=64)
        self._lib: Any = None
        if use_library and netns is None:
            try:
                import nftables  # type: ignore[import-not-found]
            except ImportError:
                self._lib = None
            else:
                lib = nftables.Nftables()
                lib.set_echo_output(False)
                self._lib = lib

    @property
    def kind(self) -> str:
        return "libnftables" if self._lib is not None else "nft -f -"

    def apply(self, change: Transaction | str) -> int:
        """Apply a transaction (or nft command text) atomically; returns the size of the text
        handed to nft. Raises NftError when nft refuses it (then nothing was applied)."""
        text = change if isinstance(change, str) else change.render()
        if text:
            self._apply_text(text)
        return len(text)

    def apply_all(self, changes: Sequence[Transaction]) -> int:
        """Several transactions (e.g. one per table or family) as one atomic ``nft`` run: all
        of them or none. Returns the size of the text; raises NftError like :meth:`apply`.
        ``FileNotFoundError`` when the nft program is missing (``nft -f -`` mode)."""
        text = "".join(change.render() for change in changes)
        if text:
            self._apply_text(text)
        return len(text)

    def _apply_text(self, text: str) -> None:
        if self._lib is not None:
            rc, _out, err = self._lib.cmd(text)
            if rc != 0:
                raise NftError(_first_error(err))
            return
        with subprocess.Popen([*netns_prefix(self.netns), "nft", "-f", "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            self._children.append(proc.pid)     # ``ip netns exec`` execs nft: same pid
            try:
                _out, err = proc.communicate(text, timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise NftError("nft -f - did not finish in 300 s") from None
        if proc.returncode != 0:
            raise NftError(_first_error(err))

    def is_own(self, pid: int) -> bool:
        """Whether a transaction committed by ``pid`` (as ``nft monitor`` names it) is ours:
        this process (libnftables) or one of the last ``nft -f`` children it ran."""
        return pid == os.getpid() if self._lib is not None else pid in self._children

    def run(self, command: str) -> str:
        """One nft command (e.g. ``list table ...``); returns its output."""
        if self._lib is not None:
            rc, out, err = self._lib.cmd(command)
            if rc != 0:
                raise NftError(_first_error(err))
            return str(out)
        proc = subprocess.run([*netns_prefix(self.netns), "nft", *command.split()],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NftError(_first_error(proc.stderr))
        return proc.stdout


    def list_json(self, command: str) -> dict[str, Any]:
        """One ``list ...`` command with JSON output (libnftables JSON schema 1), parsed.
        Raises NftError when nft refuses it (e.g. the table does not exist)."""
        if self._lib is not None:
            self._lib.set_json_output(True)
            try:
                rc, out, err = self._lib.cmd(command)
            finally:
                self._lib.set_json_output(False)
            if rc != 0:
                raise NftError(_first_error(err))
        else:
            proc = subprocess.run([*netns_prefix(self.netns), "nft", "-j", *command.split()],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise NftError(_first_error(proc.stderr))
            out = proc.stdout
        return dict(json.loads(out)) if out.strip() else {"nftables": []}


def _first_error(text: str) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    for ln in lines:
        if "Error" in ln:
            return ln.strip()
    return lines[0].strip() if lines else "nft failed"
