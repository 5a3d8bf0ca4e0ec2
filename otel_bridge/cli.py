"""The `otel-bridge` command: serve, replay, resend-spans, import-timeline, import-runtime-v2, trace-id, demo,
runs, show, settle-again, config."""

import argparse
import gc
import json
import logging
import os
import resource
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from pydantic import ValidationError

from otel_bridge import __version__, keys
from otel_bridge import conventions as c
from otel_bridge.config import HTTP_SCHEMES, Settings, setting_named, settings_table
from otel_bridge.consumer import AmbiguousId, IngestReport, Unavailable
from otel_bridge.correlate.overview import (
    DEFAULT_CLOSE_REASON,
    JobOverview,
    JobQuery,
    RunOverview,
    RunQuery,
    seconds_of,
)
from otel_bridge.ids import RunIdentity, traceparent
from otel_bridge.propagation import span_context_for
from otel_bridge.state.sqlite_store import damaged
from otel_bridge.state.store import StoreDamaged, StoreInUse, StoreOpenError, damage_met, damaged_said
from otel_bridge.tokens import label_problem
from otel_bridge.urls import events_url, host_problem, without_secrets
from otel_bridge.visible import TextLog, visible, visible_lines

T = TypeVar("T")

if TYPE_CHECKING:
    import httpx
    from rich.console import RenderableType

    from otel_bridge.consumer import EventConsumer
    from otel_bridge.heard import Producer
    from otel_bridge.pipeline import Pipeline
    from otel_bridge.preflight import Finding
    from otel_bridge.receivers import timeline_api
    from otel_bridge.receivers.served_tls import ServedCertificate
    from otel_bridge.state.store import Transaction

log = logging.getLogger(__name__)


class CliError(Exception):
    """A mistake in what the command was given, said in one line."""


class BridgeNotReached(CliError):
    """No answer from the running bridge asked (none listening, none in time, its TLS refused): `reason`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _add_remote_flags(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"ask a running bridge (GET /v1/{kind}) instead of the store: from another machine or pod, with the "
        "credential the settings give (OTEL_BRIDGE_API_KEY; a producer's own key lists its producer's alone)",
    )
    parser.add_argument(
        "--timeout", type=_above_zero, default=30.0, help="with --url: seconds to wait for its answer (default 30)"
    )


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag, after the command's own arguments (so call it last): in a group of their
    own, below the command's options in `--help`, and one `[--SETTING VALUE ...]` in the usage line
    instead of seventy that bury the command's own."""
    parser.usage = parser.format_usage().removeprefix("usage: ").rstrip() + " [--SETTING VALUE ...]"
    group = parser.add_argument_group(
        "settings", "Any setting of the bridge, each also an environment variable: `otel-bridge config` lists them."
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("-", "_").replace("_", "-")
        if field.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            group.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=field.description)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _logging(level: str, log_format: str = "text") -> None:
    """Text for a terminal; JSON, one object a line, for a log pipeline (Loki, Elasticsearch, a
    Collector's filelog receiver), the server's own lines included."""
    if log_format == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
                timestamp="time",  # ISO 8601, UTC
                json_ensure_ascii=False,
                # uvicorn adds its message again with terminal colour codes: not for a log pipeline.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            )
        )
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(TextLog("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=level.upper(), handlers=[handler])
    if level.upper() != "DEBUG":
        # httpx says every request at INFO: a catch-up or an import of thousands of timelines, a demo's
        # every POST, drowned what the bridge says of them (how many, which failed).
        logging.getLogger("httpx").setLevel(logging.WARNING)


def own_process_gc() -> None:
    """Garbage collection for a process that is the bridge (serve, replay), never an application
    the in-process tracker lives in.

    What start-up loaded is never garbage, and the runs kept in memory are thousands of long-lived
    containers every collection of the old generation walks again; the pipeline makes few
    reference cycles (its objects are freed by their reference counts). So start-up's objects are
    frozen out of collection, and the young generation is collected every 10,000 allocations
    rather than 700: 3 % fewer instructions per event (benchmarks/instructions.py).
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)


def _more_file_descriptors() -> None:
    """The soft limit of open files raised to the hard one, for a process that is the bridge (serve), never an
    application the in-process tracker lives in; as Go's runtime does for every program.

    Each producer's kept-alive connection holds a descriptor. systemd starts a service with a soft limit of
    1,024 (its hard one 524,288), left low for programs that still use select(); nothing here does. At the
    limit, new connections were dropped unanswered and a dead letter's file could not be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a hard limit the kernel's own bound is below (nr_open)
            log.debug("open files stay limited to %d: %s", soft, exc)


def _not_a_file(path: str, stdin: bool = False) -> str:
    """Why `path` cannot be read as a file (`stdin`: the command reads standard input as `-`)."""
    if Path(path).is_dir():
        return "a directory, not a file"
    if Path(path).exists():  # a pipe, a device: it was told "no such file"
        return "not a regular file" + (" (`-` reads standard input)" if stdin else "")
    return "no such file"


def _listening(host: str, port: int) -> list[socket.socket]:
    """The HTTP server's sockets, bound before the bridge opens its state and handed to uvicorn.

    Left to uvicorn, a port another server holds was found only after the bridge had started (its
    state opened, its threads running), and told among uvicorn's lines with exit 3; a start-up
    mistake is one line and exit 2. Each address `host` names is bound with SO_REUSEADDR; `""` names
    every address of both families, as asyncio's `create_server` takes none. An IPv6 socket takes IPv4
    too (`::`: a dual-stack cluster's pod reached at either address) unless an IPv4 socket of the same
    port is bound beside it, as `""` gives on a host with both (`""` was refused, and `::` took IPv6
    alone)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    both = {socket.AF_INET, socket.AF_INET6} <= {family for family, *_ in addresses}
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(addresses):
            sockets.append(listener := socket.socket(family, kind, proto))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(both))
            listener.bind(address)
    except OSError as exc:
        for listener in sockets:
            listener.close()
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror} (--port or OTEL_BRIDGE_PORT for another)"
        ) from None
    return sockets


def _served_tls(settings: Settings) -> "ServedCertificate | None":
    """The certificate the server serves HTTPS with, as it is renewed (None: plain HTTP). CliError when it
    could not load it, naming the files, before the state is opened."""
    from otel_bridge.certificates import TlsFilesError
    from otel_bridge.receivers.served_tls import ServedCertificate

    certfile, keyfile, password = settings.tls_certfile, settings.tls_keyfile, settings.tls_keyfile_password
    if certfile is None:
        if keyfile is not None:  # uvicorn would serve plain HTTP and say nothing
            raise CliError(f"tls_keyfile {keyfile} is set without tls_certfile: give both to serve HTTPS")
        return None
    try:
        return ServedCertificate(certfile, keyfile, password)
    except TlsFilesError as exc:
        raise CliError(str(exc)) from None


def _serve(settings: Settings) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

    from otel_bridge.receivers.http import create_app
    from otel_bridge.receivers.http_protocol import guarded_protocol
    from otel_bridge.receivers.https_port import HttpsServer
    from otel_bridge.receivers.served_tls import look_again
    from otel_bridge.receivers.while_starting import answering
    from otel_bridge.runtime import Bridge

    _more_file_descriptors()
    served = _served_tls(settings)
    tls = served.context if served is not None else None
    listening = _listening(settings.host, settings.port)
    # A salvage at start takes ~20 s a GiB: the port says meanwhile that the bridge is alive, and not ready.
    bridge = Bridge.opened(settings, while_salvaging=lambda: answering(listening, "salvaging its state file", tls))
    scheme = "https" if served is not None else "http"
    bridge.served_certificate = served
    bridge.serving_http(tls=served is not None)

    def start() -> None:  # on the server's event loop, as it starts
        bridge.start()
        bridge.settle_on_loop()
        look_again(served, settings.tls_reload_seconds)
        # uvicorn tells where it listens only of the sockets it binds itself.
        for listener in listening:
            address, port = listener.getsockname()[:2]
            log.info("listening on %s://%s:%d", scheme, f"[{address}]" if ":" in address else address, port)

    app = create_app(
        bridge.consumer("http"),
        settings,
        metrics=bridge.exposition,
        readiness=bridge.readiness,
        liveness=bridge.liveness,
        on_start=start,
        on_stop=bridge.stop,
        dead_letters=bridge.dead_letters,
        ingest_inline=bridge.ingests_inline,
        credentials=bridge.credential_used,
        answered=bridge.request_answered,
        turned_away=bridge.consumer("http").turned_away,
        runs=lambda query, limit: _as_dicts(bridge.pipeline.list_runs(query, limit=limit), settings.trace_url),
        close=lambda id_, reason, jobs, service: [
            closed.as_dict(settings.trace_url) for closed in bridge.pipeline.close(id_, reason, jobs, service)
        ],
        jobs=lambda query, limit: _jobs_as_dicts(bridge.pipeline.list_jobs(query, limit=limit)),
        not_open=bridge.pipeline.not_open,
    )
    own_process_gc()
    config = uvicorn.Config(
        app,
        http=guarded_protocol(
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            settings.limit_concurrency,
            bridge.handshake_failed,
        ),
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]  # a float is what call_later takes
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # `server: uvicorn` on every answer told a scanner of an endpoint the internet reaches what it runs.
        server_header=False,
        # X-Forwarded-* would only name a client in debug lines. The middleware that reads them is a
        # coroutine frame between uvicorn and the endpoint, in every resumption of it: 1.3 % of py-spy's
        # samples in 6-event POSTs (`where_cpu_goes.py --batch 6`), 0.5 µs a request called alone.
        proxy_headers=False,
        # JSON: the server's lines go through the same handler as the bridge's (its own config is text).
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        timeout_graceful_shutdown=int(settings.drain_timeout_seconds) + 5,
    )
    # HTTPS is served from the context already loaded, which serves renewed certificates (uvicorn's own would load
    # the files again and keep what it read), by a port that sees how each connection begins (`https_port`).
    server = (
        uvicorn.Server(config)
        if tls is None
        else HttpsServer(config, tls, bridge.request_answered, bridge.handshake_failed)
    )
    server.run(sockets=listening)
    # As `uvicorn.run` ends: a server that never started (its lifespan failed) exits with 3.
    return 0 if server.started else STARTUP_FAILURE


def _replay(settings: Settings, source: str, progress: bool, source_format: str) -> int:
    from otel_bridge.receivers.replay import replay
    from otel_bridge.runtime import Bridge

    if source != "-" and not Path(source).is_file():
        raise CliError(f"cannot replay {source}: {_not_a_file(source, stdin=True)}")
    if source != "-":
        _not_written_by_it(source, settings.dead_letter, "replay", "dead-letter file this replay")
    bridge = Bridge.opened(settings).start(follow=False, history=True)
    own_process_gc()
    summary = None
    try:
        summary = replay(
            bridge.consumers_by_format("replay"),
            source,
            bridge.dead_letters,
            progress=progress,
            waits=bridge.waited_for_room,
            source_format=source_format,
        )
    finally:
        # Read to its end, the file is all there is: a run ended with a gap (an event lost from the
        # history) is sent, not kept in the state for a straggler that will not come. Stopped at a
        # line, the rest may fill it when the same command goes on.
        whole = summary is not None and not (summary.interrupted or summary.stopped or summary.broken)
        bridge.stop(told_all=whole)
    assert summary is not None
    print(visible_lines(summary.render()))  # events' ids and reasons, as the file had them
    if summary.interrupted:
        return 128 + _stopped_by[0]  # as a shell reports a process a signal stopped: 130 for Ctrl-C
    return 2 if summary.stopped or summary.broken else 1 if summary.rejected else 0


def _not_written_by_it(source: str, written: Path, verb: str, what: str) -> None:
    """A command that appends what it sets aside again to `written` must not read that file: it
    would read its own output. `what`: the file and its writer, as the message names them."""
    if Path(source).resolve() == Path(written).resolve():
        raise CliError(
            f"cannot {verb} {source}: it is the {what} writes to; "
            f"move it aside first (mv {source} {source}.old) and {verb} that"
        )


def _resend_spans(settings: Settings, source: str) -> int:
    """Spans the backend refused for good (a span dead-letter file) back into the outbox, then sent."""
    from otel_bridge.export.dead_spans import NotResendable, outbox_row
    from otel_bridge.json_text import loads
    from otel_bridge.runtime import Bridge

    if not Path(source).is_file():
        raise CliError(f"cannot resend {source}: {_not_a_file(source)}")
    _not_written_by_it(source, settings.span_dead_letter, "resend", "span dead-letter file this bridge")
    rows, unreadable = [], []
    with Path(source).open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(outbox_row(loads(line)))
            except (ValueError, NotResendable) as exc:
                unreadable.append(f"  line {number}: {exc}")
    bridge = Bridge.opened(settings).start(follow=False)
    try:
        before = bridge.store.outbox_depth()
        for start in range(0, len(rows), 1000):
            bridge.store.run(partial(_outbox_add, rows[start : start + 1000]))
        bridge.drain.wake()
    finally:
        bridge.stop()
    exported, refused = bridge.drain.exported, bridge.drain.set_aside
    # What the outbox holds once stopped: the spans of runs the stop settled count too, sent or not.
    left = bridge.outbox_at_exit or 0
    print(
        f"spans: {len(rows) + len(unreadable)}  queued: {len(rows)}  exported: {exported}  "
        f"refused again: {refused}  not readable: {len(unreadable)}" + (f"  outbox before: {before}" if before else "")
    )
    if unreadable:
        print("\n".join(unreadable[:20]))
    if refused:
        print(f"the backend refused {refused} again: kept in {settings.span_dead_letter} with its reason")
    if left:
        print(f"{left} spans are still in the outbox (the backend did not take them in time): sent at the next start")
        return 2
    if bridge.kept_at_exit:  # `--state :memory:`, so as not to open the running bridge's state
        print(
            f"{bridge.kept_at_exit} spans were not sent in time (the backend did not take them): the state is in "
            f"memory, so they are kept in {settings.span_dead_letter}; move it aside and resend it"
        )
        return 2
    return 1 if refused or unreadable else 0


def _salvage_state(settings: Settings) -> int:
    """What still reads of a damaged SQLite state file, copied into a fresh one put in its place."""
    from otel_bridge.state.salvage import SalvageError, salvage

    if settings.shared_state or settings.in_memory:
        raise CliError(f"salvage-state salvages a SQLite state file; the state is {settings.state}")
    path = Path(settings.state)
    if not path.is_file():
        raise CliError(f"no state file at {path}")
    try:
        done = salvage(path, settings.salvage_keep_damaged)
    except SalvageError as exc:
        raise CliError(str(exc)) from None
    if done is None:
        print(f"{path}: SQLite finds nothing damaged in it (PRAGMA quick_check): nothing done")
        return 0
    first, *rest = done.told()
    print(f"{path}: salvaged, {first}")
    for line in rest:
        print(f"  {line}")
    print("  start the bridge: it takes again the events the damage rejected, from the dead-letter file")
    return 0


def _backup_state(settings: Settings, to: Path) -> int:
    """One moment of the SQLite state file, whole, copied to `to` beside a running bridge."""
    from otel_bridge.state.backup import BackupError, back_up

    if settings.shared_state or settings.in_memory:
        raise CliError(f"backup-state copies a SQLite state file; the state is {settings.state} (Redis keeps its own)")
    if to.is_dir():
        to = to / Path(settings.state).name
    try:
        copied = back_up(Path(settings.state), to)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    print(
        f"{settings.state} backed up to {to}: {copied.runs:,} run states, {copied.jobs:,} job instances, "
        f"{copied.outbox:,} spans waiting for export, {copied.size_bytes / 2**20:.1f} MiB"
    )
    return 0


def _settle_again(settings: Settings, dry_run: bool) -> int:
    """Runs set aside after failing to settle `settle_attempts` times, or kept aside as unreadable by
    the version that met them, put back in play (due now)."""
    from otel_bridge.correlate.runs import RunState
    from otel_bridge.runtime import open_store
    from otel_bridge.state import journal

    if settings.in_memory:
        raise CliError(
            f"settle-again puts back the runs set aside in a state file or Redis; the state is {settings.state}"
        )
    if not settings.shared_state and not Path(settings.state).is_file():
        # Opened to write, a path mistyped would be a new, empty state: "set aside: 0", the real one untold.
        raise CliError(f"no state file at {settings.state}")
    store = open_store(settings, read_only=dry_run)  # only looking: beside a running bridge, as `runs` does
    try:
        aside = list(journal.kept_aside(store).items())
        for key, blob in aside:
            try:
                state, reason, at = journal.read_aside(key, blob)
            except ValueError as exc:
                print(f"{keys.readable(key)}  cannot be read by this version: {exc}")
                continue
            named = f"{state.run.name}  " if isinstance(state, RunState) and state.run.name else ""
            when = f" {datetime.fromtimestamp(at).isoformat(sep=' ', timespec='seconds')}" if at else ""
            print(f"{named}{keys.readable(key)}  set aside{when}: {reason}")
        if dry_run or not aside:
            print(f"set aside: {len(aside)}" + ("  (--dry-run: nothing put back)" if aside else ""))
            return 0
        left = []
        for key, _blob in aside:
            try:
                why = store.run(
                    partial(journal.put_back, aside=key, now=time.time(), dedup_ttl=settings.dedup_ttl_seconds)
                )
            except ValueError as exc:
                why = f"cannot be read by this version: {exc}"
            if why is not None:
                left.append(f"  {keys.readable(key)}: {why}")
    finally:
        store.close()
    print(
        f"set aside: {len(aside)}  put back: {len(aside) - len(left)} (due now: `serve` settles them; one that "
        f"fails again is set aside again, with the new reason)  left: {len(left)}"
    )
    if left:
        print("\n".join(left))
    return 1 if left else 0


def _outbox_add(rows: list[tuple[str, bytes]], tx: "Transaction") -> None:
    tx.outbox_add(rows)


def _import_timeline(settings: Settings, args: argparse.Namespace) -> int:
    """Phase-10 timeline documents -> complete traces: files, timeline URLs, or every execution of a
    workflow the engine's API lists (`--workflow-id`, in a window of start times)."""
    import httpx

    from otel_bridge.receivers import timeline_api
    from otel_bridge.runtime import Bridge

    workspace = args.workspace_id or settings.ws_workspace_id
    headers = {"X-Workspace-Id": workspace} if workspace else {}
    api_url = settings.ws_api_url or ""
    if args.workflow_id and not api_url:
        raise CliError(
            "--workflow-id lists executions from the engine's API: give it with --ws-api-url http://HOST:PORT"
        )
    if not args.sources and not args.workflow_id:
        raise CliError("nothing to import: give timeline files or URLs, or --workflow-id with --ws-api-url")
    window = timeline_api.Window(_moment(args.since, "--since"), _moment(args.until, "--until"))
    documents = _timeline_documents(args.sources, headers)
    bridge = Bridge.opened(settings).start(follow=False, history=True)
    consumer = bridge.consumer("import-timeline", bridge.phase10_decoder().timeline_document)
    total = IngestReport()
    rejected: list[str] = []  # (where from: what was wrong)
    unfetched: list[str] = []
    done = 0

    def store(batch: list[tuple[str, Any]]) -> None:
        nonlocal done
        report = consumer.ingest([document for _where, document in batch])
        total.add(report)
        for r in report.rejected:
            rejected.append(f"  {batch[r.index][0]}: {r.error}")
        if report.rejected:
            bridge.dead_letters.keep("import-timeline", [(r.as_dict(), batch[r.index][1]) for r in report.rejected])
        done += len(batch)

    try:
        if documents:
            store(documents)
        with httpx.Client(timeout=30, headers=headers) as client:
            for asked in args.workflow_id:
                try:
                    for page in _history_pages(client, api_url, asked, window, args.status, unfetched):
                        store([(where, timeline_api.in_workspace(d, workspace)) for where, d in page])
                except (httpx.HTTPError, timeline_api.ApiError) as exc:
                    stored = f"{done} timelines stored; the same command again goes on, what is stored is a duplicate"
                    raise CliError(
                        f"cannot list the executions of {asked.partition('=')[0]}: {exc} ({stored})"
                    ) from None
    finally:
        bridge.stop(told_all=True)  # a timeline tells its execution whole: nothing will fill a gap
    print(
        f"timelines: {done}  events accepted: {total.accepted}  duplicates: {total.duplicates}  "
        f"rejected: {len(rejected)}" + (f"  not fetched: {len(unfetched)}" if unfetched else "")
    )
    for line in (rejected + unfetched)[:20]:
        print(visible(line))
    return 1 if rejected or unfetched else 0


class _Counted:
    """A consumer's reports, added up."""

    def __init__(self, consumer: "EventConsumer") -> None:
        self._consumer = consumer
        self.total = IngestReport()
        self.rejected: list[str] = []

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        report = self._consumer.ingest(events, producer=producer)
        self.total.add(report)
        self.rejected += [f"  {r.error}" for r in report.rejected]
        return report


def _import_runtime_v2(settings: Settings, args: argparse.Namespace) -> int:
    """The runtime v2's runs changed since `--since` (all of them by default), read from its tables at once."""
    import psycopg

    from otel_bridge.receivers.postgres_poll import TablePoller, export_sql
    from otel_bridge.runtime import Bridge
    from otel_bridge.sources.runtime_v2 import levels_from

    if args.export_sql:
        print(export_sql(settings.capture_input, levels_from(settings.runtime_v2_log_level)), end="")
        return 0
    if not settings.runtime_v2_url:
        raise CliError("nothing to import from: give the runtime's database with --runtime-v2-url postgresql://…")
    since = _moment(args.since, "--since") or datetime(1970, 1, 1, tzinfo=UTC)
    bridge = Bridge.opened(settings).start(follow=False, history=True)
    counted = _Counted(bridge.consumer("import-runtime-v2", bridge.runtime_v2_decoder()))
    poller = TablePoller(
        settings.runtime_v2_url,
        counted,
        bridge.dead_letters,
        recall=lambda _name: None,
        note=lambda _name, _value: None,  # the serving bridge's mark is its own
        overlap_seconds=0,
        capture_input=settings.capture_input,
        log_levels=levels_from(settings.runtime_v2_log_level),
        start=since,
        follows=False,
    )
    try:
        runs = poller.poll_once()
    except psycopg.Error as exc:
        raise CliError(f"cannot read the runs at {without_secrets(settings.runtime_v2_url)}: {exc}") from None
    finally:
        poller.close()
        bridge.stop(told_all=True)  # the tables tell each run whole: nothing will fill a gap
    total = counted.total
    print(
        f"runs: {runs}  events accepted: {total.accepted}  duplicates: {total.duplicates}  "
        f"rejected: {len(counted.rejected)}"
    )
    for line in counted.rejected[:20]:
        print(visible(line))
    return 1 if counted.rejected else 0


def _timeline_documents(sources: list[str], headers: dict[str, str]) -> list[tuple[str, Any]]:
    """(where from, document) of each timeline in these files or URLs (a file may hold a list)."""
    import httpx

    from otel_bridge.json_text import loads
    from otel_bridge.receivers import timeline_api

    documents: list[tuple[str, Any]] = []
    for source in sources:
        if source.startswith(HTTP_SCHEMES):
            try:
                response = httpx.get(source, headers=headers, timeout=30)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise CliError(f"cannot fetch {source}: {exc}") from None
            body = response.content
            fetched_in = headers.get("X-Workspace-Id")
        elif Path(source).is_file():
            body = Path(source).read_bytes()
            fetched_in = None  # a file's workspace is not known
        else:
            raise CliError(f"cannot import {source}: {_not_a_file(source)}")
        try:
            parsed = loads(body)
        except ValueError as exc:
            raise CliError(f"{source} is not JSON: {exc}") from None
        found = parsed if isinstance(parsed, list) else [parsed]
        documents.extend((source, timeline_api.in_workspace(d, fetched_in)) for d in found)
    return documents


def _history_pages(
    client: "httpx.Client",
    api_url: str,
    asked: str,
    window: "timeline_api.Window",
    status: str | None,
    unfetched: list[str],
) -> Iterator[list[tuple[str, Any]]]:
    """One workflow's timelines (`ID[=NAME]`) a page at a time, so that a history of thousands of
    executions is never held whole; those that could not be fetched are noted in `unfetched`. A
    failing listing raises, after the page fetched before it."""
    from otel_bridge.receivers import timeline_api

    # `ID=NAME`: timelines carry no workflow name; without one the runs are named by the id.
    workflow, _, name = asked.partition("=")
    page: list[tuple[str, Any]] = []
    try:
        for execution, got in timeline_api.history(client, api_url, workflow, window, status, name):
            if isinstance(got, Exception):
                unfetched.append(f"  {execution}: {got}")
                continue
            page.append((execution, got))
            if len(page) >= timeline_api.PAGE:
                yield page
                page = []
    except Exception:
        if page:
            yield page
        raise
    if page:
        yield page


def _moment(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    from otel_bridge.sources.wire import utc

    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise CliError(f"{flag} {text!r} is not an ISO 8601 time (2026-11-30 or 2026-11-30T08:00:00Z)") from None


def _from_the_store(settings: Settings, listing: Callable[["Pipeline"], T]) -> T:
    """What `listing` reads of the store of a bridge that may be running, the store closed after."""
    pipeline = _looking_pipeline(settings)
    try:
        return listing(pipeline)
    finally:
        pipeline.store.close()


def _looking_pipeline(settings: Settings) -> "Pipeline":
    """The store of a bridge that may be running, opened only to look."""
    from otel_bridge.export.metrics import MetricsHub
    from otel_bridge.pipeline import Pipeline
    from otel_bridge.runtime import open_store

    if settings.in_memory:  # it read "cannot open the state file :memory:: no state file at :memory:"
        raise CliError("the state is in memory (:memory:), the running bridge's alone: nothing on disk to read")
    return Pipeline(open_store(settings, read_only=True), MetricsHub(), settings)


def _as_dicts(listed: tuple[list[RunOverview], int], trace_url: str | None) -> tuple[list[dict[str, Any]], int]:
    runs, count = listed
    return [r.as_dict(trace_url) for r in runs], count


def _jobs_as_dicts(listed: tuple[list[JobOverview], int]) -> tuple[list[dict[str, Any]], int]:
    jobs, count = listed
    return [j.as_dict() for j in jobs], count


def _runs(settings: Settings, args: argparse.Namespace) -> int:
    from rich.text import Text

    from otel_bridge.terminal import runs_table, runs_title

    query = RunQuery(args.run_state, args.overdue, args.service, args.env, args.workflow, args.silent_for)
    if args.url is not None:  # a running bridge's listing, as it answers GET /v1/runs
        given = {"state": query.state, "service": query.service, "env": query.env, "workflow": query.workflow}
        told, count, only = _listed_by(settings, args.url, "runs", given | {"silent_for": query.silent_for}, args)
        runs = [RunOverview.from_dict(run) for run in told]
        query = replace(query, service=only or query.service)  # a producer's own key lists its own alone
    else:
        runs, count = _from_the_store(settings, lambda pipeline: pipeline.list_runs(query, limit=args.limit))
        told = [r.as_dict(settings.trace_url) for r in runs]
    title = runs_title(len(runs), count, query)  # says "the 1,000 oldest of …" when cut short
    if args.json:
        print(json.dumps(told, indent=2))
        if count > len(runs):
            print(f"{title}: --limit N for more", file=sys.stderr)
    else:
        # No table with headers over no rows: it reads as if the rows failed to show.
        fit = _terminal_width()
        _printed(runs_table(runs, settings.trace_url, title, time.time_ns(), fit) if runs else Text(title))
    return 0


def _terminal_width() -> int | None:
    """The terminal's width, None when the listing is piped (written as wide as its rows need)."""
    from rich.console import Console

    return Console().width if sys.stdout.isatty() else None


def _printed(listing: "RenderableType") -> None:
    """A listing on a terminal as its width allows; piped (to grep, a file, `kubectl exec` without -t), as
    wide as its rows need, each cell on its lines: at 200 columns a traceparent was folded over two lines,
    and neither pasted nor grepped whole."""
    from rich.console import Console

    from otel_bridge.terminal import widest

    Console(width=None if sys.stdout.isatty() else widest(listing)).print(listing)


def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    from rich.text import Text

    from otel_bridge.terminal import jobs_table, jobs_title

    query = JobQuery(args.overdue, args.service, args.env, args.job, args.failing)
    if args.url is not None:  # a running bridge's listing, as it answers GET /v1/jobs
        given = {"service": query.service, "env": query.env, "job": query.job, "failing": _flag(query.failing)}
        told, count, only = _listed_by(settings, args.url, "jobs", given, args)
        jobs = [JobOverview.from_dict(job) for job in told]
        query = replace(query, service=only or query.service)
    else:
        jobs, count = _from_the_store(settings, lambda pipeline: pipeline.list_jobs(query, limit=args.limit))
        told = [j.as_dict() for j in jobs]
    title = jobs_title(len(jobs), count, query)
    if args.json:
        print(json.dumps(told, indent=2))
        if count > len(jobs):
            print(f"{title}: --limit N for more", file=sys.stderr)
        return 0
    _printed(jobs_table(jobs, title, time.time_ns(), _terminal_width()) if jobs else Text(title))
    return 0


def _listed_by(
    settings: Settings, url: str, kind: str, filters: Mapping[str, object], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], int, str | None]:
    """What the bridge at `url` lists of `kind` (`GET /v1/runs|jobs`) with these filters, asked with the
    credential these settings give, its count, and the producer it listed alone (a producer's own key)."""
    import httpx

    base = url.rstrip("/")
    asked = {key: _query_value(value) for key, value in filters.items() if value is not None}
    asked |= {"overdue": "true" if args.overdue else "false", "limit": str(args.limit)}
    with httpx.Client(timeout=args.timeout, headers=_credential(settings)) as client:
        listed = _asked(base, partial(client.get, f"{base}/v1/{kind}", params=asked)).json()
    return list(listed[kind]), int(listed["count"]), listed.get("service")


def _flag(value: bool) -> str | None:
    """A listing's flag as the bridge takes it, left out when false (a bridge before it knew none)."""
    return "true" if value else None


def _query_value(value: object) -> str:
    # A duration as `seconds_of` reads it back: never `1e+16`, as str() writes a large float.
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _check(settings: Settings, timeout_seconds: float, as_json: bool = False) -> int:
    from otel_bridge.preflight import check

    return _told(check(settings, timeout_seconds), as_json)


def _probe(args: argparse.Namespace) -> int:
    from otel_bridge.probe import probe

    if (headers := _headers_given(args.header)) is None:
        return 2
    if args.cafile is not None and not Path(args.cafile).is_file():
        print(f"otel-bridge: --cafile {args.cafile}: {_not_a_file(args.cafile)}", file=sys.stderr)
        return 2
    return _told(probe(args.url, headers, args.cafile, args.worker, args.timeout), args.json)


def _headers_given(given: list[str]) -> dict[str, str] | None:
    """The `--header NAME=VALUE` flags as headers; None when one is not that, said on stderr."""
    malformed = [h for h in given if "=" not in h or not h.split("=", 1)[0].strip()]
    if malformed:
        print(f"otel-bridge: --header {malformed[0]!r} is not NAME=VALUE", file=sys.stderr)
        return None
    return dict(h.split("=", 1) for h in given)


def _told(findings: "list[Finding]", as_json: bool) -> int:
    """Findings as lines (or JSON); exit 1 when one failed."""
    failed = any(f.ok is False for f in findings)
    if as_json:
        checks = [{"check": f.what, "ok": f.ok, "detail": f.detail} for f in findings]
        print(json.dumps({"ok": not failed, "checks": checks}, indent=2))
        return 1 if failed else 0
    width = max(len(f.what) for f in findings)
    for finding in findings:
        mark = {True: "ok", False: "FAIL", None: "-"}[finding.ok]
        print(f"{mark:<5} {finding.what:<{width}}  {finding.detail}")
    return 1 if failed else 0


def _show(settings: Settings, workflow_id: str) -> int:
    from rich.console import Console
    from rich.text import Text

    from otel_bridge.terminal import waterfall

    pipeline = _looking_pipeline(settings)
    try:
        found = [(s, pipeline.standing(s)) for s in pipeline.runs_named(workflow_id) if s.facts]
        aside = pipeline.runs_set_aside(workflow_id)
        jobs = pipeline.jobs_named(workflow_id) if not found and not aside else []
    except AmbiguousId as exc:
        raise CliError(str(exc)) from None
    finally:
        pipeline.store.close()
    console = Console(width=max(Console().width, 160) if not sys.stdout.isatty() else None)
    if jobs:  # an id pasted from a job's logs: its runs are metrics, not a trace, but its state is here
        from otel_bridge.terminal import jobs_table, jobs_title

        # Said above the table, not as its title: a title is wrapped to the table's width.
        console.print(Text(visible(f"{workflow_id} is a job instance: its runs are metrics, not a trace")))
        title = jobs_title(len(jobs), len(jobs), JobQuery())
        console.print(jobs_table(jobs, title, time.time_ns(), _terminal_width()))
        return 0
    if not found and not aside:
        raise CliError(
            f"no run {workflow_id} in {settings.state} (finished runs are kept keep_finished_seconds, "
            f"{settings.keep_finished_seconds:g} s){_too_short(workflow_id)}"
        )
    fit = _terminal_width()
    for state, standing in found:
        console.print(waterfall(state, time.time_ns(), settings.trace_url, standing, fit))
    for state, reason in aside:
        # The alert's first question (BridgeRunsSetAside): what that run holds, and why it is out of play.
        console.print(Text(visible(f"set aside, {reason}; `otel-bridge settle-again` puts it back")))
        console.print(waterfall(state, time.time_ns(), settings.trace_url, width=fit))
    return 0


def _producers(settings: Settings, args: argparse.Namespace) -> int:
    """What the running bridge has heard of each producer (its `/metrics`: events since it started, the last
    hearings kept across restarts).
    Exit 1 when one it expects has been silent longer than it may be, as ProducerNotHeard fires."""
    from rich.text import Text

    from otel_bridge.heard import producers_in
    from otel_bridge.terminal import producers_table, producers_title

    base, client = _to_the_bridge(settings, args)
    with client:
        try:
            answer = _asked(base, partial(client.get, f"{base}/metrics"), asked="GET /metrics", kind="text/plain")
            producers, kept = producers_in(answer.text), False
        except BridgeNotReached as exc:
            if args.url is not None:  # that bridge was asked for, and its store may be no store of this machine
                raise
            producers, kept = _producers_kept(settings, base, exc), True
    now = time.time()
    title = producers_title(producers, now) + (", from its store" if kept else "")
    if args.json:
        print(json.dumps([p.as_dict(now) for p in producers], indent=2))
    else:
        _printed(producers_table(producers, title, now, _terminal_width()) if producers else Text(title))
    return 1 if any(p.overdue(now) for p in producers) else 0


def _producers_kept(settings: Settings, base: str, unanswered: BridgeNotReached) -> "list[Producer]":
    """What the store of this machine's bridge, which does not answer (stopped, crash-looping: when it matters
    most), kept of each producer; said on stderr. No store to read: the bridge's silence is the error."""
    from otel_bridge.heard import producers_kept
    from otel_bridge.state import hearings

    try:
        kept = _from_the_store(settings, lambda pipeline: hearings.decoded(pipeline.store.bookmark(hearings.BOOKMARK)))
    except (CliError, StoreOpenError, Unavailable) as exc:
        raise CliError(f"{unanswered}; nor can its store be read ({exc})") from None
    print(
        f"otel-bridge: the bridge at {without_secrets(base)} does not answer ({unanswered.reason}): what its store "
        "kept of each producer instead (no count of events)",
        file=sys.stderr,
    )
    return producers_kept(kept, settings.expected_producers)


def _close(settings: Settings, args: argparse.Namespace) -> int:
    """Ask the running bridge to close runs (or job instances' waits) by hand: the store is its own. Exit 1
    when an id had nothing open, after closing the others."""
    body = {"reason": args.reason} | ({"service": args.service} if args.service else {})
    closed: list[dict[str, Any]] = []
    missing = []
    base, client = _to_the_bridge(settings, args)
    with client:
        for instance_id in args.ids:
            found, why = _close_one(client, base, instance_id, body)
            closed += found
            if not found:
                missing.append((instance_id, why))
            elif not args.json:
                print("\n".join(visible(_closed_in_words(done, args.reason)) for done in found), flush=True)
    if args.json:
        print(json.dumps(closed, indent=2))
    of = f" of {args.service}" if args.service else ""
    for instance_id, why in missing:
        said = f": {visible(why)}" if why else _too_short(instance_id)
        print(
            f"otel-bridge: nothing closed: no open run or job instance {instance_id}{of} at {base}{said}",
            file=sys.stderr,
        )
    return 1 if missing else 0


def _close_one(
    client: "httpx.Client", base: str, instance_id: str, body: dict[str, str]
) -> tuple[list[dict[str, Any]], str]:
    """What the bridge closed of this id, a run's or a job instance's (the bridge knows which), and when
    that is nothing, why the runs of that id it knows are not open (closed already, ended), if any."""
    why = ""
    for kind in ("runs", "jobs"):
        url = f"{base}/v1/{kind}/{quote(instance_id, safe='')}/close"
        answer = _asked(base, partial(client.post, url, json=body), answered=(200, 404))
        if answer.status_code == 404:
            if kind == "runs":
                why = "; ".join(_not_open_of(answer))
            continue
        return list(answer.json()["closed"]), ""
    return [], why


def _to_the_bridge(settings: Settings, args: argparse.Namespace) -> "tuple[str, httpx.Client]":
    """The running bridge `--url` names (this machine's by default, trusting the very certificate it serves),
    and a client asking it with the credential these settings give."""
    import httpx

    base = (args.url or _own_url(settings)).rstrip("/")
    verify: ssl.SSLContext | bool = True
    if args.url is None and settings.tls_certfile is not None:  # this machine's bridge, behind TLS
        verify = _served_certificate(settings.tls_certfile)
    return base, httpx.Client(timeout=args.timeout, headers=_credential(settings), verify=verify)


def _asked(
    base: str,
    request: "Callable[[], httpx.Response]",
    answered: tuple[int, ...] = (200,),
    asked: str = "",
    kind: str = "application/json",
) -> "httpx.Response":
    """The running bridge's answer to `request` (`asked`, for the message), one of the statuses `answered`, of
    the content type `kind`; any other, or no answer, is the one line saying so."""
    import httpx

    try:
        answer = request()
    except httpx.HTTPError as exc:
        said = exc or type(exc).__name__
        # A bridge behind a certificate a CA of one's own signed: the machine's trust does not hold that CA.
        trust = (
            "; trust the CA that signed it: SSL_CERT_FILE=/path/ca.pem"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc)
            else ""
        )
        raise BridgeNotReached(
            f"cannot reach the bridge at {without_secrets(base)} ({said}): --url names it{trust}", str(said)
        ) from None
    if answer.status_code not in answered:
        to = f" to {asked}" if asked else ""
        raise CliError(f"the bridge at {without_secrets(base)} answered {answer.status_code}{to}: {_error_of(answer)}")
    if not _of_kind(answer, kind):
        # Another server on that port (a page of HTML): it read "Expecting value: line 1 column 1 (char 0)".
        got = answer.headers.get("content-type") or "no content type"
        named = "JSON" if kind == "application/json" else kind
        raise CliError(
            f"the server at {without_secrets(base)} answered {answer.status_code} with {got}, not an otel-bridge's "
            f"{named}: does --url name the bridge (its HTTP port, 4380 by default)?"
        )
    return answer


def _of_kind(answer: "httpx.Response", kind: str) -> bool:
    given: str = answer.headers.get("content-type", "")
    return given.split(";")[0].strip().lower() == kind


def _too_short(given: str) -> str:
    """What to say of an id that found nothing and is too short to be taken by its beginning."""
    if len(given) >= keys.ABBREVIATION_MIN:
        return ""
    return f"; an id is taken by its beginning from {keys.ABBREVIATION_MIN} characters on"


def _own_url(settings: Settings) -> str:
    """The bridge these settings serve, from this machine: where it listens on every address, loopback."""
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0") else "[::1]" if settings.host == "::" else settings.host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'https' if settings.tls_certfile else 'http'}://{host}:{settings.port}"


def _served_certificate(certfile: Path) -> ssl.SSLContext:
    """Trust, for a request to this machine's own bridge, exactly the certificate it serves (the first of
    `certfile`), whatever name it carries: the bridge is asked at a loopback address, which is rarely the
    certificate's name. Pinned, not its CA: another certificate that CA signed is not taken."""
    pem = certfile.read_text()
    end = "-----END CERTIFICATE-----"
    context = ssl.create_default_context(cadata=pem[: pem.index(end) + len(end)])
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the served certificate itself as the anchor
    return context


def _credential(settings: Settings) -> dict[str, str]:
    """The ingest credential these settings ask of a client, as its header."""
    if settings.api_key is not None:
        return {settings.api_key_header: settings.api_key.get_secret_value()}
    if settings.bearer_token is not None:
        return {"Authorization": f"Bearer {settings.bearer_token.get_secret_value()}"}
    return {}


def _not_open_of(answer: "httpx.Response") -> list[str]:
    """Why the runs a 404 of a close names are not open; [] when it names none (or an older bridge answered)."""
    try:
        told = answer.json()["not_open"]
    except (ValueError, KeyError, TypeError):
        return []
    return [str(why) for why in told] if isinstance(told, list) else []


def _error_of(answer: "httpx.Response") -> str:
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        pass
    # Not the bridge's answer (a proxy's, another server's page): its first line, not the whole page.
    first = next((line.strip() for line in answer.text.splitlines() if line.strip()), "") or answer.reason_phrase
    return first[:200] + (
        "" if _of_kind(answer, "application/json") else " (not an otel-bridge's answer: does --url name the bridge?)"
    )


def _closed_in_words(done: dict[str, Any], reason: str) -> str:
    if "job" in done:
        job = done["job"]
        waited = f", its run due {job['due']} awaited no more" if job["due"] else ""
        active = ", counted active no more" if job["active"] else ""
        return f"closed job instance {job['instance_id']} of {job['name']} ({job['service']}){waited}{active}"
    run = done["run"]
    spans = done["spans_sent"]
    how = f", the run marked incomplete ({reason})" if done["incomplete"] else ""
    link = run.get("trace_url") or run["traceparent"]
    return (
        f"closed run {run['run_id']} of {run['name'] or 'workflow'} ({run['service']}), {run['state']} since "
        f"{run['since']}: {spans} span{'s' if spans != 1 else ''} sent{how}; {link}"
    )


def _trace_id(args: argparse.Namespace) -> int:
    from otel_bridge.sources.runtime_v2 import is_a_retry

    run = RunIdentity(args.engine, args.env, args.service, args.workflow_id, args.tenant)
    # Sampled as the bridge samples the run, so that a producer's own spans below it follow suit: a retry of a
    # failed run always (`correlate.runs.retries_a_failed_run`).
    retry = args.engine == c.PLATFORM_RUNTIME_V2 and is_a_retry(args.workflow_id)
    span = span_context_for(run, args.step, args.attempt, 1.0 if retry else _settings(args).trace_sample_ratio)
    print(traceparent(span.trace_id.to_bytes(16), span.span_id.to_bytes(8), span.trace_flags.sampled))
    if args.engine == "durable-effect" and _begins_an_object_id(args.workflow_id):
        # `runs` shows an object's id by its first twelve characters; its ids are hashed whole, so that
        # beginning names another trace, one that will never exist: said, not refused (an id is an id).
        print(
            f"otel-bridge: {args.workflow_id} looks like the beginning of a Durable Object's id (64 hex "
            "characters, as `otel-bridge runs --json` gives it): this is the trace of a run with exactly "
            "this id",
            file=sys.stderr,
        )
    return 0


def _begins_an_object_id(given: str) -> bool:
    return keys.ABBREVIATION_MIN <= len(given) < 64 and keys.is_hex(given)


def _demo(args: argparse.Namespace) -> int:
    from otel_bridge.producer.demo import SCENARIOS, run_demo

    _logging("INFO")
    if (headers := _headers_given(args.header)) is None:
        return 2
    try:  # as a producer of this bridge would post: with the credential its settings ask for, unless given
        credential = _credential(Settings(**{}))
    except ValidationError as exc:
        print(f"otel-bridge: invalid configuration: {_every_reason(exc)}", file=sys.stderr)
        return 2
    given = {name.strip().lower() for name in headers}
    headers = {name: value for name, value in credential.items() if name.lower() not in given} | headers
    if not args.url.startswith(HTTP_SCHEMES):
        print(f"otel-bridge: --url {args.url!r} is not an http:// or https:// URL", file=sys.stderr)
        return 2
    if why := host_problem(args.url):  # `http://[::1` was a traceback
        shown = without_secrets(args.url)
        print(f"otel-bridge: --url {shown!r} names no bridge to post to: {why}", file=sys.stderr)
        return 2
    if not 0 <= args.incidents <= 1:
        print(f"otel-bridge: --incidents {args.incidents:g} is not a share between 0 and 1", file=sys.stderr)
        return 2
    args.url = events_url(args.url)
    print(f"otel-bridge demo: {len(SCENARIOS)} scenarios at {args.rate}/s to {args.url}", flush=True)
    engines: dict[str, object] = {}
    stop = threading.Event()
    follower = None
    if args.stream_url or args.ws_port or args.runtime_v2_url:
        from otel_bridge.producer.engines_demo import run_engines_demo

        def engines_demo() -> None:
            engines.update(
                run_engines_demo(
                    args.stream_url,
                    args.ws_port,
                    args.rate / 2,
                    args.duration,
                    args.seed,
                    args.ws_host,
                    stop,
                    runtime_v2_url=args.runtime_v2_url,
                    incidents=args.incidents,
                )
            )

        follower = threading.Thread(target=engines_demo, name="engines-demo", daemon=True)
        follower.start()
        tables = without_secrets(args.runtime_v2_url) if args.runtime_v2_url else "-"
        print(
            f"  and the other engines: stream {args.stream_url or '-'}, websocket port {args.ws_port or '-'}, "
            f"runtime v2 tables {tables}"
        )
    try:
        summary = run_demo(
            args.url, args.rate, args.duration, args.seed, headers, app_spans=args.app_spans, incidents=args.incidents
        )
    except KeyboardInterrupt:
        return 0
    finally:
        if follower is not None:
            if not args.duration:
                stop.set()
            follower.join(timeout=args.duration + 30 if args.duration else 5)
    print(json.dumps(summary | {"engines": engines}), flush=True)
    return 0 if summary["dropped_events"] == 0 else 1


def _count(text: str) -> int:
    """A whole number, 0 or more (as `GET /v1/runs?limit=` takes it): -1 listed nothing and said nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _duration(text: str) -> float:
    try:
        return seconds_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _above_zero(text: str) -> float:
    """A number above 0 that a clock can count (a rate, a timeout): `--rate 0` was a ZeroDivisionError,
    `--timeout -1` a bare "Timeout value out of range"."""
    value = _a_number(text)
    if not 0 < value <= _LONGEST:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {_LONGEST:,.0f}, not {text}")
    return value


def _zero_or_more(text: str) -> float:
    """A number of seconds, 0 or more (`--duration -5` ran nothing and said nothing)."""
    value = _a_number(text)
    if not 0 <= value <= _LONGEST:
        raise argparse.ArgumentTypeError(f"must be 0 or more and at most {_LONGEST:,.0f}, not {text}")
    return value


def _a_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _port(text: str) -> int:
    """A TCP port to listen on (`--ws-port 99999` failed the demo's engine thread with a traceback)."""
    value = _count(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, not {value}")
    return value


def _label(text: str) -> str:
    """A name the bridge takes in an event (an env, a serviceKey): a trace id printed for one it rejects
    (a control character, past 1,000 characters) is the id of a trace that will never exist."""
    if why := label_problem(text):
        raise argparse.ArgumentTypeError(why)
    return text


def _identity(text: str) -> str:
    """A run's id the bridge takes: a label that is not empty."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return _label(text)


def _attempt(text: str) -> int:
    """An attempt number the bridge takes (0 from the engine's older versions, which counted from 0)."""
    value = _count(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"must be 0 or more (below 2**63), not {value}")
    return value


# A flag's largest number of seconds (or per second): a day, past which no rate, wait or demo makes sense
# (`nan` and `inf` are not within it).
_LONGEST = 86_400.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-bridge",
        description="Turn durable workflow and job lifecycle events into OpenTelemetry traces and metrics.",
    )
    parser.add_argument("--version", action="version", version=f"otel-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP tracker endpoint and export over OTLP")
    _add_settings_flags(serve)
    replay = sub.add_parser(
        "replay", help="push a file of events (one JSON event, or one posted batch, per line) through the pipeline"
    )
    replay.add_argument(
        "file", help="JSONL file (.gz too), a JSON document (an array of events, a batch), or - for standard input"
    )
    replay.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    replay.add_argument(
        "--format",
        dest="source_format",
        choices=("durable-effect", "event-sourced", "runtime-v2", "dead-letter"),
        default="durable-effect",
        help="durable-effect tracker events, rows of the event-sourced runtime's workflow_events table, rows of "
        "the runtime v2's tables (workflow_runs, workflow_run_steps, workflow_run_waits), or a dead-letter file "
        "of the bridge (each event offered again in the format it was received in)",
    )
    _add_settings_flags(replay)
    resend = sub.add_parser(
        "resend-spans", help="send again the spans a backend refused for good (a span dead-letter file, moved aside)"
    )
    resend.add_argument("file", help="JSONL span dead-letter file")
    _add_settings_flags(resend)
    timeline = sub.add_parser(
        "import-timeline", help="turn Phase-10 execution timelines (JSON files or API URLs) into complete traces"
    )
    timeline.add_argument("sources", nargs="*", metavar="FILE|URL")
    timeline.add_argument("--workspace-id", default=None, help="X-Workspace-Id for URLs (default: --ws-workspace-id)")
    timeline.add_argument(
        "--workflow-id",
        action="append",
        default=[],
        metavar="ID[=NAME]",
        help="import every execution of this workflow the engine's API (--ws-api-url) lists, named NAME (timelines "
        "carry no name: without it, the id); repeatable",
    )
    timeline.add_argument("--since", help="with --workflow-id: executions started at or after this ISO 8601 time")
    timeline.add_argument("--until", help="with --workflow-id: executions started before this ISO 8601 time")
    timeline.add_argument("--status", help="with --workflow-id: executions in this status only (completed, failed, …)")
    runtime_v2 = sub.add_parser(
        "import-runtime-v2",
        help="turn the runs in the runtime v2's tables (--runtime-v2-url) into traces at once: its history",
    )
    runtime_v2.add_argument("--since", help="the runs changed at or after this ISO 8601 time (default: all of them)")
    runtime_v2.add_argument(
        "--export-sql",
        action="store_true",
        help="print the query that exports every row it would read, one JSON object a line (`psql -At -f`), "
        "for `replay --format runtime-v2` where the bridge cannot reach the database; read nothing",
    )
    _add_settings_flags(runtime_v2)
    _add_settings_flags(timeline)
    trace = sub.add_parser("trace-id", help="print the W3C traceparent of a workflow run's root span")
    trace.add_argument("--env", required=True, type=_label)
    trace.add_argument("--service", required=True, type=_label, help="the producer's serviceKey")
    trace.add_argument("--workflow-id", required=True, type=_identity)
    trace.add_argument(
        "--engine",
        default=c.PLATFORM_DURABLE_EFFECT,
        choices=(c.PLATFORM_DURABLE_EFFECT, c.PLATFORM_EVENT_SOURCED, c.PLATFORM_RUNTIME_V2, c.PLATFORM_PHASE10),
    )
    trace.add_argument("--tenant", default=None, type=_label, help="the event-sourced runtime's tenant")
    trace.add_argument("--step", default=None, help="the span of this step's attempt instead of the run's root")
    trace.add_argument(
        "--attempt", type=_attempt, default=None, help="with --step: which attempt (from 1; 1 unless given)"
    )
    demo = sub.add_parser("demo", help="post realistic workflow and job traffic to a bridge, as a producer would")
    demo.add_argument(
        "--url",
        default="http://127.0.0.1:4380/v1/events",
        help="the bridge's tracker endpoint (an address alone: its /v1/events)",
    )
    demo.add_argument("--rate", type=_above_zero, default=2.0, help="runs started per second")
    demo.add_argument("--duration", type=_zero_or_more, default=0.0, help="seconds to generate for (0: until stopped)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable traffic")
    demo.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra header, e.g. X-API-KEY=… (a producer's key); unless one is given, the credential "
        "OTEL_BRIDGE_API_KEY (or OTEL_BRIDGE_BEARER_TOKEN) gives is sent, as runs --url and close send it",
    )
    demo.add_argument(
        "--stream-url", default=None, help="also publish event-sourced executions to this Redis (the runtime's stream)"
    )
    demo.add_argument(
        "--ws-port", type=_port, default=None, help="also play a Phase-10 engine: /ws/stream and its timeline API here"
    )
    demo.add_argument("--ws-host", default="0.0.0.0", help="address the Phase-10 stand-in listens on")
    demo.add_argument(
        "--runtime-v2-url",
        default=None,
        help="also play the runtime v2: write its runs into its tables in this PostgreSQL database (made there "
        "when missing: give it a database of its own)",
    )
    demo.add_argument(
        "--app-spans",
        action="store_true",
        help="also export the application's own spans (a call inside each step attempt, under its span) over "
        "OTLP, as OTEL_EXPORTER_OTLP_* configure",
    )
    demo.add_argument(
        "--incidents",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="this share of the runs started (0.02: one in fifty) are incidents the alerts are for: a workflow "
        "whose sleep alarm is lost, a catalogImport run that dies mid-step (overdue where silent_executing names "
        "catalogImport), a debounce whose flush never comes, a tokenRefresher whose alarm is lost (overdue where "
        "silent_continuous names it), each overdue once overdue_grace_seconds have passed; and a billing producer "
        "whose clock runs two hours ahead (ProducerClockAhead); with --runtime-v2-url, a run launched that no "
        "worker takes (RUNNING with no step), a schedule whose occurrences never come and events the runtime "
        "could not deliver (WorkflowEventsNotDelivered). Each is played once first, then drawn at random",
    )
    runs = sub.add_parser("runs", help="the open runs from the store: state, since, resumeAt, overdue by, traceparent")
    runs.add_argument("--run-state", choices=c.RUN_STATES, default=None, help="only runs in this state")
    runs.add_argument("--overdue", action="store_true", help="only runs past their resumeAt (or queued too long)")
    runs.add_argument("--service", default=None, help="only this producer's runs (its serviceKey)")
    runs.add_argument("--env", default=None, help="only the runs of this environment (the producer's env)")
    runs.add_argument("--workflow", default=None, help="only the runs of this workflow (its definition's name)")
    runs.add_argument(
        "--silent-for",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="only the runs whose latest event is at least this old (90s, 15m, 2h, 3d, or seconds): with "
        "--run-state executing, the runs stuck mid-step, which no alert tells",
    )
    runs.add_argument("--json", action="store_true", help="JSON instead of a table")
    runs.add_argument("--limit", type=_count, default=1000, help="at most this many runs, the oldest (default 1000)")
    _add_remote_flags(runs, "runs")
    _add_settings_flags(runs)
    producers = sub.add_parser(
        "producers",
        help="what a running bridge has heard of each producer: events, the last, how long silent, and how long "
        "the expected ones may be (exit 1 when one is past it); this machine's bridge not answering, what its "
        "store kept",
    )
    producers.add_argument(
        "--url",
        default=None,
        help="the running bridge, asked alone (default: this machine's, at --port: http://127.0.0.1:4380, "
        "its store read when it does not answer)",
    )
    producers.add_argument(
        "--timeout", type=_above_zero, default=30.0, help="seconds to wait for its answer (default 30)"
    )
    producers.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_settings_flags(producers)
    jobs = sub.add_parser(
        "jobs",
        help="the job instances from the store that run or await a run: next run, overdue by, last ran",
    )
    jobs.add_argument(
        "--overdue", action="store_true", help="only those past their time to run with no run (a lost alarm)"
    )
    jobs.add_argument(
        "--failing",
        action="store_true",
        help="only those whose latest run failed, whatever they await (a runtime's events, a task not scheduled "
        "again), the latest failed first, each with why",
    )
    jobs.add_argument("--service", default=None, help="only this producer's jobs (its serviceKey)")
    jobs.add_argument("--env", default=None, help="only the instances of this environment (the producer's env)")
    jobs.add_argument("--job", default=None, help="only the instances of this job (its name)")
    jobs.add_argument("--json", action="store_true", help="JSON instead of a table")
    jobs.add_argument("--limit", type=_count, default=1000, help="at most this many, the most pressing (default 1000)")
    _add_remote_flags(jobs, "jobs")
    _add_settings_flags(jobs)
    show = sub.add_parser("show", help="one run's timeline as a waterfall in the terminal, open or finished")
    show.add_argument(
        "workflow_id",
        type=_identity,
        help="the run's id (workflowId, execution id, or six or more of its first characters) or the "
        "application's own (executionId, a job's id)",
    )
    _add_settings_flags(show)
    close = sub.add_parser(
        "close",
        help="close by hand a run the engine will never end (its trace sent now, marked incomplete, and it is "
        "overdue no more), or a job instance's wait for a run that will never come; asks the running bridge",
    )
    close.add_argument(
        "ids",
        nargs="+",
        metavar="ID",
        type=_identity,
        help="a run's id (workflowId, execution id, or six or more of its first characters) or a job "
        "instance's, or the application's own (executionId, a job's id); several at once",
    )
    close.add_argument(
        "--reason",
        default=DEFAULT_CLOSE_REASON,
        help="why, on the run's root span (workflow.execution.close_reason) and in the bridge's log",
    )
    close.add_argument("--service", default=None, help="only this producer's (its serviceKey), where several have it")
    close.add_argument(
        "--url", default=None, help="the running bridge (default: this machine's, at --port: http://127.0.0.1:4380)"
    )
    close.add_argument("--timeout", type=_above_zero, default=30.0, help="seconds to wait for its answer (default 30)")
    close.add_argument("--json", action="store_true", help="the bridge's answer as JSON")
    _add_settings_flags(close)
    again = sub.add_parser(
        "settle-again",
        help="put the runs set aside (after failing to settle, or unreadable by a version that met them) back in "
        "play, once the cause is mended",
    )
    again.add_argument("--dry-run", action="store_true", help="only list them, with why each was set aside")
    _add_settings_flags(again)
    salvage = sub.add_parser(
        "salvage-state",
        help="copy what still reads of a SQLite state file SQLite finds damaged into a fresh one put in its "
        "place, the damaged file kept beside; the bridge stopped",
    )
    _add_settings_flags(salvage)
    backup = sub.add_parser(
        "backup-state",
        help="copy the SQLite state file as it is at one moment, whole, beside a running bridge (a `cp` of it "
        "while the bridge writes is torn)",
    )
    backup.add_argument("to", type=Path, help="the copy (replaced if there), or a directory to put it in")
    _add_settings_flags(backup)
    check = sub.add_parser(
        "check",
        help="ask what serve would meet — the state, the OTLP backend, the stream, the WebSocket — and say what "
        "fails and why (exit 1), before serving",
    )
    check.add_argument(
        "--timeout", type=_above_zero, default=5.0, help="seconds each check may wait for an answer (default 5)"
    )
    check.add_argument("--json", action="store_true", help="JSON instead of lines (for a deploy pipeline)")
    _add_settings_flags(check)
    probing = sub.add_parser(
        "probe",
        help="post an empty batch to a bridge as a producer's tracker would, from where the producer runs, and say "
        "what it meets — the address, the TLS certificate, the answer — and what fails (exit 1)",
    )
    probing.add_argument("url", help="the producer's endpoint (an address alone: its /v1/events)")
    probing.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="a header the producer sends (its key)"
    )
    probing.add_argument(
        "--cafile", default=None, help="a private CA the producer trusts beside the public ones (NODE_EXTRA_CA_CERTS)"
    )
    probing.add_argument(
        "--worker",
        action="store_true",
        help="the producer is a deployed Cloudflare Worker: its fetch ignores a port and reaches no IP address",
    )
    probing.add_argument(
        "--timeout", type=_above_zero, default=5.0, help="seconds each step may wait for an answer (default 5)"
    )
    probing.add_argument("--json", action="store_true", help="JSON instead of lines (for a deploy pipeline)")
    sub.add_parser("config", help="print the configuration table (markdown)")
    contract = sub.add_parser(
        "openapi",
        help="print the HTTP endpoints' OpenAPI document, as a bridge with these settings serves it at "
        "/openapi.json (a producer's types generated from it, with no bridge running)",
    )
    _add_settings_flags(contract)
    return parser


def _every_reason(exc: ValidationError) -> str:
    from otel_bridge.sources.wire import every_reason

    return every_reason(exc, named=setting_named)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _command(argv)
    except BrokenPipeError:
        # What it printed to was closed (`otel-bridge runs | head`): stop quietly, as a program the pipe's
        # SIGPIPE ends does, rather than "otel-bridge: Broken pipe" and a second error at exit's flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


# The signal that stopped a command, as Ctrl-C stops it: its exit is 128 and its number, as a shell reports one.
_stopped_by = [signal.SIGINT]


def _stop_as_ctrl_c_does(signum: int, _frame: object) -> None:
    _stopped_by[0] = signal.Signals(signum)
    raise KeyboardInterrupt


def _command(argv: Sequence[str] | None) -> int:
    # The gRPC core writes lines of its own to stderr (an `I…` line at each failed TLS handshake), outside
    # the log and its JSON: its errors are kept, and what an export meets is told in the bridge's own line.
    # Only the commands' own process: the in-process tracker leaves the application's gRPC as it is.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":  # which drains on SIGTERM, and reads its TLS files again on SIGHUP
        # SIGTERM (`timeout`, a Job deleted, `systemctl stop`) and SIGHUP (its terminal closed) stop a replay or
        # an import as Ctrl-C does — at a line to go on from, the summary said, the spans sent — where their
        # default ended it on the spot without a word.
        for stopping in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stopping, _stop_as_ctrl_c_does)
    if args.command == "trace-id":
        if args.attempt is not None and args.step is None:
            parser.error("trace-id: --attempt needs --step (the run's root has no attempts)")
        return _trace_id(args)
    if args.command == "config":
        print(settings_table())
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "probe":
        return _probe(args)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"otel-bridge: invalid configuration: {_every_reason(exc)}", file=sys.stderr)
        return 2
    if args.command == "openapi":
        from otel_bridge.receivers.http_contract import openapi

        print(json.dumps(openapi(settings), indent=2))
        return 0
    _logging(settings.log_level, settings.log_format)
    for problem in settings.told_at_start(os.environ):
        logging.getLogger("otel_bridge").warning(problem)
    try:
        if args.command == "serve":
            return _serve(settings)
        if args.command == "resend-spans":
            return _resend_spans(settings, args.file)
        if args.command == "import-timeline":
            return _import_timeline(settings, args)
        if args.command == "import-runtime-v2":
            return _import_runtime_v2(settings, args)
        if args.command == "runs":
            return _runs(settings, args)
        if args.command == "show":
            return _show(settings, args.workflow_id)
        if args.command == "jobs":
            return _jobs(settings, args)
        if args.command == "producers":
            return _producers(settings, args)
        if args.command == "settle-again":
            return _settle_again(settings, args.dry_run)
        if args.command == "salvage-state":
            return _salvage_state(settings)
        if args.command == "backup-state":
            return _backup_state(settings, args.to)
        if args.command == "close":
            return _close(settings, args)
        if args.command == "check":
            return _check(settings, args.timeout, args.json)
        return _replay(settings, args.file, progress=not args.no_progress, source_format=args.source_format)
    except StoreInUse as exc:
        # History (a log, timelines, refused spans) need not wait for the running bridge to stop:
        # trace and span ids do not depend on the state they were built in.
        hints = {
            "serve": "",
            "settle-again": "; stop it first: the runs are put back into its state, and settled when it starts again",
            "salvage-state": "; stop it first: the file is read whole and put back new",
        }
        hint = hints.get(
            args.command,
            "; stop it, or give this command a state of its own (--state history.db) for runs "
            "the running bridge does not also receive",
        )
        print(f"otel-bridge: {exc}{hint}", file=sys.stderr)
        return 2
    except (ValueError, CliError, StoreOpenError, Unavailable) as exc:
        _note_damage_met(settings, exc)
        # What an operator can fix (a path, a URL, a password) is said in one line, not a traceback.
        print(f"otel-bridge: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        if not damaged(exc):
            raise
        # Met reading it (the file opens; a page of it does not read).
        _note_damage_met(settings, exc)
        print(f"otel-bridge: {damaged_said(settings.state, exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"otel-bridge: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting or stopping: what was committed stays committed
        print("otel-bridge: interrupted", file=sys.stderr)
        return 128 + _stopped_by[0]


def _note_damage_met(settings: Settings, exc: BaseException | None) -> None:
    """A damaged state file a command met (opening it, or a listing reading it: `exc` or what it was raised
    from), noted beside it for the next start to salvage: that start's own reads might not meet it."""
    while settings.salvage_at_start and exc is not None:
        if isinstance(exc, StoreDamaged) or damaged(exc):
            from otel_bridge.runtime import note_damage_met

            note_damage_met(settings, exc.met if isinstance(exc, StoreDamaged) else damage_met(exc, settings.state))
            return
        exc = exc.__cause__


if __name__ == "__main__":
    sys.exit(main())
