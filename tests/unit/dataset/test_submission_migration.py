"""State migration 3: ``dataset_submission`` from one row per month to one per month and kind (primary / refresh).
A database from before keeps every row, as the primary it was, with its reference and timestamps; a fresh database
never runs the step. SQLite, and PostgreSQL where it is reachable (the ``engine`` fixture of tests/unit)."""

from __future__ import annotations

import datetime as dt

from caldicott.dataset import state_tables
from caldicott.dataset.calendar import Kind
from caldicott.state.migrate import migrate
from caldicott.state.schema import schema_version
from sqlalchemy import inspect, select, text

OLD = """CREATE TABLE dataset_submission (
    run_key VARCHAR(20) NOT NULL, version VARCHAR(5) NOT NULL, state VARCHAR(20) NOT NULL,
    archive_path VARCHAR(500) NOT NULL, sha256 VARCHAR(64) NOT NULL, size_bytes INTEGER NOT NULL,
    row_counts JSON NOT NULL, quarantined INTEGER NOT NULL, item_id VARCHAR(80), submission_reference VARCHAR(100),
    submitted_by VARCHAR(100), created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL, staged_at TIMESTAMP,
    submitted_at TIMESTAMP, CONSTRAINT dataset_submission_pkey PRIMARY KEY (run_key))"""


def _legacy(engine) -> dt.datetime:
    """A database as the previous code left it: the old table, with a submitted month and a staged one."""
    when = dt.datetime(2026, 10, 9, 10, 30)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE dataset_submission"))
        conn.execute(text(OLD))
        for key, state, ref in (("2026-08", "submitted", "SDCS-0826"), ("2026-09", "staged", None)):
            conn.execute(text("INSERT INTO dataset_submission (run_key, version, state, archive_path, sha256, "
                              "size_bytes, row_counts, quarantined, item_id, submission_reference, submitted_by, "
                              "created_at, updated_at, staged_at, submitted_at) VALUES (:k, '2.1', :s, :p, :h, 10, "
                              "'{\"IDS101Referral\": 5}', 1, :i, :r, :b, :w, :w, :w, :sw)"),
                         {"k": key, "s": state, "p": f"/w/{key}/a.zip.enc", "h": "0" * 64, "i": f"item-{key}",
                          "r": ref, "b": "sub" if ref else None, "w": when, "sw": when if ref else None})
        conn.execute(text("DELETE FROM caldicott_schema_version WHERE version > 1"))
    return when


def test_fresh_database_is_at_the_new_shape_without_the_step(engine):
    with engine.connect() as conn:
        assert list(conn.execute(select(schema_version.c.version)).scalars()) == [1]
        pk = inspect(conn).get_pk_constraint("dataset_submission")["constrained_columns"]
    assert sorted(pk) == ["kind", "run_key"]


def test_old_database_keeps_its_months_as_primary_submissions(engine):
    when = _legacy(engine)
    assert migrate(engine) == [3]
    assert migrate(engine) == []
    aug, sept = state_tables.get(engine, "2026-08"), state_tables.get(engine, "2026-09")
    assert (aug["kind"], aug["state"], aug["submission_reference"], aug["submitted_at"]) == ("primary", "submitted",
                                                                                          "SDCS-0826", when)
    assert (sept["kind"], sept["state"], sept["item_id"], sept["row_counts"]) == ("primary", "staged", "item-2026-09",
                                                                                 {"IDS101Referral": 5})
    assert state_tables.get(engine, "2026-08", Kind.REFRESH) is None
    # the refresh of the same month is now a row of its own
    state_tables.register(engine, "2026-08", kind=Kind.REFRESH, version="2.1", archive_path="/w/r.zip.enc",
                          sha256="1" * 64, size_bytes=11, row_counts={}, quarantined=0)
    assert state_tables.get(engine, "2026-08", Kind.REFRESH)["state"] == "written"
    assert state_tables.get(engine, "2026-08")["submission_reference"] == "SDCS-0826"
    with engine.connect() as conn:
        assert not inspect(conn).has_table("dataset_submission_pre3")

