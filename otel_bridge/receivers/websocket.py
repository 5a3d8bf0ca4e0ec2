"""Follows the Phase-10 engine's WebSocket (`/ws/stream`) and fills what a disconnection missed from its REST API.

Nobody acknowledges a WebSocket message, so each is committed to the store before the
next is read. The connection is re-made with jittered exponential backoff; after each
reconnect the timeline of every execution seen starting and not yet seen ending is
fetched (`GET {api}/api/workflows/executions/{id}/timeline`, header `X-Workspace-Id`),
so an execution that ended while the bridge was away still gets its whole trace. The
executions still open in the store when the bridge starts are caught up on at its first
connection, so a restart is a disconnection like any other — and so is a replica taking over from
another: of the replicas sharing a state, one follows the stream (a lease in the store), the others
stand by, and one of them takes over once the lease lapses, as a restarted bridge begins; one first told of mid-way (it
started while the bridge was away) has its timeline fetched once, for the beginning the stream
no longer tells. The timelines are fetched by a thread of their own, beside the live messages,
and those the API could not answer are asked again after a backoff. After a reconnect, the
executions of the workflows told of that began meanwhile and that no message told (begun and
ended while the bridge was away) are listed (`GET {api}/api/workflows/{id}/executions`) and
fetched too; bookmarks kept with the state (until when the stream was followed, the workflows
told of) make a restart look the same way. The overlap is harmless: the same facts told twice
are one.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from otel_bridge.consumer import EventConsumer, Unavailable
from otel_bridge.json_text import loads
from otel_bridge.receivers import timeline_api
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.lease import Lease
from otel_bridge.repeated_failure import Backoff, Cadence, RepeatedFailure
from otel_bridge.repeated_failure import told_followed as _told_followed
from otel_bridge.repeated_failure import told_unreachable as _told_unreachable
from otel_bridge.urls import without_secrets

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0
# After a disconnection, executions started since this long before it was noticed are looked for: a
# dead connection is noticed late (by the read that fails), and the engine's clock is not the bridge's.
_GAP_MARGIN = 60.0
# How often the follower writes down, with the state, until when it followed and the workflows told of: a
# restarted bridge looks for what began while it was down from there.
_BOOKMARK_EVERY = 10.0
# Executions remembered as told of, so that one first told of mid-way is fetched once: about 100
# bytes each, and one forgotten and told of again costs one more fetch, nothing else.
_SEEN_MAX = 100_000
# A timeline the engine says it does not have, now or ever: not asked again.
_GONE = (404, 410)
# (execution id, True when a message starts it, False when it ends it, None otherwise): the
# source's knowledge, handed in, so this transport knows no event names.
Progress = Callable[[Any], tuple[str | None, bool | None]]
# (workflow id, the name of its runs) a message tells as a run starts, or None: the source's too.
Named = Callable[[Any], tuple[str, str] | None]
# The workspace of the execution a message tells of, or None: the source's too.
WorkspaceOf = Callable[[Any], str | None]


class WebSocketReceiver:
    def __init__(
        self,
        url: str,
        consumer: EventConsumer,
        dead_letters: DeadLetters,
        progress: Progress,
        api_url: str | None = None,
        named: Named = lambda _message: None,
        workspace_id: str | None = None,
        workspace_of: WorkspaceOf = lambda _message: None,
        open_at_start: Callable[[], list[tuple[str, str | None]]] = list,
        max_message_bytes: int = 10 * 1024 * 1024,
        recall: Callable[[str], bytes | None] = lambda _name: None,
        note: Callable[[str, bytes], None] = lambda _name, _value: None,
        max_look_back_seconds: float = 7 * 86_400.0,
        timeline_at_end_seconds: float | None = None,
        no_timeline: Callable[[str], object] = lambda _execution: None,
        lease: Callable[[float], bool] | None = None,
        lease_seconds: float = 10.0,
    ) -> None:
        """`open_at_start`: the executions the store holds open, each with its workspace when known, read
        when following begins.
        `max_message_bytes`: the largest message taken (the HTTP endpoint's body limit); websockets'
        own default, 1 MiB, closed the connection on a run's large input or output and lost the message.
        `workspace_id`: sent with every request; an execution a message says is another workspace's
        (`workspace_of`) has its timeline asked for in that workspace's context.
        `recall(name)` and `note(name, value)`: bookmarks kept with the state (until when the stream was
        followed, the workflows told of), so that a restart looks for what began while the bridge was
        down, as a reconnection does; at most `max_look_back_seconds` back.
        `timeline_at_end_seconds`: with an API, each execution's timeline is fetched as a message tells it
        ended, for what only a timeline tells (retries), asked for this long (its run waits as long);
        `no_timeline(execution)` is told when the engine answers it has none (404, 410): its run waits no
        more.
        `lease(seconds)`: whether this bridge holds the lease of following the stream for so long, among
        replicas sharing a state (None: it is alone), renewed every fifth of `lease_seconds`: each replica
        following it took every message in, and asked the engine for every timeline, once a replica."""
        self._url = url
        self._shown = without_secrets(url)  # in the log
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._progress = progress
        self._api_url = api_url.rstrip("/") if api_url else None
        self._headers = {"X-Workspace-Id": workspace_id} if workspace_id else {}
        self._workspace_id = workspace_id
        # Executions seen starting and not yet ending: what a reconnect must catch up on.
        self.open_executions: dict[str, None] = {}
        # Executions first told of mid-way, their start missed (they began while the bridge was away),
        # until their timeline is stored; and those told of at all, in the order first told.
        self._unstarted: dict[str, None] = {}
        self._seen: dict[str, None] = {}
        # Executions told ended whose timeline is to be fetched (`timeline_at_end_seconds`), each until when.
        self._timeline_at_end = timeline_at_end_seconds if api_url else None
        self._ending: dict[str, float] = {}
        self._no_timeline = no_timeline
        # Executions whose timeline was fetched once they had ended (caught up on, or told of mid-way):
        # their end, told after, needs no fetch of its own.
        self._fetched_ended: dict[str, None] = {}
        # The names of workflows' runs, by workflow id, as their starts told them: a timeline has none.
        self._named = named
        self._workflow_names: dict[str, str] = {}
        # The workflows told of (by a run's start, or a timeline), each with its workspace: after a
        # disconnection, their executions begun meanwhile are listed, those no message told fetched.
        self._workflows: dict[str, str | None] = {}
        # Since when (Unix time) executions are to be looked for, set at a reconnection: None when none is;
        # and how many reconnections set it, so that one during a look is looked for again.
        self._gap_since: float | None = None
        self._gaps = 0
        self._recall, self._note = recall, note
        self._max_look_back = max_look_back_seconds
        # Until when (Unix time) the stream was last followed, and when (monotonic) that and the workflows
        # were last written down; the workflows are written again only when they changed.
        self._followed_at: float | None = None
        self._noted_at = 0.0
        self._workflows_noted = 0
        self._workflows_told = 0
        # The platform's stream tells every workspace's executions; the engine answers a timeline only in
        # its execution's workspace: each execution's, as its messages told it, the oldest forgotten.
        self._workspace_of = workspace_of
        self._workspaces: dict[str, str] = {}
        self._open_at_start = open_at_start
        self._max_message_bytes = max_message_bytes
        # Set at each connection, and when an execution is first told of mid-way: catching up has work.
        self._wake = threading.Event()
        # Since when (monotonic) the engine's stream is not followed, None while it is: what it sends
        # meanwhile is told again only for the executions the bridge knew open.
        self.disconnected_since: float | None = time.monotonic()
        self._missed: list[str] = []
        # An engine away for a night: its first failure and then a line a minute, not one a reconnection.
        self._unreachable = Cadence()
        self._followed = False  # ever: a connection after failures then follows the engine "again"
        self._unanswered = RepeatedFailure(
            f"fetching timelines from {without_secrets(self._api_url or '')}",
            plain=(httpx.HTTPError, timeline_api.ApiError),
        )
        self._lease = Lease(lease, lease_seconds, f"following {self._shown}", f"follows {self._shown}")
        self._leased_at = 0.0
        self._begun = False

    @property
    def reading(self) -> bool | None:
        """Whether this replica follows the stream now (None: alone, or not asked yet; False: another does)."""
        return self._lease.reading

    def run(self, stop: threading.Event) -> None:
        backoff = Backoff(most=_MAX_BACKOFF)
        if self._api_url:
            catching_up = threading.Thread(
                target=self._catching_up, args=(stop,), name="otel-bridge-websocket-catch-up", daemon=True
            )
            catching_up.start()
        while not stop.is_set():
            if not self._leads():
                self.disconnected_since = None  # standing by is no disconnection: nothing to alert on
                stop.wait(self._lease.seconds / 5)
                continue
            try:
                with connect(
                    self._url, additional_headers=self._headers, open_timeout=10, max_size=self._max_message_bytes
                ) as ws:
                    if not _told_followed(self._unreachable, log, self._shown, self._followed):
                        log.info("following %s", self._shown)
                    if self._followed and self.disconnected_since is not None and self._api_url:
                        # Not at the first connection: what began before it is history (`import-timeline`).
                        since = time.time() - (time.monotonic() - self.disconnected_since) - _GAP_MARGIN
                        self._gap_since = since if self._gap_since is None else min(self._gap_since, since)
                        self._gaps += 1
                    self._followed = True
                    self.disconnected_since = None
                    backoff.worked()
                    # What the last disconnection, or restart, missed: those open now, fetched beside.
                    self._missed = list(self.open_executions)
                    self._wake.set()
                    self._follow(ws, stop)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                self.disconnected_since = self.disconnected_since or time.monotonic()
                if stop.is_set():
                    break
                _told_unreachable(self._unreachable, log, f"websocket {self._shown}", exc)
                backoff.wait(stop)
            except InvalidURI as exc:
                log.error("websocket url %s is not valid: %s", self._shown, exc)
                return
        if self._begun and self.reading is not False:  # one standing by would write back where it last followed
            self._keep_bookmarks(at_stop=True)
        self._wake.set()  # the catch-up sees the stop

    def _leads(self) -> bool:
        """Whether this bridge follows the stream now: of the replicas sharing a state, one does, the others
        stand by and take over once its lease lapses (a replica stopped, or stalled past it). Each time it
        begins, it begins as a bridge starting does (`_begin`). A store away keeps the role it had."""
        try:
            turned = self._lease.changed()
        except Unavailable as exc:
            log.debug("the lease of following %s could not be asked for: %s", self._shown, exc)
            turned = None
        self._leased_at = time.monotonic()
        leads = self.reading is not False
        if leads and (turned or not self._begun):
            self._begin()
            self._begun = True
        return leads

    def _begin(self) -> None:
        """As it begins to follow the stream — started, or taking over from another replica —: what the bridge
        before it wrote down (until when it followed, the workflows told of), to look for what began since,
        and the executions the state holds open, to catch up on at its first connection."""
        if not self._api_url:
            return
        self._recall_bookmarks()
        try:
            held_open = self._open_at_start()
        except Unavailable as exc:
            log.warning("the executions open in the state could not be read (%s): those that ended while the "
                        "stream was not followed are sent at max_open_seconds", exc)  # fmt: skip
            return
        for execution, workspace in held_open:
            self.open_executions[execution] = None
            if workspace is not None:
                self._remember(self._workspaces, execution, workspace)

    def _lease_lost(self) -> bool:
        """Whether, asked again (every fifth of `lease_seconds` while it follows), the lease is another's."""
        due = self.reading is not None and time.monotonic() - self._leased_at >= self._lease.seconds / 5
        return due and not self._leads()

    def _follow(self, ws: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._lease_lost():
                return  # it stalled past its lease, and another replica follows the stream now
            self._followed_at = time.time()
            self._keep_bookmarks()
            try:
                text = ws.recv(timeout=1)
            except TimeoutError:
                continue
            data = text.encode() if isinstance(text, str) else text
            try:
                message = loads(data)
            except ValueError as exc:
                self._dead_letters.keep("websocket", [({"error": f"message is not valid JSON: {exc}"}, text)])
                continue
            if not isinstance(message, dict) or message.get("type") == "heartbeat":
                continue
            try:
                execution, starts = self._progress(message)
                workspace = self._workspace_of(message)
                named = self._named(message) if starts else None
            except Exception:  # a bug in reading it must not end following: the message is stored all the same
                log.exception("reading which execution a message tells of failed; stored without it")
                execution, starts, workspace, named = None, None, None, None
            if named is not None:
                self._told_workflow(named[0], workspace, named[1])
            if execution is not None:
                if workspace is not None:
                    self._remember(self._workspaces, execution, workspace)
                first = self._first_told(execution)
                if starts:
                    self.open_executions[execution] = None
                elif first and execution not in self.open_executions and self._api_url:
                    # It began while the bridge was away: the stream will not tell its start and first
                    # steps again, its timeline does. Open until told its end, as one seen starting.
                    self._unstarted[execution] = None
                    if starts is None:
                        self.open_executions[execution] = None
                    self._wake.set()
            self._store([message], stop, in_hand=True)
            if execution is not None and starts is False:
                self.open_executions.pop(execution, None)
                if self._timeline_at_end is not None and execution not in self._fetched_ended:
                    self._ending[execution] = time.monotonic() + self._timeline_at_end
                    self._wake.set()

    def _told_workflow(self, workflow: str, workspace: str | None, name: str | None = None) -> None:
        """A workflow told of, in `workspace`, its runs named `name` when a start said so."""
        if self._workflows.get(workflow, "") != workspace or (name and self._workflow_names.get(workflow) != name):
            self._workflows_told += 1  # written down again
        self._remember(self._workflows, workflow, workspace)
        if name:
            self._remember(self._workflow_names, workflow, name)

    def _recall_bookmarks(self) -> None:
        """What the bridge before this one wrote down: until when it followed the stream, and the workflows it
        was told of. What began since then (a minute earlier, at most `max_look_back_seconds` ago) is
        looked for at the first connection, as after a reconnection."""
        try:
            followed = orjson.loads(self._recall("followed") or b"null")
            workflows = orjson.loads(self._recall("workflows") or b"{}")
        except Exception as exc:  # a store away, or a bookmark unreadable: nothing to look for, said why
            log.warning("the bookmarks of the stream could not be read (%s): what began while the bridge was "
                        "down is not looked for", exc)  # fmt: skip
            return
        if isinstance(workflows, dict):
            for workflow, told in workflows.items():
                if isinstance(workflow, str) and isinstance(told, dict):
                    workspace, name = told.get("workspace"), told.get("name")
                    self._told_workflow(
                        workflow,
                        workspace if isinstance(workspace, str) else None,
                        name if isinstance(name, str) else None,
                    )
        self._workflows_noted = self._workflows_told
        if isinstance(followed, int | float) and self._workflows:
            self._gap_since = max(followed - _GAP_MARGIN, time.time() - self._max_look_back)
            self._gaps += 1

    def _keep_bookmarks(self, at_stop: bool = False) -> None:
        """Write down until when the stream was followed, and the workflows when they changed: every
        `_BOOKMARK_EVERY` seconds, and as the bridge stops. A store away is asked again next time."""
        if self._api_url is None or self._followed_at is None:
            return
        if not at_stop and time.monotonic() - self._noted_at < _BOOKMARK_EVERY:
            return
        self._noted_at = time.monotonic()
        try:
            if self._workflows_told != self._workflows_noted:
                told = self._workflows_told
                names = self._workflow_names
                told_of = {w: {"workspace": space, "name": names.get(w)} for w, space in list(self._workflows.items())}
                self._note("workflows", orjson.dumps(told_of))
                self._workflows_noted = told
            self._note("followed", orjson.dumps(self._followed_at))
        except Exception as exc:  # the stream goes on: a bookmark is only for a later start
            log.debug("writing the stream's bookmarks failed: %s", exc)

    def _first_told(self, execution: str) -> bool:
        """Whether this execution is told of for the first time (then remembered, the oldest forgotten)."""
        if execution in self._seen:
            return False
        self._remember(self._seen, execution, None)
        return True

    @staticmethod
    def _remember(memory: dict[str, Any], key: str, value: Any) -> None:
        memory.pop(key, None)  # the latest told is the last forgotten
        memory[key] = value
        if len(memory) > _SEEN_MAX:
            del memory[next(iter(memory))]

    def _store(self, messages: list[Any], stop: threading.Event, in_hand: bool = False) -> None:
        """Commit before reading on: a message not stored now is never told again.

        `in_hand`: a live message, offered at least once even when the bridge is stopping, and
        kept in the dead-letter file if the store cannot take it then (a timeline is asked again)."""
        backoff = Backoff(least=0.2, most=5.0)
        while in_hand or not stop.is_set():
            try:
                report = self._consumer.ingest(messages)
            except Unavailable as exc:
                if stop.is_set():
                    if in_hand:
                        log.error("stopping with a message the store could not take: kept in the dead-letter file")
                        letter = {"error": f"not stored: the bridge stopped while the store was unavailable ({exc})"}
                        self._dead_letters.keep("websocket", [(letter, message) for message in messages])
                    return
                log.warning("store unavailable, holding the websocket: %s", exc)
                backoff.wait(stop)
                continue
            if report.rejected:
                self._dead_letters.keep("websocket", [(r.as_dict(), messages[r.index]) for r in report.rejected])
            return

    def _catching_up(self, stop: threading.Event) -> None:
        """At each connection, the timelines of the executions open, fetched beside the live messages
        (a slow or hung API must not hold them up: nothing acknowledges them, the engine only buffers);
        those the API could not answer are asked again after a backoff, connected or not. One client for
        the follower's life: its connections are kept between passes, and an API that stays unavailable
        is waited out for the first request only, not at every pass (`timeline_api`)."""
        with httpx.Client(timeout=10, headers=self._headers) as client:
            self._catching_up_with(client, stop)

    def _catching_up_with(self, client: httpx.Client, stop: threading.Event) -> None:
        retry: list[str] = []
        backoff = Backoff(most=_MAX_BACKOFF)
        while not stop.is_set():
            missed: list[str] = []
            # Woken by a connection, or asked again after the backoff while something is left to ask for.
            if self._wake.wait(timeout=backoff.drawn() if retry or self._gap_since is not None else None):
                self._wake.clear()
                if stop.is_set():
                    return
                missed, self._missed = [e for e in self._missed if e in self.open_executions], []
                if missed:
                    log.info("connected: fetching the timelines of %d open executions", len(missed))
                backoff.worked()
            self._look_for_begun(client, stop)
            todo = list(dict.fromkeys([*missed, *self._unstarted, *self._awaited_at_end(), *self._wanted(retry)]))
            try:
                retry = self._catch_up(client, todo, stop)
            except Exception:  # a bug must not end catching up for good: asked again after the backoff
                log.exception("catching up on %d executions failed", len(todo))
                retry = todo

    def _look_for_begun(self, client: httpx.Client, stop: threading.Event) -> None:
        """After a disconnection, the executions of the workflows told of that began since and that no
        message told: begun (and maybe ended) while the stream was not followed, neither the stream nor
        an open run's timeline tells them. Each is fetched as one told of mid-way (`_unstarted`). The
        engine lists a workflow's executions unordered and with no time filter: every page of each
        workflow, once a reconnection. A listing that fails is asked again after the backoff."""
        since, gaps = self._gap_since, self._gaps
        if since is None or self._api_url is None:
            return
        window = timeline_api.Window(since=datetime.fromtimestamp(since, UTC))
        begun: list[str] = []
        for workflow, workspace in list(self._workflows.items()):
            if stop.is_set():
                return
            try:
                listed = timeline_api.executions(
                    client, self._api_url, workflow, window, workspace_id=workspace, stop=stop
                )
                mine = [e for e in listed if e not in self._seen and e not in self.open_executions]
            except (httpx.HTTPError, timeline_api.ApiError) as exc:
                self._unanswered.failed(exc)
                return
            begun += mine
            if workspace is not None:
                for execution in mine:
                    self._remember(self._workspaces, execution, workspace)
        if self._gaps == gaps:  # else a reconnection came meanwhile: looked for again, from the oldest
            self._gap_since = None
        if begun:
            log.info(
                "%d executions began while the stream was not followed, told by no message: fetching their timelines",
                len(begun),
            )
        for execution in begun:
            self._remember(self._seen, execution, None)
            self._unstarted[execution] = None

    def _awaited_at_end(self) -> list[str]:
        """The executions told ended whose timeline their run still waits for; those past
        `timeline_at_end_seconds` are dropped (their run has been sent without it)."""
        now = time.monotonic()
        for execution, until in list(self._ending.items()):
            if until < now:
                self._ending.pop(execution, None)
        return list(self._ending)

    def _wanted(self, executions: list[str]) -> list[str]:
        """Those still to fetch: open, told of mid-way and not yet fetched (even if ended since), or told ended
        and their timeline still awaited."""
        return [e for e in executions if e in self.open_executions or e in self._unstarted or e in self._ending]

    def _catch_up(self, client: httpx.Client, executions: list[str], stop: threading.Event) -> list[str]:
        """Fetches and stores these executions' timelines; returns those to ask for again."""
        assert self._api_url is not None  # caught up on only with an API to ask
        again: list[str] = []
        for n, execution in enumerate(executions):
            if stop.is_set():
                return []
            try:
                workspace = self._workspaces.get(execution)
                timeline = timeline_api.timeline(client, self._api_url, execution, workspace, stop)
            except httpx.TransportError as exc:  # down or hung: the rest would wait the same
                self._unanswered.failed(exc)
                return again + executions[n:]
            except timeline_api.ApiError as exc:
                if exc.status in _GONE:
                    self._forget(execution, exc.status)
                else:
                    self._unanswered.failed(exc)
                    again.append(execution)
                continue
            self._unanswered.succeeded()
            if isinstance(timeline, dict) and isinstance(workflow := timeline.get("workflow_id"), str):
                self._told_workflow(workflow, workspace or self._workspace_id)
            named = timeline_api.name_it(timeline, self._workflow_names)
            self._store([timeline_api.in_workspace(named, workspace or self._workspace_id)], stop)
            self._unstarted.pop(execution, None)
            if self._progress(timeline)[1] is False:
                self.open_executions.pop(execution, None)
                self._ending.pop(execution, None)
                self._remember(self._fetched_ended, execution, None)
            elif execution in self._ending:  # told ended, its timeline not yet written so: asked again
                again.append(execution)
        return again

    def _forget(self, execution: str, status: int) -> None:
        # The engine does not know it (deleted, or kept by another workspace): asking again at every
        # reconnect would never get an answer. The run stays open in the store, where it is listed,
        # counted overdue when it was paused, and ended at `max_open_seconds`.
        open_ = execution in self.open_executions
        self.open_executions.pop(execution, None)
        self._unstarted.pop(execution, None)
        if self._ending.pop(execution, None) is not None:
            try:  # its run waits for the timeline no more: sent now, as the stream told it
                self._no_timeline(execution)
            except Exception as exc:  # the store away: the run is sent at the end of its wait all the same
                log.debug("telling that %s has no timeline failed: %s", execution, exc)
        log.warning(
            "timeline of %s: the engine answered %d; not asked again%s",
            execution,
            status,
            " (the run stays open until max_open_seconds)" if open_ else " (its trace is what the stream told)",
        )
