"""Throwaway network namespaces for tests: every name is ``nwt<pid>-<tag>-<n>`` (recognisable,
unique within the run), every namespace is deleted by :meth:`NamespaceMaker.close`, also when
the test failed. Nothing here touches the root namespace."""

from __future__ import annotations

import itertools
import os

from netweft.daemon import netns

_counter = itertools.count()


class NamespaceMaker:
    """``make(tag)`` creates namespace ``nwt<pid>-<tag>-<n>`` with its loopback up and returns
    its name (at most 40 characters); ``close()`` deletes them all, newest first."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, tag: str = "ns") -> str:
        name = f"nwt{os.getpid() % 100000}-{tag}-{next(_counter)}"[:40]
        netns.add(name)
        self.made.append(name)
        return name

    def close(self) -> None:
        for name in reversed(self.made):
            netns.delete(name)
        self.made.clear()
