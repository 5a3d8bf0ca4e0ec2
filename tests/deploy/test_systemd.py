"""systemd/otel-bridge.service: systemd itself accepts it, and it agrees with the bridge it runs.

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


def _values(key: str) -> list[str]:
    """Every value of `key` in the unit (Environment= comes once a variable)."""
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


def _environment() -> dict[str, str]:
    return dict(value.split("=", 1) for value in _values("Environment"))


def test_systemd_accepts_the_unit_with_no_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd package (scripts/test installs it)"
    command = str(Path(sys.executable).with_name("otel-bridge"))
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/otel-bridge/bin/otel-bridge", command))
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_the_service_is_sandboxed_as_systemds_own_security_review_asks(tmp_path):
    # No capability, no namespaces, the syscalls of an ordinary service: 6.5 "MEDIUM" without these lines.
    command = str(Path(sys.executable).with_name("otel-bridge"))
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/otel-bridge/bin/otel-bridge", command))
    review = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", review.stdout)
    assert found, review.stdout + review.stderr
    assert float(found.group(1)) <= 2.0, review.stdout
    assert _values("UMask") == ["0077"]  # its state and dead letters may hold personal data: its own to read


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
