"""What names the bridge takes may hold, shared by the bridge and the producer-side trackers (which
must not load pydantic to know it): an HTTP header's name, and a label of a run (its env, service,
ids) — the wire models enforce the same with pydantic's compiled checks (`sources/wire.py`)."""

import re

# What an HTTP header's name may hold (RFC 9110's token): the pattern, for larger ones built on it.
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
HEADER_NAME = re.compile(TOKEN)

# What the bridge refuses in a label, and no header value carries: a control character (U+001F, the
# field separator of the hashes that make trace ids, among them).
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# An identity is in the key of every row its run keeps, and on its spans: one of a megabyte (a
# payload sent in the wrong field) made each of its run's rows as large. Temporal bounds its ids
# and names at 1,000 characters (`limit.maxIDLength`); so do we.
MAX_IDENTITY = 1000


def label_problem(label: str) -> str | None:
    """Why the bridge rejects every event that carries `label` as its env, service or id, or None."""
    if len(label) > MAX_IDENTITY or CONTROL_CHARACTER.search(label):
        return f"{label[:40]!r} is none the bridge takes: {MAX_IDENTITY:,} characters at most, none a control"
    return None
