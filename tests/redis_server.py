"""A real redis-server (Debian's package) on a free port of 127.0.0.1, that a test can kill and start again."""

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        # Its files where no one looks: a replica writes the primary's snapshot to its `dir` (the working
        # directory unless told) at each full sync, even with `--save ""`.
        self._home = tempfile.TemporaryDirectory(prefix="redis-", ignore_cleanup_errors=True)

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *self._extra],
            stdout=subprocess.DEVNULL,
            cwd=self._home.name,
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


class TlsRedisServer:
    """A real redis-server answering over TLS only (as managed Redis with encryption in transit does),
    its certificate signed by the test's CA; `url` carries that CA as redis-py reads it from a URL."""

    def __init__(self, pki: dict[str, str], clients_need_certificates: bool = False) -> None:
        self.pki = pki
        self._home = tempfile.TemporaryDirectory(prefix="redis-", ignore_cleanup_errors=True)
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"
        auth = ["--tls-auth-clients", "yes" if clients_need_certificates else "no"]

        def start() -> tuple[subprocess.Popen, redis.Redis]:
            self.port = free_port()
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={pki['ca.pem']}"
            command = [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            command += [
                "--appendonly",
                "no",
                "--tls-cert-file",
                pki["backend.pem"],
                "--tls-key-file",
                pki["backend.key"],
            ]
            command += ["--tls-ca-cert-file", pki["ca.pem"], *auth]
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=self._home.name)
            # Asked quickly: a port another test took may hold a server that never answers this one's TLS.
            return proc, self.client(retry=None, socket_timeout=0.2, socket_connect_timeout=0.2)

        self.proc = _on_a_free_port(start, "redis-server with TLS")

    def client(self, **options: Any) -> redis.Redis:
        pki = self.pki
        return redis.Redis(**{"host": "127.0.0.1", "port": self.port, "ssl": True, "ssl_ca_certs": pki["ca.pem"],
                              "ssl_certfile": pki["bridge.pem"], "ssl_keyfile": pki["bridge.key"],
                              "socket_timeout": 1, "socket_connect_timeout": 1, **options})  # fmt: skip

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def replica_of(primary: RedisServer) -> RedisServer:
    """A second redis-server replicating `primary`, back once it holds the primary's data and the primary
    counts it among its replicas."""
    # A primary waits `repl-diskless-sync-delay` (5 s) for more replicas before it sends its data: each
    # test with a replica spent those 5 s before it began. The replica may be made primary in its turn.
    primary.client().config_set("repl-diskless-sync-delay", 0)
    replica = RedisServer(None, "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0")
    replica.start()
    deadline = time.monotonic() + 30
    while not _synced(replica.port) or not _acknowledging(primary):
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    return replica


def _acknowledging(primary: RedisServer) -> bool:
    """Whether the replica acknowledges what `primary` sends it now. Listed online and synced, a replica
    fresh from a diskless sync is sent nothing until its first acknowledgement (up to a second later): a
    test's WAIT then timed out, the replica stopped or not. A PUBLISH travels the replication stream and
    writes no key."""
    client = primary.client()
    client.publish("replica-of", "")
    return bool(client.execute_command("WAIT", 1, 100))


class SentinelServer:
    """A real Redis Sentinel (Debian's redis-server in sentinel mode) on 127.0.0.1 watching `primary` as
    `service`, quick to call it down (half a second) and to fail it over to a replica, alone in its quorum.
    With `pki`, it answers over TLS only and reaches the primary over TLS (a `TlsRedisServer`)."""

    def __init__(
        self,
        workdir: Path,
        primary: "RedisServer | TlsRedisServer",
        service: str = "mymaster",
        pki: dict[str, str] | None = None,
    ) -> None:
        self.workdir, self.primary, self.service, self.pki = workdir, primary, service, pki
        self.proc: subprocess.Popen | None = None

    def _configure(self) -> None:
        """Its port, URL and configuration file, on a port found free."""
        pki, service = self.pki, self.service
        self.port = free_port()
        scheme, query = ("rediss", f"?ssl_ca_certs={pki['ca.pem']}") if pki else ("redis", "")
        self.url = f"{scheme}+sentinel://127.0.0.1:{self.port}/{service}/0{query}"
        self.config = self.workdir / f"sentinel-{self.port}.conf"  # Sentinel rewrites it as it learns
        listen = f"port 0\ntls-port {self.port}\n" if pki else f"port {self.port}\n"
        tls = (
            f"tls-cert-file {pki['backend.pem']}\ntls-key-file {pki['backend.key']}\n"
            f"tls-ca-cert-file {pki['ca.pem']}\ntls-auth-clients no\ntls-replication yes\n"
            if pki
            else ""
        )
        self.config.write_text(
            f"{listen}bind 127.0.0.1\ndir {self.workdir}\n{tls}"
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} 500\n"
            f"sentinel failover-timeout {service} 2000\n"
        )

    def start(self) -> "SentinelServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"

        def start() -> tuple[subprocess.Popen, redis.Redis]:
            self._configure()
            proc = subprocess.Popen([binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL)
            return proc, self.client(retry=None)

        self.proc = _on_a_free_port(start, "the Sentinel")
        return self

    def client(self, **options: Any) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": self.pki["ca.pem"]} if self.pki else {}
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1, **tls, **options
        )

    def primary_port(self) -> int | None:
        """The primary's port as clients are told it (`SENTINEL MASTERS`, which redis-py asks); None while a
        failover is under way (`GET-MASTER-ADDR-BY-NAME` names the new primary a moment earlier)."""
        (state,) = [
            m for m in self.client().execute_command("SENTINEL", "MASTERS") if m[b"name"] == self.service.encode()
        ]
        return None if b"failover_in_progress" in state[b"flags"] else int(state[b"port"])

    def wait_failed_over_from(self, port: int, seconds: float = 30) -> int:
        """The port of the primary once the Sentinel has made another than `port` primary, and says so."""
        deadline = time.monotonic() + seconds
        while (now := self.primary_port()) in (port, None):
            assert time.monotonic() < deadline, "the Sentinel did not fail the primary over"
            time.sleep(0.1)
        assert now is not None
        return now

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class RedisClusterNodes:
    """A real Redis Cluster on 127.0.0.1: three primaries in cluster mode (and `replicas` replicas of each),
    the slots shared out among them by `redis-cli --cluster create` (Debian's redis-tools), as a managed
    cluster runs them. With replicas, a primary gone is failed over within a second or two."""

    def __init__(self, workdir: Path, replicas: int = 0) -> None:
        self.workdir = workdir
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self._commands: list[list[str]] = []
        self._replicas = replicas
        self._nodes = 3 * (1 + replicas)

    def start(self) -> "RedisClusterNodes":
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        assert binary and cli, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"
        while len(self.ports) < self._nodes:
            self._commands.append(self._node(binary))
        self.procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for command in self._commands]
        try:
            for n in range(self._nodes):
                while not _answering(_plain(self.ports[n]), self.procs[n]):
                    # Found free, its port was taken by another test's server before this node bound it (the
                    # node exited): the node on another port. Before, redis-py's retries waited for minutes.
                    self._commands[n] = self._node(binary, n)
                    self.procs[n] = subprocess.Popen(self._commands[n], stdout=subprocess.DEVNULL)
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self._replicas)]
            subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True)
            self._wait_ok()
        except BaseException:
            self.close()  # a cluster that did not start leaves no node behind (the test gets no handle on it)
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        return self

    def _node(self, binary: str, n: int | None = None) -> list[str]:
        """A node's command on a port free now (its cluster bus, the port + 10000, too), as node `n`
        (a new one when None)."""
        port = free_port()
        # Each port asked for is let go before the next is asked for: the system may give one twice (a CI run
        # found two nodes on one), and a node started again may be given the port another node holds.
        taken = {*self.ports, *(p + 10_000 for p in self.ports)}
        while {port, port + 10_000} & taken or port + 10_000 > 65_535 or not _free(port + 10_000):
            port = free_port()
        if n is None:
            self.ports.append(port)
        else:
            self.ports[n] = port
        home = self.workdir / str(port)
        home.mkdir(parents=True)
        node = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        node += ["--cluster-config-file", str(home / "nodes.conf"), "--dir", str(home), "--save", ""]
        return [*node, "--appendonly", "no", "--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"]

    def _run_nodes(self) -> None:
        self.procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for command in self._commands]
        for port, proc in zip(self.ports, self.procs, strict=True):
            assert _answering(_plain(port), proc), f"redis-server did not start again on port {port}"

    def _wait_ok(self) -> None:
        """Until every node alive says the cluster is ok, and every replica has its primary's data."""
        deadline = time.monotonic() + 30
        alive = [port for port, proc in zip(self.ports, self.procs, strict=True) if proc.poll() is None]
        while not all(_synced(port) for port in alive):
            assert time.monotonic() < deadline, "the replicas did not sync"
            time.sleep(0.1)
        while not all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in alive):
            assert time.monotonic() < deadline, "the cluster is not ok"
            time.sleep(0.1)

    def kill_primary_of(self, key: str) -> int:
        """Kill (SIGKILL) the primary that holds `key`'s slot, and wait for a replica to take its place:
        the failover a managed cluster does. Its port."""
        client = redis.Redis(port=self.ports[0])
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        (holder,) = [int(r[2][1]) for r in client.execute_command("CLUSTER", "SLOTS") if r[0] <= slot <= r[1]]
        self.procs[self.ports.index(holder)].kill()
        self.procs[self.ports.index(holder)].wait(10)
        others = [port for port in self.ports if port != holder]
        deadline = time.monotonic() + 30
        while True:  # until another node holds the slot
            try:
                answer = redis.Redis(port=others[0]).execute_command("CLUSTER", "SLOTS")
                if [int(r[2][1]) for r in answer if r[0] <= slot <= r[1]] not in ([], [holder]):
                    break
            except redis.exceptions.RedisError:
                pass
            assert time.monotonic() < deadline, "no replica took the slot over"
            time.sleep(0.1)
        self._wait_ok()
        return holder

    def kill(self) -> None:
        """Every node gone at once (SIGKILL): no node answers."""
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs = []

    def start_again(self) -> "RedisClusterNodes":
        """The same nodes back, their slots as their config files keep them, their data lost (no persistence)."""
        self._run_nodes()
        self._wait_ok()
        return self

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []


def _synced(port: int) -> bool:
    """Whether the node at `port` is a primary, or a replica whose link to its primary is up and synced."""
    replication = redis.Redis(port=port).info("replication")
    return replication.get("role") == "master" or (
        replication.get("master_link_status") == "up" and not replication.get("master_sync_in_progress")
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _plain(port: int) -> redis.Redis:
    """A client of the redis-server on `port`, without redis-py's own retries, which back off for seconds
    at each refusal."""
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, retry=None)


def _on_a_free_port(start: Callable[[], tuple[subprocess.Popen, redis.Redis]], what: str) -> subprocess.Popen:
    """A server `start`ed (on a port it finds free; its process and a client of it) that answers: on another
    port when another test's server took the one found free before this one bound it (the suite runs two
    test files at once)."""
    for _ in range(5):
        proc, client = start()
        if _answering(client, proc):
            return proc
        proc.kill()
        proc.wait(10)
    raise AssertionError(f"{what} did not start on any of five ports")


def _answering(client: redis.Redis, proc: subprocess.Popen) -> bool:
    """Whether `proc`, a redis-server, answers `client` (not another test's server on its port): False once
    it has exited (its port was taken)."""
    for _ in range(200):
        try:
            if client.info("server")["process_id"] == proc.pid:
                return True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"redis-server did not start on {client.connection_pool.connection_kwargs.get('port')}")
