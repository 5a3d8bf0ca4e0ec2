"""A real Prometheus and a real Alertmanager for the tests, from Debian's packages, each on a port of its own; and
the rule files the stack's Prometheus loads."""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from bridge_process import free_port

ROOT = Path(__file__).resolve().parents[1]


def stack_rule_files() -> list[Path]:
    """The rule files the stack's Prometheus loads (its `rule_files`), as the files of this repository that
    docker-compose.yml mounts there."""
    named = yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())["rule_files"]
    volumes = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]["volumes"]
    mounted = {inside: ROOT / outside for outside, inside, *_ in (volume.split(":") for volume in volumes)}
    missing = [path for path in named if path not in mounted]
    assert not missing, f"prometheus.yml loads {missing}, which docker-compose.yml does not mount"
    return [mounted[path] for path in named]


def unit_tests_of(rules: Path) -> list[Path]:
    """The promtool unit tests of a rule file: `rules.test.yml` beside `rules.yml`, and any `rules.*.test.yml`
    (tests a week or a month long, evaluated at an interval of their own)."""
    return [rules.with_suffix(".test.yml"), *sorted(rules.parent.glob(f"{rules.stem}.*.test.yml"))]


def prometheus_server(binary: str, workdir: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """Prometheus with `workdir`'s config and storage, and `flags`, once it answers, and its URL."""
    config = workdir / "prometheus.yml"

    def ours(url: str) -> bool:
        return httpx.get(f"{url}/api/v1/status/flags", timeout=1).json()["data"].get("config.file") == str(config)

    return _served(
        lambda port: [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage", *flags],
        ours, workdir / "prometheus.log",
    )  # fmt: skip


def alertmanager_server(binary: str, workdir: Path, marker: str) -> tuple[subprocess.Popen, str]:
    """Alertmanager with `workdir`'s config, which holds `marker`, once it answers, and its URL; alone, not in a
    cluster (which would take a port of its own)."""

    def ours(url: str) -> bool:
        return marker in httpx.get(f"{url}/api/v2/status", timeout=1).json()["config"]["original"]

    return _served(
        lambda port: [binary, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        ours, workdir / "alertmanager.log",
    )  # fmt: skip


def _served(
    command: Callable[[int], list[str]], ours: Callable[[str], bool], log: Path, tries: int = 3
) -> tuple[subprocess.Popen, str]:
    """The server `command(port)` starts on a free port, once `ours(url)` says the server answering is this
    one (another test's that took the port first would answer too), and its URL."""
    port = free_port()
    server = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if ours(url):
                return server, url
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    server.terminate()
    server.wait(10)
    assert tries > 1, f"{command(port)[0]} did not start: {log.read_text()[-2000:]}"
    return _served(command, ours, log, tries - 1)  # its port taken as it was to bind it: another
