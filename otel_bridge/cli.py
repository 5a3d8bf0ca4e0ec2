"""The `otel-bridge` command: serve, replay, trace-id, config."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from otel_bridge import conventions as c
from otel_bridge.config import Settings, settings_table
from otel_bridge.consumer import Unavailable
from otel_bridge.ids import RunIdentity, root_span_id, trace_id_for, traceparent
from otel_bridge.state.store import StoreOpenError


class CliError(Exception):
    """A mistake in what the command was given, said in one line."""


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("-", "_").replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(settings: Settings) -> int:
    import uvicorn

    from otel_bridge.receivers.http import create_app
    from otel_bridge.receivers.http_protocol import guarded_protocol
    from otel_bridge.runtime import Bridge

    bridge = Bridge(settings)
    app = create_app(
        bridge.pipeline,
        settings,
        metrics=bridge.exposition,
        readiness=bridge.readiness,
        on_start=bridge.start,
        on_stop=bridge.stop,
    )
    uvicorn.run(
        app,
        http=guarded_protocol(settings.max_header_bytes, settings.header_timeout_seconds),
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        limit_concurrency=settings.limit_concurrency,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_seconds) + 5,
    )
    return 0


def _replay(settings: Settings, source: str, progress: bool) -> int:
    from otel_bridge.receivers.dead_letter import DeadLetters
    from otel_bridge.receivers.replay import replay
    from otel_bridge.runtime import Bridge

    if source != "-" and not Path(source).is_file():
        raise CliError(f"cannot replay {source}: no such file")
    bridge = Bridge(settings).start()
    dead_letters = DeadLetters(settings.dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups)
    try:
        summary = replay(bridge.pipeline, source, dead_letters, progress=progress)
    finally:
        bridge.stop()
        dead_letters.close()
    print(summary.render())
    return 1 if summary.rejected else 0


def _trace_id(args: argparse.Namespace) -> int:
    run = RunIdentity(args.engine, args.env, args.service, args.workflow_id)
    trace_id = trace_id_for(run.engine, run.env, run.service, run.run_id)
    print(traceparent(trace_id, root_span_id(run)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import json

    from otel_bridge.producer.demo import SCENARIOS, run_demo

    _logging("INFO")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per POST drowns the summary
    headers = dict(h.split("=", 1) for h in args.header)
    print(f"otel-bridge demo: {len(SCENARIOS)} scenarios at {args.rate}/s to {args.url}", flush=True)
    try:
        summary = run_demo(args.url, args.rate, args.duration, args.seed, headers)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(summary), flush=True)
    return 0 if summary["dropped_events"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-bridge",
        description="Turn durable workflow and job lifecycle events into OpenTelemetry traces and metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP tracker endpoint and export over OTLP")
    _add_settings_flags(serve)
    replay = sub.add_parser("replay", help="push a file of events (one JSON event per line) through the pipeline")
    replay.add_argument("file", help="JSONL file, or - for standard input")
    replay.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    _add_settings_flags(replay)
    trace = sub.add_parser("trace-id", help="print the W3C traceparent of a workflow run's root span")
    trace.add_argument("--env", required=True)
    trace.add_argument("--service", required=True, help="the producer's serviceKey")
    trace.add_argument("--workflow-id", required=True)
    trace.add_argument("--engine", default=c.PLATFORM_DURABLE_EFFECT)
    demo = sub.add_parser("demo", help="post realistic workflow and job traffic to a bridge, as a producer would")
    demo.add_argument("--url", default="http://127.0.0.1:4380/v1/events", help="the bridge's tracker endpoint")
    demo.add_argument("--rate", type=float, default=2.0, help="runs started per second")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds to generate for (0: until stopped)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable traffic")
    demo.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="extra header, e.g. X-API-KEY=…"
    )
    sub.add_parser("config", help="print the configuration table (markdown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "trace-id":
        return _trace_id(args)
    if args.command == "config":
        print(settings_table())
        return 0
    if args.command == "demo":
        return _demo(args)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        print(f"otel-bridge: invalid configuration: {problems}", file=sys.stderr)
        return 2
    _logging(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings)
        return _replay(settings, args.file, progress=not args.no_progress)
    except (ValueError, CliError, StoreOpenError, Unavailable) as exc:
        # What an operator can fix (a path, a URL, a password) is said in one line, not a traceback.
        print(f"otel-bridge: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"otel-bridge: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
