"""`otel-bridge serve` as a real subprocess, the way a user runs it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_port() -> socket.socket:
    """A port of 127.0.0.1 bound and not listening — a connection to it is refused, as to a backend down — and
    held from the other tests' servers until closed, just before a server of the test's own takes it (a
    port `free_port` found was free when found, and a backend down for minutes left it to anyone)."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    return held


class BridgeProcess:
    def __init__(self, workdir: Path, otlp_endpoint: str, protocol: str = "http/protobuf", **settings: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"bridge-{self.port}.log"
        self.env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_BRIDGE_PORT": str(self.port),
            "OTEL_BRIDGE_STATE": str(workdir / "state.db"),
            "OTEL_BRIDGE_DEAD_LETTER": str(workdir / "dead-letter.jsonl"),
            "OTEL_BRIDGE_SPAN_DEAD_LETTER": str(workdir / "dead-spans.jsonl"),
            "OTEL_BRIDGE_SETTLE_SECONDS": "0.2",
            "OTEL_BRIDGE_LOG_LEVEL": "INFO",
        }
        self.env.update({k if k.startswith("OTEL_") else f"OTEL_BRIDGE_{k.upper()}": v for k, v in settings.items()})
        self.proc: subprocess.Popen | None = None
        # Where it runs: `python -m otel_bridge` imports the package found there first (a benchmark
        # points this at another checkout to measure a baseline).
        self.cwd: str | None = None
        # A command it is run through (`unshare …`), which ends by running the bridge's as its own process.
        self.wrapper: list[str] = []
        # One keep-alive client, as a producer's runtime has: a fresh client per POST costs ~20 ms.
        self.client = httpx.Client(timeout=10)

    def _listens(self, logged: int) -> bool:
        """Whether its own log, past `logged`, says it listens: another test's server that took the port as this
        one failed to bind it would answer the ready probe too, and the test went on with a bridge that had
        exited. Told at INFO: a bridge logging less (a benchmark's, alone on the machine) is taken at its probe."""
        if self.env.get("OTEL_BRIDGE_LOG_LEVEL", "INFO").upper() not in ("INFO", "DEBUG"):
            return True
        return b"listening on" in self.log.read_bytes()[logged:]

    def start(self, timeout: float = 20.0, tries: int = 3) -> "BridgeProcess":
        self.port = self.port or free_port()
        logged = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "otel_bridge", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                told = self.log.read_bytes()[logged:]
                if b"address already in use" in told.lower() and tries > 1:
                    # free_port() found it free, and another test's server took it before the bridge
                    # bound it (tests run side by side): another port.
                    self.port = free_port()
                    self.url = f"{self.url.partition('://')[0]}://127.0.0.1:{self.port}"  # http, or https
                    self.env["OTEL_BRIDGE_PORT"] = str(self.port)
                    return self.start(timeout, tries - 1)
                raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self._listens(logged):
                try:
                    if self.client.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"bridge not ready in {timeout}s:\n{self.log.read_text()}")

    def post(self, events: list[dict], **kwargs) -> httpx.Response:
        return self.client.post(f"{self.url}/v1/events", json={"events": events}, **kwargs)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM: the bridge drains and exits. True when it exited cleanly.

        uvicorn re-raises the signal once its graceful shutdown is done, so a clean
        exit shows as "terminated by SIGTERM", as for any well-behaved daemon.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code in (0, -signal.SIGTERM)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, to be run natively beside a bridge (no Docker engine here)."""
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    found = re.search(r"^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$", dockerfile, re.M)
    assert found, "the Dockerfile has no exec-form HEALTHCHECK"
    command = json.loads(found.group(1))
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]
