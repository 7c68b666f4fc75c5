"""Airflow connections → engines: the URL built from a connection keeps its libpq extras (a records source
configured with ``sslmode: verify-full`` must not quietly connect without TLS), and the records source is
read-only on PostgreSQL as it is on SQLite. The PostgreSQL tests skip with a reason when it is absent."""

from __future__ import annotations

import json

import pytest
from airflow.models.connection import Connection
from caldicott.db import make_engine
from caldicott.records import schema, synth
from caldicott_airflow import connections
from sqlalchemy import make_url, select, text


def _conn(**kw) -> Connection:
    return Connection(conn_id="probe", **kw)


def test_postgres_url_keeps_tls_and_libpq_extras_and_ignores_others():
    conn = _conn(conn_type="postgres", host="records-db.provider.example", port=5432, schema="pms",
                 login="caldicott ro", password="p@ss:/word",
                 extra=json.dumps({"sslmode": "verify-full", "sslrootcert": "/opt/airflow/secrets/ca.pem",
                                   "connect_timeout": 10, "cursor": "realdictcursor", "iam": True}))
    url = make_url(connections.sqlalchemy_url(conn))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.port, url.database) == ("records-db.provider.example", 5432, "pms")
    assert (url.username, url.password) == ("caldicott ro", "p@ss:/word")
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/opt/airflow/secrets/ca.pem",
                               "connect_timeout": "10"}


def test_records_url_is_read_only_and_keeps_the_users_options():
    plain = make_url(connections.sqlalchemy_url(_conn(conn_type="postgres", host="h", schema="d"), readonly=True))
    assert plain.query["options"] == "-c default_transaction_read_only=on"
    own = _conn(conn_type="postgres", host="h", schema="d", extra=json.dumps({"options": "-c search_path=iapt"}))
    url = make_url(connections.sqlalchemy_url(own, readonly=True))
    assert url.query["options"] == "-c search_path=iapt -c default_transaction_read_only=on"
    assert make_url(connections.sqlalchemy_url(own)).query["options"] == "-c search_path=iapt"


def test_uri_form_and_other_kinds():
    conn = Connection(conn_id="probe", uri="postgresql://caldicott:s%40cret@postgres:5432/caldicott_state?sslmode=require")
    url = make_url(connections.sqlalchemy_url(conn))
    assert (url.username, url.password, url.host) == ("caldicott", "s@cret", "postgres")
    assert url.database == "caldicott_state"
    assert url.query == {"sslmode": "require"}
    assert connections.sqlalchemy_url(_conn(conn_type="sqlite", host="/srv/r.db")) == "sqlite:////srv/r.db"
    custom = _conn(conn_type="postgres", extra=json.dumps({"sqlalchemy_url": "postgresql+psycopg://x/y"}))
    assert connections.sqlalchemy_url(custom) == "postgresql+psycopg://x/y"
    with pytest.raises(ValueError, match="use sqlite or postgres"):
        connections.sqlalchemy_url(_conn(conn_type="mysql", host="h"))


@pytest.fixture
def fresh_engines():
    connections.records_engine.cache_clear()
    connections.state_engine.cache_clear()
    yield
    for fn in (connections.records_engine, connections.state_engine):
        if fn.cache_info().currsize:
            fn().dispose()
        fn.cache_clear()


def _pg_conn_json(pg_url: str, **extra) -> str:
    u = make_url(pg_url)
    return json.dumps({"conn_type": "postgres", "host": u.host, "port": u.port, "schema": u.database,
                       "login": u.username, "extra": extra})


@pytest.mark.postgres
def test_records_engine_on_postgresql_reads_and_cannot_write(pg_url, monkeypatch, fresh_engines):
    result = synth.generate(50, seed=5)
    writer = make_engine(pg_url)
    synth.write(result, writer)
    writer.dispose()
    monkeypatch.setenv(f"AIRFLOW_CONN_{connections.RECORDS_CONN_ID.upper()}",
                       _pg_conn_json(pg_url, sslmode="disable", application_name="caldicott-records"))

    engine = connections.records_engine()
    with engine.connect() as conn:
        assert len(conn.execute(select(schema.patient.c.local_patient_id)).all()) == 50
        assert conn.execute(text("SELECT current_setting('application_name')")).scalar() == "caldicott-records"
        assert conn.connection.driver_connection.get_dsn_parameters()["sslmode"] == "disable"
    with pytest.raises(Exception, match="read-only transaction"), engine.begin() as conn:
        conn.execute(schema.patient.delete())
    with engine.connect() as conn:  # nothing was deleted
        assert len(conn.execute(select(schema.patient.c.local_patient_id)).all()) == 50


@pytest.mark.postgres
def test_state_engine_on_postgresql_is_migrated_and_writable(pg_url, monkeypatch, fresh_engines):
    """Tasks only verify the schema: a fresh database fails them, naming the migration step; the deployment step
    (``python -m caldicott_airflow.state_migration``, through the same connection) makes it current."""
    from caldicott.state.migrate import SchemaNotCurrent
    from caldicott.state.schema import schema_version
    from caldicott_airflow import state_migration

    monkeypatch.setenv(f"AIRFLOW_CONN_{connections.STATE_CONN_ID.upper()}", _pg_conn_json(pg_url))
    with pytest.raises(SchemaNotCurrent, match=r"missing: table .*Tasks do not migrate it: run the state database "
                                               r"migration"):
        connections.state_engine()
    assert state_migration.main(["--check"]) == 1
    assert state_migration.main([]) == 0
    assert state_migration.main(["--check"]) == 0
    engine = connections.state_engine()   # not cached after the failure: the retry finds it current
    with engine.begin() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [1]
        conn.execute(text("CREATE TABLE probe_write (x int)"))  # not read-only


def test_state_engine_verifies_and_never_migrates(tmp_path, monkeypatch, fresh_engines):
    """SQLite: a task on a database behind the code fails with what is missing and what to run, and changes
    nothing; after the deployment step it is current; a column the code declares and the database lacks is named."""
    from caldicott.db import make_engine, sqlite_url
    from caldicott.state.migrate import SchemaNotCurrent, migrate, pending

    db = tmp_path / "state.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{connections.STATE_CONN_ID.upper()}",
                       json.dumps({"conn_type": "sqlite", "host": str(db)}))
    with pytest.raises(SchemaNotCurrent, match="make migrate"):
        connections.state_engine()
    plain = make_engine(sqlite_url(db))
    with plain.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type='table'")).scalar() == 0
    migrate(plain)
    assert pending(plain) == []
    assert connections.state_engine() is not None
    with plain.begin() as conn:
        conn.execute(text("ALTER TABLE quarantine DROP COLUMN reason"))
    assert "column quarantine.reason" in pending(plain)
