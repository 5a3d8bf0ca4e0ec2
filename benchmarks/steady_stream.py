"""A bridge taking a steady stream for minutes: its memory and its state file over time, beside a baseline.

    python benchmarks/steady_stream.py [--minutes 6] [--rate 2000] [--baseline DIR]

A sidecar runs for months: what it holds must stop growing where the work does not. One
`otel-bridge serve` subprocess (SQLite state, production defaults but `keep_finished_seconds`
60, so that ended runs forget their facts within the run) takes the replay mix in POSTs of 100
at `--rate` events a second, every span delivered to a local receiver; every 30 s the table
shows its RSS and the state file's size (with its write-ahead log, without the disk reserve).
What should level off: RSS, once the hot runs (`hot_runs`, 20,000) are full — the mix's
continuous jobs never end, so they fill it. What grows by design: the closed runs and job event
ids kept for `dedup_ttl_seconds` (a week), which `closed_runs.py` measures per run.
With `--baseline DIR` the same stream goes to that checkout first, then to this one.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_throughput import generate
from sidecar_cpu import CountingReceiver, bridge_process

_EVERY = 30.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stream(tree: str | None, minutes: float, rate: float) -> list[tuple[float, float, float, int]]:
    """(seconds, RSS MiB, state MiB, spans delivered) every 30 s of a stream of `rate` events a second."""
    receiver = CountingReceiver()
    workdir = Path(tempfile.mkdtemp(prefix="steady-"))
    bridge = bridge_process(workdir, receiver, {"keep_finished_seconds": "60"}, tree).start()
    assert bridge.proc is not None
    pid = bridge.proc.pid
    rows = []
    sent, seed = 0, 0
    started = time.monotonic()
    next_row = started + _EVERY
    try:
        with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as http:
            while time.monotonic() - started < minutes * 60:
                events = generate(1000, seed=seed)
                seed += 1
                for i in range(0, len(events), 100):
                    answer = http.post(f"{bridge.url}/v1/events", content=orjson.dumps({"events": events[i : i + 100]}))
                    assert answer.status_code == 200, answer.text
                sent += len(events)
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
                if time.monotonic() >= next_row:
                    state = sum(f.stat().st_size for f in workdir.glob("state.db*") if f.suffix != ".reserve")
                    rows.append((time.monotonic() - started, rss_mib(pid), state / 2**20, receiver.spans))
                    next_row += _EVERY
        bridge.stop()
    finally:
        bridge.close()
        receiver.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, given the same stream first")
    args = parser.parse_args()
    runs = {}
    if args.baseline:
        runs["baseline"] = stream(str(Path(args.baseline).resolve()), args.minutes, args.rate)
    runs["otel-bridge"] = stream(None, args.minutes, args.rate)
    print(f"{args.rate:,.0f} events/s of the replay mix in POSTs of 100 for {args.minutes:g} min")
    print("RSS and the state file, MiB")
    print("      s" + "".join(f"{name + ' RSS':>22}{'state':>8}" for name in runs))
    for n in range(min(len(rows) for rows in runs.values())):
        at = next(iter(runs.values()))[n][0]
        print(f"{at:7.0f}" + "".join(f"{rows[n][1]:>22.0f}{rows[n][2]:>8.0f}" for rows in runs.values()))
    for name, rows in runs.items():
        if len(rows) >= 3:
            (t0, _, s0, _), (t1, _, s1, _) = rows[len(rows) // 2], rows[-1]
            print(f"{name}: state file +{(s1 - s0) / (t1 - t0) * 60:.1f} MiB a minute in the second half")


if __name__ == "__main__":
    main()
