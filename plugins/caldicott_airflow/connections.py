"""Airflow connections → SQLAlchemy engines for the records source and the state database.

Connection ids (override with the env vars named in the README):

* ``caldicott_records``: the clinical-records source, read-only (``sqlite`` with ``host`` = file path,
  or ``postgres``);
* ``caldicott_state``: Caldicott's own state database (same kinds); migrated on first use per process.

Both can come from ``AIRFLOW_CONN_*`` environment variables, the metadata database, or any secrets
backend configured in Airflow: this module only asks ``BaseHook.get_connection``.
"""

from __future__ import annotations

import functools
import os
from urllib.parse import quote

from caldicott.db import make_engine, sqlite_url
from sqlalchemy import Engine

RECORDS_CONN_ID = os.environ.get("CALDICOTT_RECORDS_CONN_ID", "caldicott_records")
STATE_CONN_ID = os.environ.get("CALDICOTT_STATE_CONN_ID", "caldicott_state")


def sqlalchemy_url(conn) -> str:
    """The SQLAlchemy URL for an Airflow Connection of type sqlite or postgres.

    ``extra.sqlalchemy_url`` wins when set, for drivers this function does not know.
    """
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    kind = (conn.conn_type or "").lower()
    if kind == "sqlite":
        return sqlite_url(conn.host)
    if kind in ("postgres", "postgresql"):
        auth = ""
        if conn.login:
            auth = quote(conn.login, safe="")
            if conn.password:
                auth += ":" + quote(conn.password, safe="")
            auth += "@"
        port = f":{conn.port}" if conn.port else ""
        return f"postgresql+psycopg2://{auth}{conn.host or '127.0.0.1'}{port}/{conn.schema or 'postgres'}"
    raise ValueError(f"connection {conn.conn_id!r} has type {conn.conn_type!r}; use sqlite or postgres")


def _get_connection(conn_id: str):
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


@functools.cache
def records_engine() -> Engine:
    """Engine on the records source, opened read-only where the backend allows it (SQLite)."""
    return make_engine(sqlalchemy_url(_get_connection(RECORDS_CONN_ID)), readonly=True)


@functools.cache
def state_engine() -> Engine:
    """Engine on the state database, migrated to the current schema once per process."""
    from caldicott.state.migrate import migrate

    engine = make_engine(sqlalchemy_url(_get_connection(STATE_CONN_ID)))
    migrate(engine)
    return engine
