"""A real PostgreSQL (Debian's package) on a free port of 127.0.0.1, its cluster in a temporary directory.

PostgreSQL refuses to run as root: where the tests run as root (CI), the cluster belongs to the
`postgres` user the package creates, and its programs run as that user (signals then reach the server
itself, not a wrapper).
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from bridge_process import free_port


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is missing: ./scripts/test installs it (apt-get install postgresql)"
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._bin = _binaries()
        # Not under pytest's tmp_path: its directories are the test user's alone, where `postgres` cannot go.
        self._home = Path(tempfile.mkdtemp(prefix="postgres-"))
        self._as: dict[str, object] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self._home, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "cwd": self._home}
        self.proc: subprocess.Popen | None = None
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._may_move = True  # until it has started once

    def start(self) -> "PostgresServer":
        data = self._home / "data"
        if not data.exists():
            subprocess.run(
                [str(self._bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                check=True,
                **self._as,  # type: ignore[arg-type]
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        settings = [
            "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self._home}", "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            [str(self._bin / "postgres"), "-D", str(data), *settings],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._as,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url, connect_timeout=1) as db:
                    # Answered by this server, not by another test's that took the port first.
                    (served,) = db.execute("SHOW data_directory").fetchone() or ("",)
                    if Path(served).resolve() == data.resolve():
                        self._may_move = False
                        return self
            except psycopg.OperationalError:
                pass
            if self.proc.poll() is not None:
                assert self._may_move, "postgres exited at start"
                # The port was taken as it was to bind it (tests run side by side): another, at its first start
                # only (a restart keeps the port its clients know).
                self.port = free_port()
                self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
                return self.start()
            time.sleep(0.1)
        raise AssertionError(f"postgres did not start on port {self.port}")

    def database(self, name: str) -> str:
        """A new, empty database `name` (made again if it was there): its URL."""
        with self.connect() as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # a fast shutdown: sessions cut, as a restart of the database does
            self.proc.wait(30)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._home, ignore_errors=True)
