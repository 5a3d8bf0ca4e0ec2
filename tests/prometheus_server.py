"""A real Prometheus for the tests, from Debian's package, on a port of its own."""

import subprocess
import time
from pathlib import Path

import httpx
from bridge_process import free_port


def prometheus_server(binary: str, workdir: Path, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """Prometheus on a free port, with `workdir`'s config and storage, once it answers, and its URL. The server
    that answers is this one (its config file): another test's that took the port first would answer too."""
    port = free_port()
    config = workdir / "prometheus.yml"
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("ab"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            flags = httpx.get(f"{url}/api/v1/status/flags", timeout=1).json()["data"]
            if flags.get("config.file") == str(config):
                return server, url
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    server.terminate()
    server.wait(10)
    assert tries > 1, f"prometheus did not start: {(workdir / 'prometheus.log').read_text()[-2000:]}"
    return prometheus_server(binary, workdir, tries - 1)  # its port taken as it was to bind it: another
