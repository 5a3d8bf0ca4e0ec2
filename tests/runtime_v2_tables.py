"""When the runs the tests write happen: the runtime's clock, from a fixed morning."""

from datetime import UTC, datetime, timedelta

from otel_bridge.producer.runtime_v2 import Runtime

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reader_of(url: str, role: str, *tables: str) -> str:
    """The URL of the database for a user `role` who may read the six tables the poller needs, and `tables`."""
    import psycopg

    from otel_bridge.receivers.postgres_poll import TABLES

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")
        db.execute(f"GRANT SELECT ON {', '.join([*TABLES, *tables])} TO {role}")
    return url.replace("postgresql://postgres@", f"postgresql://{role}@")


__all__ = ["Runtime", "at", "reader_of"]
