"""The conflist ``netweft cni install`` writes, computed from options (pure functions).

Versions (CNI spec 1.1, "Configuration format": ``cniVersions``): a runtime whose libcni knows
``cniVersions`` (libcni >= 1.2, e.g. containerd 2.x) uses the highest listed version it
implements; older ones (podman 4.3.1 and containerd 1.6.20 of Debian 12: results up to 1.0.0)
read only ``cniVersion`` and refuse a result version they do not know. So ``cniVersion`` is
1.0.0 by default and ``cniVersions`` lists every version our plugin *and* every chained plugin
support: libcni hands the chosen version to each plugin of the list, and a chained plugin
refuses one it does not support (Debian's portmap 1.1.1 stops at 1.0.0).

Chaining: Flannel's stock conflist chains the reference ``portmap`` plugin with the
``portMappings`` capability (``podman run -p``, Kubernetes ``hostPort``); a user may chain more.
Plugins a user chained into an existing conflist are kept on re-install (with a note), or
dropped with a note when asked to replace the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netweft.cni.spec import SUPPORTED_VERSIONS

DEFAULT_CNI_VERSION = "1.0.0"
PORTMAP_TYPE = "portmap"
PORTMAP_ENTRY: dict[str, object] = {"type": PORTMAP_TYPE, "capabilities": {"portMappings": True},
                                    "snat": True}


class ConflistError(ValueError):
    """A conflist that cannot work as asked; the message is one line naming the option."""


@dataclass(frozen=True)
class ChainPlan:
    """The plugin entries after ours, in order, and one note per decision a user must see."""

    chained: list[dict[str, object]]
    notes: list[str] = field(default_factory=list)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def merge_chain(existing: dict[str, object] | None, our_type: str, portmap: bool,
                chain: list[dict[str, object]], replace_chain: bool) -> ChainPlan:
    """Chained entries: portmap (if ``portmap``; an entry of type portmap in ``chain``
    replaces the default one), then ``chain``, then the other plugins of the ``existing``
    conflist (kept unless ``replace_chain``). Raises :class:`ConflistError` for an entry that
    is not an object with a string ``type``, or that is our own type."""
    given: list[dict[str, object]] = []
    for i, entry in enumerate(chain):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
                or not entry["type"]:
            raise ConflistError(f"--chain-plugin #{i + 1}: must be a JSON object with a "
                                "\"type\" string")
        if entry["type"] == our_type:
            raise ConflistError(f"--chain-plugin #{i + 1}: type {our_type} is the plugin itself")
        given.append(dict(entry))
    given_types = {str(e["type"]) for e in given}
    chained: list[dict[str, object]] = []
    if portmap and PORTMAP_TYPE not in given_types:
        chained.append(dict(PORTMAP_ENTRY))
    chained += given
    notes: list[str] = []
    plugins = existing.get("plugins") if isinstance(existing, dict) else None
    for entry in plugins if isinstance(plugins, list) else []:
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or kind == our_type:
            continue
        if kind == PORTMAP_TYPE and PORTMAP_TYPE not in given_types:
            if not portmap:
                notes.append("removed chained plugin portmap from the existing conflist "
                             "(--no-portmap)")
            continue
        if kind in given_types:
            notes.append(f"replaced chained plugin {kind} of the existing conflist with the "
                         "one given")
        elif replace_chain:
            notes.append(f"removed chained plugin {kind} from the existing conflist "
                         "(--replace-chain)")
        else:
            chained.append(dict(entry))
            notes.append(f"kept chained plugin {kind} from the existing conflist "
                         "(--replace-chain drops it)")
    return ChainPlan(chained, notes)


def conf_versions(cni_version: str, chained_support: dict[str, tuple[str, ...] | None]
                  ) -> tuple[list[str], list[str]]:
    """``(cniVersions, notes)``: our versions that every chained plugin supports, sorted.

    ``chained_support`` maps a chained plugin type to its ``supportedVersions`` (None: it
    could not be asked; then nothing above ``cni_version`` is listed). Raises
    :class:`ConflistError` when ``cni_version`` is not ours or a chained plugin lacks it."""
    if cni_version not in SUPPORTED_VERSIONS:
        raise ConflistError(f"--cni-version {cni_version}: not one of "
                            f"{', '.join(SUPPORTED_VERSIONS)}")
    versions = sorted(SUPPORTED_VERSIONS, key=_version_key)
    notes: list[str] = []
    for kind, supported in chained_support.items():
        if supported is None:
            versions = [v for v in versions if _version_key(v) <= _version_key(cni_version)]
            notes.append(f"could not ask chained plugin {kind} for its versions (not in the "
                         f"bin dir yet?): cniVersions stop at {cni_version}")
            continue
        if cni_version not in supported:
            raise ConflistError(f"--cni-version {cni_version}: chained plugin {kind} supports "
                                f"only {', '.join(supported)}")
        versions = [v for v in versions if v in supported]
    return versions, notes


def build_conflist(name: str, ours: dict[str, object], chained: list[dict[str, object]],
                   cni_version: str, chained_support: dict[str, tuple[str, ...] | None]
                   ) -> tuple[dict[str, object], list[str]]:
    """The conflist document and notes (see :func:`conf_versions` for errors)."""
    versions, notes = conf_versions(cni_version, chained_support)
    return {"cniVersion": cni_version, "cniVersions": versions, "name": name,
            "plugins": [ours, *chained]}, notes
