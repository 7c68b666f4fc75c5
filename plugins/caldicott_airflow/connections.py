"""Airflow connections → SQLAlchemy engines for the records source and the state database.

Connection ids (override with the env vars named in the README):

* ``caldicott_records``: the clinical-records source, read-only (``sqlite`` with ``host`` = file path,
  or ``postgres``, whose libpq extras such as ``sslmode`` are honoured);
* ``caldicott_state``: Caldicott's own state database (same kinds); verified (never migrated) on first use per
  process: the migration is a deployment step (``python -m caldicott_airflow.state_migration``).

Both can come from ``AIRFLOW_CONN_*`` environment variables, the metadata database, or any secrets
backend configured in Airflow: this module only asks ``BaseHook.get_connection``.
"""

from __future__ import annotations

import functools
import os

from caldicott.db import make_engine, sqlite_url
from sqlalchemy import URL, Engine

RECORDS_CONN_ID = os.environ.get("CALDICOTT_RECORDS_CONN_ID", "caldicott_records")
STATE_CONN_ID = os.environ.get("CALDICOTT_STATE_CONN_ID", "caldicott_state")


#: libpq connection parameters taken from a postgres connection's extras (Airflow's postgres provider
#: passes these through too). Anything else in the extras is ignored, never sent to the server.
LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcompression", "sslsni",
                "channel_binding", "gssencmode", "connect_timeout", "application_name", "options",
                "target_session_attrs", "keepalives", "keepalives_idle", "keepalives_interval",
                "keepalives_count", "tcp_user_timeout")

#: Added to the records source's libpq ``options`` on PostgreSQL: every transaction is read-only, the
#: counterpart of SQLite's ``mode=ro`` (the source is read-only to Caldicott whatever its user may do).
READ_ONLY_OPTION = "-c default_transaction_read_only=on"


def sqlalchemy_url(conn, *, readonly: bool = False) -> str:
    """The SQLAlchemy URL for an Airflow Connection of type sqlite or postgres.

    ``extra.sqlalchemy_url`` wins when set, for drivers this function does not know. For postgres the
    libpq parameters in the extras (:data:`LIBPQ_EXTRAS`: ``sslmode``, ``sslrootcert`` ...) are kept, so
    ``{"sslmode": "verify-full"}`` really means a verified TLS connection; ``readonly`` makes every
    transaction of the session read-only.
    """
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    kind = (conn.conn_type or "").lower()
    if kind == "sqlite":
        return sqlite_url(conn.host)
    if kind in ("postgres", "postgresql"):
        query = {k: str(extra[k]) for k in LIBPQ_EXTRAS if extra.get(k) not in (None, "")}
        if readonly:
            query["options"] = f"{query['options']} {READ_ONLY_OPTION}" if query.get("options") else READ_ONLY_OPTION
        url = URL.create("postgresql+psycopg2", username=conn.login or None, password=conn.password or None,
                         host=conn.host or "127.0.0.1", port=conn.port or None, database=conn.schema or "postgres",
                         query=query)
        return url.render_as_string(hide_password=False)
    raise ValueError(f"connection {conn.conn_id!r} has type {conn.conn_type!r}; use sqlite or postgres")


def _get_connection(conn_id: str):
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


@functools.cache
def records_engine() -> Engine:
    """Engine on the records source, read-only: SQLite opened ``mode=ro``, PostgreSQL read-only transactions."""
    return make_engine(sqlalchemy_url(_get_connection(RECORDS_CONN_ID), readonly=True), readonly=True)


def state_url() -> str:
    """The SQLAlchemy URL of the state database, from its Airflow connection (secrets backends included)."""
    return sqlalchemy_url(_get_connection(STATE_CONN_ID))


@functools.cache
def state_engine() -> Engine:
    """Engine on the state database, checked once per process to be at this release's schema.

    Only verified, never migrated: a database behind the code fails the task with
    :class:`caldicott.state.migrate.SchemaNotCurrent`, naming what is missing and the migration command for
    on-call (the migration is a deployment step; see :mod:`caldicott.state.migrate`). Not cached on failure, so
    the retry after a migration finds it current.
    """
    from caldicott.state.migrate import verify

    engine = make_engine(state_url())
    verify(engine)
    return engine
