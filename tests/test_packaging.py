"""`pip install .` gives the `otel-bridge` command and every subpackage (what the Dockerfile installs)."""

import subprocess
import sys
import zipfile


def test_the_wheel_carries_every_package_and_the_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("otel_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("receivers", "sources", "correlate", "state", "export", "producer"):
        assert f"otel_bridge/{package}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "otel-bridge = otel_bridge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


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
