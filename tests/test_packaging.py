"""`pip install .` gives the `otel-bridge` command, every subpackage (what the Dockerfile installs) and
the type hints a producer's type checker reads."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest


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
            from otel_bridge.tracker import HttpBatchTracker

            tracker = HttpBatchTracker("http://127.0.0.1:4380/v1/events", "production", "shop")
            tracker.emit("not an event")
            run_context("production", "shop", "wf-1", "charge", "2")
            """
        )
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(env / "bin" / "python")]
    result = subprocess.run([*mypy, str(producer)], capture_output=True, text=True, cwd=tmp_path)
    assert "py.typed" not in result.stdout, result.stdout
    assert 'Argument 1 to "emit" of "HttpBatchTracker" has incompatible type "str"' in result.stdout, result.stdout
    assert 'Argument 5 to "run_context" has incompatible type "str"' in result.stdout, result.stdout


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
