"""systemd/: systemd itself accepts the units, and they agree with the bridge they run.

No service manager runs here: `systemd-analyze verify` reads the unit as systemd would (an unknown key,
a bad value, a command that is not there are each a line on its stderr), with the command pointed at
this checkout's.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from otel_bridge.config import Settings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "otel-bridge.service"
BACKUP = ROOT / "systemd" / "otel-bridge-backup.service"
SERVICES = [UNIT, BACKUP]


def _values(key: str, unit: Path = UNIT) -> list[str]:
    """Every value of `key` in the unit (Environment= comes once a variable)."""
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key + "=")]


def _environment(unit: Path = UNIT) -> dict[str, str]:
    return dict(value.split("=", 1) for value in _values("Environment", unit))


def _here(unit: Path, tmp_path: Path) -> Path:
    """The unit with its command pointed at this checkout's, beside the units it names."""
    command = str(Path(sys.executable).with_name("otel-bridge"))
    for each in (ROOT / "systemd").iterdir():
        (tmp_path / each.name).write_text(each.read_text().replace("/opt/otel-bridge/bin/otel-bridge", command))
    return tmp_path / unit.name


@pytest.mark.parametrize("unit", [*SERVICES, ROOT / "systemd" / "otel-bridge-backup.timer"], ids=lambda u: u.name)
def test_systemd_accepts_the_unit_with_no_warning(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd package (scripts/test installs it)"
    here = _here(unit, tmp_path)
    verified = subprocess.run([analyze, "verify", str(here)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_the_service_is_sandboxed_as_systemds_own_security_review_asks(unit, tmp_path):
    # No capability, no namespaces, the syscalls of an ordinary service: 6.5 "MEDIUM" without these lines.
    review = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_here(unit, tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", review.stdout)
    assert found, review.stdout + review.stderr
    assert float(found.group(1)) <= 2.0, review.stdout
    assert _values("UMask", unit) == ["0077"]  # its state and dead letters may hold personal data: its own to read


def test_the_backup_reads_the_services_state_as_the_service_runs_it():
    assert _environment(BACKUP)["OTEL_BRIDGE_STATE"] == _environment()["OTEL_BRIDGE_STATE"]
    assert _values("User", BACKUP) == _values("User") == ["otel-bridge"]  # one dynamic user: the state is its
    assert _values("StateDirectory")[0] in _values("StateDirectory", BACKUP)[0].split()
    (command,) = _values("ExecStart", BACKUP)
    destination = Path(command.split()[-1])
    assert command.split()[1] == "backup-state" and destination.parent == Path("/var/lib")
    assert destination.name in _values("StateDirectory", BACKUP)[0].split()  # made for it by systemd


def test_every_bridge_variable_is_a_setting_and_the_settings_are_valid(monkeypatch):
    environment = _environment()
    assert unknown_variables(environment) == []
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    Settings()  # raises if a value is not one the bridge takes


def test_the_state_and_dead_letters_live_in_the_services_own_state_directory(monkeypatch):
    (directory,) = _values("StateDirectory")
    for name, value in _environment().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for path in (settings.state, settings.dead_letter, settings.span_dead_letter):
        assert Path(path).parent == Path("/var/lib") / directory
    assert _values("WorkingDirectory") == [f"/var/lib/{directory}"]  # relative places land there too


def test_the_stop_timeout_covers_the_drain(monkeypatch):
    for name, value in _environment().items():
        monkeypatch.setenv(name, value)
    (timeout,) = _values("TimeoutStopSec")
    assert int(timeout) >= Settings().drain_timeout_seconds + 10


@pytest.mark.parametrize("given", [["--port", "not-a-port"], ["--state", "a-file/state.db"]])
def test_what_a_restart_cannot_mend_exits_with_the_status_the_unit_does_not_restart_on(given, tmp_path):
    (prevented,) = _values("RestartPreventExitStatus")
    (tmp_path / "a-file").write_text("")  # a file where the state's folder would have to be
    done = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "serve", "--port", "0", *given],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert str(done.returncode) == prevented, done.stderr
