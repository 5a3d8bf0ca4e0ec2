"""Every key format the bridge stores things under, and its one separator.

Keys join fields with U+001F (unit separator), which no identity may hold (the
decoders reject control characters), so no two field lists make the same key.
"""

SEPARATOR = "\x1f"

# A state this version could not read, kept for a human under this prefix + its key.
UNREADABLE = f"unreadable{SEPARATOR}"
# A run whose settling kept failing, kept with the reason under this prefix + its key.
SET_ASIDE = f"unsettled{SEPARATOR}"
# Every run's key begins so, every job instance's so.
RUNS = f"run{SEPARATOR}"
JOBS = f"job{SEPARATOR}"
# The ids of the spans a run has sent are journalled under this prefix + its key (rows, like its facts).
_SENT = f"sent{SEPARATOR}"


# The leases of the tasks one of the replicas sharing a state does alone (`Store.lease`): counting what is open
# in the store, following the runtime v2's tables, following a Phase-10 engine's WebSocket (by its URL, without
# secrets: one lease for each engine followed).
COUNTS_LEASE = "shared counts"
RUNTIME_V2_LEASE = "runtime-v2"


def websocket_lease(url_without_secrets: str) -> str:
    return f"websocket {url_without_secrets}"


def run_key(identity_fields: tuple[str, ...]) -> str:
    return RUNS + SEPARATOR.join(identity_fields)


def runs_of(engine: str, env: str, service: str) -> str:
    """The prefix of every run key of one producer."""
    return RUNS + SEPARATOR.join((engine, env, service, ""))


def id_of(key: str) -> str:
    """The run's (or job instance's) own id: its key's last field."""
    return key.rpartition(SEPARATOR)[2]


# An id may be given by its first characters (`runs` shows a Durable Object's by twelve), from so many on:
# fewer begin too many ids to name one, and a slip of the keyboard would close a stranger's run.
ABBREVIATION_MIN = 6
_HEX = frozenset("0123456789abcdef")


def is_hex(text: str) -> bool:
    """Lower-case hex throughout, as a Durable Object's id (64 characters) and any beginning of it are."""
    return _HEX.issuperset(text)


def job_key(engine: str, env: str, service: str, instance_id: str) -> str:
    return SEPARATOR.join(("job", engine, env, service, instance_id))


def job_fields(key: str) -> tuple[str, str, str, str]:
    """(engine, env, service, instance id) of a job key."""
    _job, engine, env, service, instance_id = key.split(SEPARATOR, 4)
    return engine, env, service, instance_id


def producer_of(key: str) -> tuple[str, str, str]:
    """(engine, env, service) of a run's or a job instance's key: whose it is."""
    _kind, engine, env, service, _rest = key.split(SEPARATOR, 4)
    return engine, env, service


def sent_spans(key: str) -> str:
    """Where the journal of the spans the run under `key` has sent is kept."""
    return _SENT + key


def state_of(facts_key: str) -> str:
    """The key of the state whose facts are kept under `facts_key`: its own, or the spans it has sent."""
    return facts_key.removeprefix(_SENT)


def is_job(key: str) -> bool:
    return key.startswith(JOBS)


def is_kept_aside(key: str) -> bool:
    """A state no longer in play: unreadable, or set aside after failing to settle."""
    return key.startswith((UNREADABLE, SET_ASIDE))


def in_play(aside: str) -> str:
    """The key a state kept aside (unreadable, or set aside after failing to settle) is put back under."""
    return aside.removeprefix(UNREADABLE).removeprefix(SET_ASIDE)


def readable(key: str) -> str:
    """A run's or job's key as people read it: its fields (engine, env, service, [tenant,] id) with spaces."""
    key = in_play(key)
    kind, _, fields = key.partition(SEPARATOR)
    return fields.replace(SEPARATOR, " ") if kind in ("run", "job") else key.replace(SEPARATOR, " ")


def resource_key(service: str, env: str) -> str:
    return f"{service}{SEPARATOR}{env}"


def resource_of(key: str) -> tuple[str, str]:
    service, _, env = key.partition(SEPARATOR)
    return service, env
