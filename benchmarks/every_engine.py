"""A sidecar following every engine at once, for minutes: what it holds over time, and what it counted late.

    python benchmarks/every_engine.py [--minutes 10] [--rate 6] [--kill-at 300] [--outage-at 120 --outage-for 90]
                                      [--replicas 2] [--baseline DIR]

`otel-bridge serve` (SQLite state, production defaults but `overdue_grace_seconds` 60) follows the
event-sourced runtime's Redis stream, a Phase-10 engine's WebSocket and the runtime v2's PostgreSQL tables
(a real Redis and PostgreSQL, Debian's, in temporary directories), and takes durable-effect producers'
POSTs, while `otel-bridge demo` plays all of them (`--rate` runs a second of each, one in twenty an incident
the alerts are for), every span to a local OTLP/HTTP receiver that decodes it. Every 30 s: the bridge's
RSS, threads, open files and state file (with its write-ahead log, without the disk reserve), the spans
received, and how long the durable-effect producer's POSTs waited for their 200 since the last reading, one in
a hundred (`http.server.request.duration`, the bucket its p99 falls in: `≤2.5` ms). At the end: the events
the bridge counted late (`otel_bridge_events_late_total`: an event of a
run whose trace was already sent — a straggler a source handed over after the run's end), the warnings of
its log by kind, and the demo's counts. `--kill-at S`: kill -9 the bridge S seconds in and start it again on
the same state (the demo's tracker re-sends what was refused meanwhile). `--outage-at S --outage-for D`: the
OTLP receiver answers 503 to everything from S seconds in for D seconds (a Collector restarting); each sample
then shows the spans waiting in the outbox (`otel_bridge_outbox_depth`), and the end how long after the
outage the outbox was empty again. With `--baseline DIR` the same traffic (one seed, the demo of this
checkout) goes to that checkout's bridge first, then to this one's.

What must hold: RSS, threads and open files level off; nothing counted late that an engine wrote in order.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bridge_process import BridgeProcess, free_port
from postgres_server import PostgresServer
from redis_server import RedisServer
from sidecar_cpu import CountingReceiver, bridge_process
from steady_stream import rss_mib

_EVERY = 30.0
_DEPTH = re.compile(r"^otel_bridge_outbox_depth(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)
_ANSWERED = re.compile(r"^http_server_request_duration_seconds_bucket\{([^}]*)\} ([0-9.e+]+)$", re.M)
_COUNTER = re.compile(r'^otel_bridge_events_(late|duplicate)_total\{[^}]*receiver="([^"]+)"[^}]*\} ([0-9.e+]+)$', re.M)


def _sample(
    bridges: list[BridgeProcess], state: Callable[[], float], receiver: CountingReceiver, started: float
) -> list:
    """Seconds in; each replica's RSS, threads and open files; the state's MiB; spans received; outbox depth;
    series on /metrics."""
    each = []
    for bridge in bridges:
        assert bridge.proc is not None
        pid = bridge.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        each.append((rss_mib(pid), threads, len(os.listdir(f"/proc/{pid}/fd"))))
    outbox, series, answered = _scraped(bridges[0].url)
    return [time.monotonic() - started, each, state(), receiver.spans, outbox, series, answered]


def _scraped(url: str) -> tuple[float, float, dict[float, float]]:
    """Spans waiting in the outbox (the state's, so any replica's reading is the whole of it), the series the
    bridge's /metrics shows (which must level off: none is made per run), and its batches answered 200 so far,
    by the bucket of their time (seconds: how many took that long or less)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return float("nan"), float("nan"), {}
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    answered: dict[float, float] = collections.defaultdict(float)
    for labels, n in _ANSWERED.findall(text):
        if 'http_request_method="POST"' in labels and 'http_response_status_code="200"' in labels:
            le = re.search(r'le="([^"]+)"', labels).group(1)  # type: ignore[union-attr]
            answered[float(le)] += float(n)
    return sum(float(n) for n in _DEPTH.findall(text)), series, dict(answered)


def _p99(before: dict[float, float], now: dict[float, float]) -> str:
    """The bucket (ms) the slowest answer in a hundred fell in between two readings; `-` with none answered (or a
    tree that does not time its requests). A bridge started again counts from 0: its reading alone then."""
    if any(now.get(le, 0.0) < n for le, n in before.items()):
        before = {}
    delta = {le: n - before.get(le, 0.0) for le, n in sorted(now.items())}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return "-"
    bound = next(le for le, n in delta.items() if n >= 0.99 * total)
    return "≤" + (f"{bound * 1000:g}" if bound != float("inf") else "inf")


def _outbox(url: str) -> float:
    return _scraped(url)[0]


def _counted(url: str) -> collections.Counter:
    """This bridge process's late and duplicate events so far, by source (its counters start with the process)."""
    counted: collections.Counter = collections.Counter()
    for what, receiver, n in _COUNTER.findall(httpx.get(f"{url}/metrics", timeout=10).text):
        counted[what, receiver] += float(n)
    return counted


def soak(
    tree: str | None,
    minutes: float,
    rate: float,
    kill_at: float | None,
    seed: int,
    replicas: int,
    outage: tuple[float, float] | None = None,
) -> dict:
    receiver = CountingReceiver()
    workdir = Path(tempfile.mkdtemp(prefix="every-engine-"))
    redis, postgres = RedisServer().start(), PostgresServer().start()
    tables = postgres.database("runtime")
    ws_port = free_port()
    followed = {
        "stream_url": redis.url,
        "ws_url": f"ws://127.0.0.1:{ws_port}/ws/stream",
        "ws_api_url": f"http://127.0.0.1:{ws_port}",
        "runtime_v2_url": tables,
        "overdue_grace_seconds": "60",
    }
    shared = redis.url.rsplit("/", 1)[0] + "/1"  # the replicas' state: another database of the same Redis
    if replicas > 1:
        followed["state"] = shared
        memory = redis.client()

        def state() -> float:
            return memory.info("memory")["used_memory"] / 2**20
    else:

        def state() -> float:
            return sum(f.stat().st_size for f in workdir.glob("*/state.db*") if f.suffix != ".reserve") / 2**20

    bridges = []
    for n in range(replicas):
        (workdir / f"replica-{n}").mkdir()
        bridge = bridge_process(workdir / f"replica-{n}", receiver, dict(followed), tree)
        bridge.env["OTEL_BRIDGE_LOG_LEVEL"] = "INFO"
        bridges.append(bridge.start())
    demo_args = ["--rate", str(rate), "--duration", str(minutes * 60), "--incidents", "0.05", "--seed", str(seed)]
    demo_args += ["--stream-url", redis.url, "--ws-port", str(ws_port), "--ws-host", "127.0.0.1"]
    told = workdir / "demo.out"
    with told.open("w") as out:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "otel_bridge",
                "demo",
                "--url",
                bridges[0].url,
                *demo_args,
                "--runtime-v2-url",
                tables,
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
        )
    rows: list[list] = []
    counted: collections.Counter = collections.Counter()
    started = time.monotonic()
    next_row = started + _EVERY
    demo_ended: float | None = None
    outage_ended: float | None = None
    drained_after: float | None = None
    try:
        # Until the demo has ended and its last runs have had 30 s to be settled and sent.
        while demo_ended is None or time.monotonic() - demo_ended < 30:
            time.sleep(1)
            if demo_ended is None and demo.poll() is not None:
                demo_ended = time.monotonic()
            for bridge in bridges:
                assert bridge.proc is not None and bridge.proc.poll() is None, bridge.log.read_text()[-3000:]
            if kill_at is not None and time.monotonic() - started >= kill_at:
                counted += _counted(bridges[0].url)
                bridges[0].kill()
                bridges[0].start()
                kill_at = None
            now = time.monotonic() - started
            if outage is not None and not receiver.down and outage_ended is None and now >= outage[0]:
                receiver.down = True
            if outage is not None and receiver.down and now >= outage[0] + outage[1]:
                receiver.down, outage_ended = False, now
            if outage_ended is not None and drained_after is None and _outbox(bridges[0].url) == 0:
                drained_after = now - outage_ended
            if time.monotonic() >= next_row:
                rows.append(_sample(bridges, state, receiver, started))
                next_row += _EVERY
        for bridge in bridges:
            counted += _counted(bridge.url)
        rows.append(_sample(bridges, state, receiver, started))
        for bridge in bridges:
            bridge.stop(timeout=60)
        said = told.read_text()
    finally:
        for bridge in bridges:
            bridge.close()
        demo.kill()
        receiver.close()
        redis.close()
        postgres.close()
    warnings = collections.Counter(
        re.sub(r"[0-9a-f-]{36}|\d+", "N", line.split(" WARNING ", 1)[1])[:110]
        for bridge in bridges
        for line in bridge.log.read_text().splitlines()
        if " WARNING " in line
    )
    shutil.rmtree(workdir)  # its state files and logs, read: a failed soak leaves them to look at
    summary = json.loads(said.strip().splitlines()[-1])
    demo_said = {k: summary[k] for k in ("events", "posts", "retries", "dropped_events", "rejected_events", "engines")}
    told_outage = {"refused": receiver.refused, "drained_after_s": drained_after} if outage else None
    return {"rows": rows, "counted": counted, "warnings": warnings, "demo": demo_said, "outage": told_outage}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=6, help="runs started a second, of each engine")
    parser.add_argument("--kill-at", type=float, default=None, help="kill -9 the bridge this many seconds in")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replicas", type=int, default=1, help="replicas sharing a Redis state (1: one, on SQLite)")
    parser.add_argument("--outage-at", type=float, default=None, help="the OTLP receiver answers 503 from then")
    parser.add_argument("--outage-for", type=float, default=60, help="seconds the outage lasts")
    parser.add_argument("--baseline", help="another checkout of otel-bridge, given the same traffic first")
    args = parser.parse_args()
    outage = None if args.outage_at is None else (args.outage_at, args.outage_for)
    runs = {}
    for name, tree in ([("baseline", str(Path(args.baseline).resolve()))] if args.baseline else []) + [
        ("otel-bridge", None)
    ]:
        runs[name] = soak(tree, args.minutes, args.rate, args.kill_at, args.seed, args.replicas, outage)
    shared = f", {args.replicas} replicas sharing a Redis state" if args.replicas > 1 else ""
    down = f", the backend down from {outage[0]:g} s for {outage[1]:g} s" if outage else ""
    print(
        f"every engine, {args.rate:g} runs a second of each for {args.minutes:g} min (demo seed {args.seed}){shared}"
        f"{down}"
    )
    for name, run in runs.items():
        print(f"\n{name}")
        each = "".join(f"{'RSS MiB':>9}{'threads':>9}{'files':>7}" for _ in range(args.replicas))
        print(f"{'s':>7}{each}{'state MiB':>11}{'spans':>9}{'outbox':>9}{'series':>9}{'p99 ms':>9}")
        before: dict[float, float] = {}
        for at, replicas, state, spans, outbox, series, answered in run["rows"]:
            each = "".join(f"{rss:9.0f}{threads:9.0f}{files:7.0f}" for rss, threads, files in replicas)
            p99 = _p99(before, answered)
            before = answered
            print(f"{at:7.0f}{each}{state:11.1f}{spans:9,.0f}{outbox:9,.0f}{series:9,.0f}{p99:>9}")
        late = {source: n for (what, source), n in run["counted"].items() if what == "late" and n}
        duplicates = {source: n for (what, source), n in run["counted"].items() if what == "duplicate" and n}
        print(f"events counted late: {sum(late.values()):.0f} {late or ''}")
        print(f"events counted duplicate, by receiver: {duplicates}")
        for warning, n in run["warnings"].most_common(8):
            print(f"  {n:5} x WARNING {warning}")
        print(f"  demo: {run['demo']}")
        if run["outage"]:
            print(f"  outage: {run['outage']}")


if __name__ == "__main__":
    main()
