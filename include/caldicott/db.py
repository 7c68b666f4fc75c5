"""Engines for the two databases Caldicott uses: the clinical-records source and its own state.

Both are reached through a SQLAlchemy URL. In Airflow the URL comes from a connection
(``plugins/caldicott_airflow/connections.py``); in tests and benchmarks it is passed directly. SQLite is
the embedded default; PostgreSQL is the production target and is exercised in CI.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Insert, Row, Table, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

if TYPE_CHECKING:   # the dialects are imported when a statement is built (conflict_insert)
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

#: A result row of any columns (read by position or by column name).
AnyRow = Row[*tuple[Any, ...]]


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """Return an engine for ``url`` with the settings each backend needs to be safe here.

    SQLite gets WAL journaling (readers never block the single writer, so a letters run can read the
    source while the demo seeds another) with synchronous=NORMAL, and a busy timeout; ``readonly`` opens the file with
    ``mode=ro`` so the records source cannot be written through a Caldicott engine by mistake.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if readonly and path and path != ":memory:":
            url = f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            if not readonly:
                cur.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives the process being killed (what the ledger must survive);
                # only a power cut may lose the last commits. Production state is PostgreSQL.
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def sqlite_url(path: Path | str) -> str:
    """The SQLAlchemy URL of a SQLite file, absolute so it means the same in every process."""
    return f"sqlite:///{Path(path).resolve()}"


def utcnow() -> dt.datetime:
    """Naive UTC now: state tables store UTC instants without a zone (SQLite has no zone type)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def conflict_insert(dialect: str, table: Table) -> PgInsert | SqliteInsert:
    """The dialect's own INSERT for ``table``, which has ``ON CONFLICT`` (``on_conflict_do_nothing`` /
    ``on_conflict_do_update`` and ``excluded``): SQLite and PostgreSQL spell it alike, SQLAlchemy's generic INSERT
    does not have it."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"state database dialect {dialect!r} is not supported (use SQLite or PostgreSQL)")


def insert_ignore(engine_or_conn: Engine | Connection, table: Table) -> Insert:
    """An INSERT that skips rows whose key already exists, on SQLite and PostgreSQL alike.

    Idempotency rests on this: re-running an interval re-inserts the same deterministic ids and
    nothing changes.
    """
    return conflict_insert(engine_or_conn.dialect.name, table).on_conflict_do_nothing()
