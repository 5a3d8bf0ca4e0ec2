"""`pip install .` gives the `otel-bridge` command, every subpackage (what the Dockerfile installs) and
the type hints a producer's type checker reads; every install of it here takes the versions of the lock."""

import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(built), "."],
        check=True,
        capture_output=True,
    )
    (found,) = built.glob("otel_bridge-*.whl")
    return found


def test_the_wheel_carries_every_package_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("receivers", "sources", "correlate", "state", "export", "producer"):
        assert f"otel_bridge/{package}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "otel-bridge = otel_bridge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_producers_type_checker_reads_the_trackers_types_from_the_installed_package(wheel, tmp_path):
    # Installed without the PEP 561 marker, the package was "missing library stubs or py.typed
    # marker" to mypy: every tracker an Any, and `--strict` an error at the import.
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (site,) = env.glob("lib/python*/site-packages")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    producer = tmp_path / "producer.py"
    producer.write_text(
        textwrap.dedent(
            """
            from otel_bridge import run_context
            from otel_bridge.tracker import HttpBatchTracker, OtelTracker

            tracker = HttpBatchTracker("http://127.0.0.1:4380/v1/events", "production", "shop")
            tracker.emit("not an event")
            run_context("production", "shop", "wf-1", "charge", "2")
            OtelTracker("production", "shop", otlp={"endpoint": "http://collector:4318", "timeout_seconds": 5})
            OtelTracker("production", "shop", otlp={"endpoint": "http://collector:4318", "timeout_seconds": "5"})
            """
        )
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(env / "bin" / "python")]
    result = subprocess.run([*mypy, str(producer)], capture_output=True, text=True, cwd=tmp_path)
    assert "py.typed" not in result.stdout, result.stdout
    assert 'Argument 1 to "emit" of "HttpBatchTracker" has incompatible type "str"' in result.stdout, result.stdout
    assert 'Argument 5 to "run_context" has incompatible type "str"' in result.stdout, result.stdout
    # The OTLP options are a TypedDict: a value of the wrong type is found, the right ones pass.
    assert 'producer.py:9: error: Argument "otlp" to "OtelTracker" has incompatible type' in result.stdout
    assert "Found 3 errors" in result.stdout, result.stdout


def test_the_module_runs_as_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "otel_bridge", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("serve", "replay", "trace-id", "demo", "config"):
        assert command in result.stdout


def test_the_redis_client_parses_replies_in_c():
    # The state, the outbox and the followed stream are read through redis-py: its pure-Python
    # reply parser cost a Redis-backed bridge a quarter of its events per CPU-second.
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE


ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, tuple[str, str]]:
    """constraints.txt as {normalised name: (version, environment marker)}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, _, marker = line.partition(";")
        name, equals, version = requirement.strip().partition("==")
        assert equals and version and " " not in version, f"not a pin: {line!r}"
        pins[canonicalize_name(name)] = (version, marker.strip())
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in (*project["dependencies"], *extras["test"], *extras["bench"])]


def test_the_lock_pins_every_declared_dependency_within_the_range_pyproject_gives():
    # Moved by ./scripts/lock only: CI, ./scripts/serve and the image install what the suite last passed
    # with, and a pin outside pyproject's range would test what no user can install.
    pins = _lock()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in constraints.txt: run ./scripts/lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {requirement}"
    assert "hiredis" in pins, "redis[hiredis]'s extra"


def test_every_install_of_the_bridge_takes_the_lock():
    for installer in ("scripts/serve", "scripts/test", "Dockerfile"):
        assert "-c constraints.txt" in (ROOT / installer).read_text(), installer
    assert "constraints.txt" in (ROOT / "Dockerfile").read_text().split("RUN pip install")[0], (
        "copied before the install"
    )


def test_the_suite_runs_on_what_the_lock_says_unless_told_to_take_the_newest():
    # What is installed of the lock (the bench extra, py-spy, is not: ./scripts/test takes `.[test]`), each
    # at the lock's version; and everything the package and its tests declare is installed.
    unpinned = bool(os.environ.get("OTEL_BRIDGE_UNPINNED"))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for declared in (*project["dependencies"], *project["optional-dependencies"]["test"]):
        assert canonicalize_name(Requirement(declared).name) in installed, f"{declared} is not installed"
    for name, (version, marker) in _lock().items():
        if name not in installed or (marker and not Marker(marker).evaluate()):
            continue
        if unpinned:
            assert Version(installed[name]) >= Version(version), f"{name} {installed[name]} is older than the lock's"
        else:
            assert installed[name] == version, f"{name} {installed[name]} installed, the lock says {version}"
