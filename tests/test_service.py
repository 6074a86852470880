"""`barmaid service`: the systemd units generated from the config, checked by systemd itself.

`systemd-analyze` (Debian package `systemd`) verifies the units and rates their sandbox; the tests
that need it are skipped, saying so, where it is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from barmaid.cli import main
from barmaid.config import Config, DriverConfig, load_config
from barmaid.service import units
from barmaid.store import BOOT_ID as BOOT_ID_PATH

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "scripts" / "systemd"
EXAMPLE = ROOT / "docs" / "config.example.yaml"
#: Where Linux keeps this boot's id.
BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: Where the README installs barmaid and its config.
PI_PYTHON, PI_CONFIG = "/opt/barmaid/.venv/bin/python", Path("/etc/barmaid/config.yaml")

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt install systemd)"
)


def pi_config(**driver) -> Config:
    return load_config(None, {"driver": {"kind": "pigpio", **driver}}).model_copy(
        update={"data_dir": Path("/var/lib/barmaid")}
    )


def by_name(config: Config, path: Path = PI_CONFIG, python: str = PI_PYTHON) -> dict[str, str]:
    return {str(unit.path): unit.text for unit in units(config, path, python)}


def lines(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_barmaid_unit_switches_off_through_barmaid_off_with_the_same_config_and_names_no_pin():
    service = by_name(pi_config(active_low=True))["barmaid.service"]
    assert lines(service, "ExecStart") == [f"{PI_PYTHON} -m barmaid serve --config {PI_CONFIG}"]
    assert lines(service, "ExecStopPost") == [f"{PI_PYTHON} -m barmaid off --after-pour --config {PI_CONFIG}"]
    body = "\n".join(line for line in service.splitlines() if not line.startswith("#"))
    assert not re.search(r"\b(pigs|pinctrl|raspi-gpio)\b", body)
    assert not any(str(gpio) in body.split() for gpio in (5, 6, 13, 16, 19, 20, 21, 26))


def test_barmaid_unit_wants_the_daemon_does_not_loop_on_a_config_error_and_keeps_its_data_in_var_lib():
    service = by_name(pi_config())["barmaid.service"]
    assert lines(service, "Wants") == ["pigpiod.service"] and "Requires=" not in service
    assert "pigpiod.service" in lines(service, "After")
    assert lines(service, "Restart") == ["on-failure"] and lines(service, "RestartPreventExitStatus") == ["2"]
    assert lines(service, "StateDirectory") == ["barmaid"] and lines(service, "User") == ["barmaid"]
    # long enough for `barmaid off --after-pour` to wait out the longest pour
    assert int(lines(service, "TimeoutStopSec")[0]) > pi_config().limits.max_pump_seconds


def test_a_data_dir_outside_var_lib_is_the_one_writable_path():
    config = pi_config().model_copy(update={"data_dir": Path("/srv/bar")})
    service = by_name(config)["barmaid.service"]
    assert lines(service, "ReadWritePaths") == ["/srv/bar"] and "StateDirectory=" not in service


def test_a_data_dir_in_a_home_the_service_cannot_see_is_a_config_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data_dir: /root/.local/share/barmaid\ndriver: {kind: pigpio}\n", encoding="utf-8")
    assert main(["service", "--config", str(config)]) == 2


@pytest.mark.parametrize("active_low, drive", [(True, "dh"), (False, "dl")])
def test_the_daemon_drop_in_forces_the_configs_pins_to_their_off_level_without_the_daemon(active_low, drive):
    drop_in = by_name(pi_config(active_low=active_low))["pigpiod.service.d/barmaid-pumps-off.conf"]
    (command,) = lines(drop_in, "ExecStopPost")
    assert f"pinctrl set 5,6,13,16,19,20,21,26 op {drive}" in command
    assert f"raspi-gpio set 5,6,13,16,19,20,21,26 op {drive}" in command
    assert f"gpio=5,6,13,16,19,20,21,26=op,{drive}" in drop_in  # the boot-time hint


@pytest.mark.parametrize("kind", ["pigpio", "rgpio"])
def test_the_drop_in_forces_the_pins_off_as_root_whatever_user_the_daemon_runs_as(kind):
    # rgpiod runs as an unprivileged user, which may not open /dev/gpiomem* for pinctrl/raspi-gpio.
    config = pi_config().model_copy(update={"driver": DriverConfig.model_construct(kind=kind, active_low=True)})
    (command,) = lines(by_name(config)[f"{kind}d.service.d/barmaid-pumps-off.conf"], "ExecStopPost")
    assert command.startswith("+/bin/sh -c "), command


def test_an_rgpio_config_gets_the_drop_in_on_rgpiod():
    config = pi_config().model_copy(update={"driver": DriverConfig.model_construct(kind="rgpio", active_low=False)})
    made = by_name(config)
    assert "rgpiod.service.d/barmaid-pumps-off.conf" in made
    assert lines(made["barmaid.service"], "Wants") == ["rgpiod.service"]


def test_the_barmaid_unit_lets_barmaid_read_the_boot_id_so_a_restart_can_adopt_a_pour():
    """ProcSubset=pid hides /proc/sys, and with it the boot id a pour's start is stamped with."""
    unit = by_name(pi_config())["barmaid.service"]
    assert lines(unit, "ProcSubset") in ([], ["all"]), "ProcSubset=pid hides /proc/sys/kernel/random/boot_id"
    hidden = " ".join(lines(unit, "InaccessiblePaths") + lines(unit, "TemporaryFileSystem"))
    assert not any(BOOT_ID.startswith(path.lstrip("-")) for path in hidden.split()), hidden
    assert str(BOOT_ID_PATH) == BOOT_ID


def test_simulated_pumps_get_no_daemon_and_no_drop_in():
    made = by_name(load_config(None))
    assert list(made) == ["barmaid.service"] and "Wants=" not in made["barmaid.service"]


def test_the_shipped_units_are_generated_from_the_example_config():
    expected = by_name(load_config(EXAMPLE))
    shipped = {str(PurePosixPath(p.relative_to(SHIPPED))): p.read_text(encoding="utf-8") for p in SHIPPED.rglob("*") if p.is_file()}
    regenerate = (
        "regenerate: python -c 'from pathlib import Path; from barmaid.config import load_config;"
        " from barmaid.service import install, units;"
        f' install(units(load_config(Path("{EXAMPLE.relative_to(ROOT)}")), Path("{PI_CONFIG}"), "{PI_PYTHON}"),'
        f' Path("{SHIPPED.relative_to(ROOT)}"))\''
    )
    assert shipped == expected, regenerate


def test_service_prints_the_units_and_installs_them(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("data_dir: /var/lib/barmaid\ndriver: {kind: pigpio, active_low: true}\n", encoding="utf-8")
    assert main(["service", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "# /etc/systemd/system/barmaid.service\n" in printed and "op dh" in printed
    assert main(["service", "--config", str(config), "--install", "--unit-dir", str(tmp_path / "units")]) == 0
    assert (tmp_path / "units" / "barmaid.service").is_file()
    assert (tmp_path / "units" / "pigpiod.service.d" / "barmaid-pumps-off.conf").is_file()


# ---- systemd's own checks ------------------------------------------------------------------


#: Stand-ins for the daemons' own units, as the guide runs them (rgpiod as its own user).
DAEMON_UNITS = {
    "pigpio": "[Service]\nType=forking\nExecStart=/bin/true\n",
    "rgpio": "[Service]\nUser=rgpiod\nGroup=gpio\nExecStart=/bin/true\n",
}


@pytest.fixture(params=sorted(DAEMON_UNITS))
def installed(request, tmp_path) -> Path:
    """The units for the example config with each driver and this interpreter (verify wants
    executables that exist), beside a stand-in daemon unit for the drop-in to extend."""
    kind = request.param
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE.read_text(encoding="utf-8").replace("kind: rgpio", f"kind: {kind}"), encoding="utf-8")
    unit_dir = tmp_path / "units"
    for unit in units(load_config(config), config, sys.executable):
        (unit_dir / unit.path).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / unit.path).write_text(unit.text, encoding="utf-8")
    (unit_dir / f"{kind}d.service").write_text(DAEMON_UNITS[kind], encoding="utf-8")
    return unit_dir


def systemd_analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, env=env)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_units(installed):
    (drop_in_dir,) = installed.glob("*.service.d")
    for unit in (installed / "barmaid.service", installed / drop_in_dir.stem):  # the daemon's with barmaid's drop-in
        result = systemd_analyze(installed, "verify", str(unit))
        assert result.returncode == 0 and not result.stderr.strip(), f"{unit.name}: {result.stderr}"


@needs_systemd_analyze
def test_the_barmaid_unit_is_sandboxed_to_an_exposure_of_2_5_or_lower(installed):
    result = systemd_analyze(installed, "security", "--offline=true", str(installed / "barmaid.service"))
    found = re.search(r"Overall exposure level for barmaid\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.5, result.stdout
