"""State migration 2: a database from before the keyed NDOP cache loses its unsalted answers (they are asked again),
its plain request files on disk and the table that pointed at them; a database created fresh never runs it.
SQLite, and PostgreSQL where it is reachable (the ``engine`` fixture)."""

from __future__ import annotations

import datetime as dt
import hashlib

from caldicott.state.migrate import migrate
from caldicott.state.schema import schema_version
from sqlalchemy import inspect, select, text


def _legacy(engine, plain_file) -> None:
    """What the earlier code left: an sha256-keyed answer and an outstanding request waiting as a plain file."""
    now = dt.datetime(2026, 10, 1, 6)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE ndop_request (request_id VARCHAR(100) PRIMARY KEY, message_ref VARCHAR(200), "
                          "numbers_file VARCHAR(500), sent_at TIMESTAMP NOT NULL, replied_at TIMESTAMP)"))
        conn.execute(text("INSERT INTO ndop_request (request_id, message_ref, numbers_file, sent_at) "
                          "VALUES ('monthly_dataset-2026-09', 'm:x.dat', :path, :now)"),
                     {"path": str(plain_file), "now": now})
        conn.execute(text("INSERT INTO ndop_cache (nhs_hash, opted_out, checked_at, expires_at, request_id) "
                          "VALUES (:h, :o, :now, :later, 'monthly_dataset-2026-08')"),
                     {"h": hashlib.sha256(b"9990000018").hexdigest(), "o": True, "now": now,
                      "later": now + dt.timedelta(days=7)})


def test_fresh_database_does_not_run_the_legacy_step(engine):
    with engine.connect() as conn:          # the fixture asserted migrate() == [1] twice
        assert list(conn.execute(select(schema_version.c.version)).scalars()) == [1]
        assert not inspect(conn).has_table("ndop_request")
        assert inspect(conn).has_table("ndop_request_file")


def test_legacy_database_loses_unsalted_answers_and_plain_request_files(engine, tmp_path):
    plain = tmp_path / "ndop" / "monthly_dataset-2026-09.dat"
    plain.parent.mkdir()
    plain.write_bytes(b"9990000018,\n9990000026,\n")
    _legacy(engine, plain)

    assert migrate(engine) == [2]
    assert not plain.exists()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM ndop_cache")).scalar_one() == 0
        assert not inspect(conn).has_table("ndop_request")
        assert sorted(conn.execute(select(schema_version.c.version)).scalars()) == [1, 2]
    assert migrate(engine) == []
