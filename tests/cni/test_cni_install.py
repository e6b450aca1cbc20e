"""What `netweft cni install` writes (issue 8, faults 1-2): a conflist every runtime accepts
(cniVersion 1.0.0 + the cniVersions the whole chain supports), portmap chained by default,
more plugins chained on request, and a user's chained plugins never dropped silently."""

from __future__ import annotations

import json
import os
import stat

import click
import pytest
from click.testing import CliRunner
from netweft.cni.conflist import ConflistError, conf_versions, merge_chain
from netweft.cni.install import CONF_NAME, install


def cli(*args: str) -> tuple[int, str]:
    from netweft.daemon.commands import cni as cni_commands

    @click.group()
    def root() -> None:
        pass

    cni_commands.register(root)
    res = CliRunner().invoke(root, ["cni", "install", *args])
    return res.exit_code, res.output


def paths(tmp_path) -> list[str]:
    return ["--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "conf"),
            "--subnet-file", "/s/env", "--data-dir", "/s/data", "--socket-path", "/s/sock",
            "--log-file", "/s/log"]


def conflist(tmp_path) -> dict:
    with open(tmp_path / "conf" / CONF_NAME) as f:
        return json.load(f)


def test_default_conflist_is_1_0_0_with_cni_versions_and_portmap(tmp_path) -> None:
    code, out = cli(*paths(tmp_path))
    assert code == 0, out
    conf = conflist(tmp_path)
    assert conf["cniVersion"] == "1.0.0"
    # Debian's portmap (1.1.1) supports up to 1.0.0: no version above it may be offered
    assert conf["cniVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert conf["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True},
                                  "snat": True}
    assert f"note: copied /usr/lib/cni/portmap to {tmp_path}/bin/portmap" in out
    mode = os.stat(tmp_path / "bin" / "portmap").st_mode
    assert stat.S_IMODE(mode) == 0o755


def test_no_portmap_offers_1_1_0_and_version_is_selectable(tmp_path) -> None:
    code, out = cli(*paths(tmp_path), "--no-portmap", "--cni-version", "0.4.0")
    assert code == 0, out
    conf = conflist(tmp_path)
    assert conf["cniVersion"] == "0.4.0"
    assert conf["cniVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert [p["type"] for p in conf["plugins"]] == ["netweft"]


def test_reinstall_keeps_a_users_chained_plugins_and_says_so(tmp_path) -> None:
    bandwidth = '{"type": "bandwidth", "capabilities": {"bandwidth": true}}'
    assert cli(*paths(tmp_path), "--chain-plugin", bandwidth)[0] == 0
    assert [p["type"] for p in conflist(tmp_path)["plugins"]] == [
        "netweft", "portmap", "bandwidth"]
    # the user adds one by hand; a plain re-install keeps both and says so
    conf = conflist(tmp_path)
    conf["plugins"].append({"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}})
    (tmp_path / "conf" / CONF_NAME).write_text(json.dumps(conf))
    code, out = cli(*paths(tmp_path), "--mtu", "1400")
    assert code == 0, out
    conf = conflist(tmp_path)
    assert [p["type"] for p in conf["plugins"]] == ["netweft", "portmap", "bandwidth", "tuning"]
    assert conf["plugins"][0]["mtu"] == 1400
    assert conf["plugins"][3]["sysctl"] == {"net.core.somaxconn": "500"}
    assert "note: kept chained plugin tuning from the existing conflist" in out
    # bandwidth and tuning are not in the bin dir, so they cannot be asked for their versions:
    # nothing above cniVersion is offered, and the user is told
    assert conf["cniVersions"][-1] == "1.0.0"
    assert "note: could not ask chained plugin tuning for its versions" in out
    code, out = cli(*paths(tmp_path), "--replace-chain", "--no-portmap")
    assert code == 0, out
    assert [p["type"] for p in conflist(tmp_path)["plugins"]] == ["netweft"]
    assert "note: removed chained plugin bandwidth from the existing conflist" in out
    assert "note: removed chained plugin portmap from the existing conflist" in out


@pytest.mark.parametrize("args, message", [
    (["--chain-plugin", "{nope"], "netweft: cni install: --chain-plugin #1: not JSON"),
    (["--chain-plugin", '{"mtu": 1}'],
     'netweft: cni install: --chain-plugin #1: must be a JSON object with a "type" string'),
    (["--chain-plugin", '{"type": "netweft"}'],
     "netweft: cni install: --chain-plugin #1: type netweft is the plugin itself"),
    (["--cni-version", "1.1.0"],
     "netweft: cni install: --cni-version 1.1.0: chained plugin portmap supports only "
     "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0"),
])
def test_install_errors_are_one_line(tmp_path, args: list[str], message: str) -> None:
    code, out = cli(*paths(tmp_path), *args)
    assert code == 1
    assert out.strip().splitlines() == [out.strip()] and out.startswith(message), out
    assert not (tmp_path / "conf" / CONF_NAME).exists()


def test_missing_portmap_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ConflistError, match=r"^portmap: no executable in .* \(install "
                       r"containernetworking-plugins, or --no-portmap\)$"):
        install(str(tmp_path / "bin"), str(tmp_path / "conf"),
                reference_dirs=(str(tmp_path / "none"),))


def test_conf_versions_pure() -> None:
    assert conf_versions("1.0.0", {})[0][-1] == "1.1.0"
    versions, notes = conf_versions("1.0.0", {"portmap": None})
    assert versions[-1] == "1.0.0" and "cniVersions stop at 1.0.0" in notes[0]
    with pytest.raises(ConflistError, match="not one of"):
        conf_versions("2.0.0", {})
    plan = merge_chain({"plugins": [{"type": "netweft"}, {"type": "portmap", "x": 1}]},
                       "netweft", True, [{"type": "portmap", "snat": False}], False)
    assert plan.chained == [{"type": "portmap", "snat": False}]  # the given one replaces it
