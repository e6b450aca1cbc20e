"""Fixtures of the lab's tests (``netweft lab``, a shipped feature): a module's lab is built once
from the module's ``LAB`` (LabSpec fields; ``prefix_stem`` names it) and torn down afterwards,
also on failure, leaving no namespace of it behind (netweft.daemon.lab.lab.running)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from netweft.daemon.lab.lab import Lab, running
from netweft.daemon.lab.topology import LabSpec


@pytest.fixture
def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab the module's ``LAB`` dict describes, e.g. ``{"nodes": 3, "backend": "host-gw"}``
    (prefix: ``prefix_stem`` + 4 random hex digits, default stem ``nwl``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    fields = dict(request.module.LAB)
    stem = fields.pop("prefix_stem", "nwl")
    with running(LabSpec(prefix=f"{stem}{uuid.uuid4().hex[:4]}", **fields)) as built:
        yield built
