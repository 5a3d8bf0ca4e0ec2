"""A real redis-server (Debian's package) on a free port of 127.0.0.1, that a test can kill and start again."""

import shutil
import subprocess
import time

import redis
from bridge_process import free_port


class RedisServer:
    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._extra = extra
        self.proc: subprocess.Popen | None = None
        # Its own pick until it first started: one another test's server took meanwhile is picked again.
        self._may_move = port is None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *self._extra],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        for _ in range(200):
            try:
                # Answered by this server, not by another test's that took the port first.
                ours = client.info("server")["process_id"] == self.proc.pid
            except redis.AuthenticationError:  # up, and asking for a password
                ours = self.proc.poll() is None
            except (redis.ConnectionError, redis.TimeoutError):
                ours = None
            if ours is None and self.proc.poll() is None:
                time.sleep(0.05)
                continue
            if ours:
                self._may_move = False
                return self
            self.proc.wait(10)  # the port was taken: this server exited
            if not self._may_move:
                break
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            return self.start()
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
