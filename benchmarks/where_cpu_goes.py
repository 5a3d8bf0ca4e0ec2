"""Where the sidecar's CPU goes: the running bridge sampled by py-spy under the sidecar workload, by stage.

    python benchmarks/where_cpu_goes.py [--events 100000] [--batch 100] [--clients 4] [--rate 250] [--raw FILE]

The workload of `sidecar_cpu.py` (the replay mix POSTed by concurrent clients to `otel-bridge
serve`, SQLite state, OTLP/HTTP to a local receiver, until every span is delivered), with py-spy
(`pip install py-spy`; it reads another process's memory, so it needs root or
`kernel.yama.ptrace_scope=0`) sampling the bridge's threads while they hold the interpreter
(`--gil`): what Python runs, not what waits. Each sample is counted for the innermost stage on its
stack (a sample in the metrics recorded while settling counts for "metrics"), then the functions
that take the most samples themselves. Shares, not times: the profile says where the next
microsecond is, `sidecar_cpu.py` says how many there are. Pass `--batch 6` for the producer's
usual POST.
"""

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_throughput import generate
from sidecar_cpu import CountingReceiver, bridge_process, post_all, wait_delivered

# (function, file) -> stage; a stack is counted for the first of its frames, from the innermost, that
# names one. None as the function: any function of that file.
STAGES: dict[tuple[str | None, str], str] = {
    ("encode_span", "span_encoding.py"): "settle: OTLP encoding of spans",
    ("build_spans", "spans.py"): "settle: building spans",
    ("has_gaps", "runs.py"): "settle: the gaps check",
    ("settle_run", "step.py"): "settle: the rest of deciding (observations, state)",
    ("MetricsHub.record", "metrics.py"): "metrics",
    ("MetricsHub.bridge", "metrics.py"): "metrics",
    ("Pipeline._settle_one", "pipeline.py"): "settle: the store (runs, journal, outbox)",
    ("Pipeline._settle_chunk", "pipeline.py"): "settle: the store (runs, journal, outbox)",
    ("Pipeline.settle_due", "pipeline.py"): "settle: the store (runs, journal, outbox)",
    ("parse_event", "durable_effect.py"): "decode: pydantic validation",
    ("to_lifecycle", "durable_effect.py"): "decode: wire events to lifecycle records",
    ("Pipeline.decode", "pipeline.py"): "decode: the rest",
    ("apply", "step.py"): "ingest: the fold",
    ("Pipeline._ingest", "pipeline.py"): "ingest: the store and the rest",
    ("Pipeline.ingest_records", "pipeline.py"): "ingest: the store and the rest",
    ("Pipeline.ingest", "pipeline.py"): "ingest: the store and the rest",
    (None, "outbox_drain.py"): "export: the outbox drain and OTLP/HTTP",
    (None, "otlp.py"): "export: the outbox drain and OTLP/HTTP",
    ("parse_envelope", "http.py"): "HTTP: the envelope's JSON",
    (None, "http.py"): "HTTP: the endpoint (otel_bridge)",
    (None, "httptools_impl.py"): "HTTP: uvicorn",
    (None, "h11_impl.py"): "HTTP: uvicorn",
    (None, "flow_control.py"): "HTTP: uvicorn",
    (None, "on_loop.py"): "hops: settling's slices handed to the event loop",
    (None, "group_commit.py"): "hops: worker threads and group commit",
    (None, "_asyncio.py"): "hops: worker threads and group commit",
}
_FRAME = re.compile(r"(?P<function>.*?) \((?P<path>[^()]*?):\d+\)$")


def stage_of(stack: list[tuple[str, str]]) -> str:
    for function, file in reversed(stack):
        stage = STAGES.get((function, file)) or STAGES.get((None, file))
        if stage is not None:
            return stage
    return "other (event loop, threads, the interpreter)"


def read_raw(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """py-spy's raw (collapsed) output: samples by stage, by function (self), and in all."""
    stages: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        n = int(count)
        stack = []
        for frame in stack_text.split(";"):
            if match := _FRAME.match(frame):
                stack.append((match["function"], match["path"].rsplit("/", 1)[-1]))
        if not stack:
            continue
        total += n
        stages[stage_of(stack)] += n
        function, file = stack[-1]
        own[f"{function} ({file})"] += n
    return stages, own, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="events per POST")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="py-spy's samples a second")
    parser.add_argument("--top", type=int, default=15, help="functions listed by their own samples")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here, to read a stage's callers")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    events = generate(args.events)
    bodies = [orjson.dumps({"events": events[i : i + args.batch]}) for i in range(0, len(events), args.batch)]
    receiver = CountingReceiver()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        workdir = Path(tmp) / "bridge"
        workdir.mkdir()
        bridge = bridge_process(workdir, receiver, {}).start()
        try:
            command = [spy, "record", "-p", str(bridge.proc.pid), "--gil", "-r", str(args.rate), "-f", "raw"]
            sampler = subprocess.Popen(
                [*command, "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            time.sleep(1)  # py-spy attached before the first POST
            post_all(f"{bridge.url}/v1/events", bodies, args.clients)
            wait_delivered(receiver)
            sampler.send_signal(2)  # py-spy writes what it sampled on SIGINT
            _, said = sampler.communicate(timeout=60)
        finally:
            bridge.close()
            receiver.close()
        if not raw.exists():
            sys.exit(f"py-spy wrote no profile: {said.decode(errors='replace').strip()}")
        stages, own, total = read_raw(raw)
        if args.raw is not None:
            shutil.copyfile(raw, args.raw)
    print(f"{args.events:,} events in {args.batch}-event POSTs, {args.clients} clients; {total:,} samples of the")
    print(f"bridge's threads holding the interpreter (py-spy --gil at {args.rate}/s)")
    print(f"{'share':>6}  stage")
    for stage, n in sorted(stages.items(), key=lambda item: (item[0].split(":")[0], -item[1])):
        print(f"{100 * n / total:5.1f}%  {stage}")
    print(f"\n{'share':>6}  function (its own samples, not what it calls)")
    for function, n in own.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {function}")


if __name__ == "__main__":
    main()
