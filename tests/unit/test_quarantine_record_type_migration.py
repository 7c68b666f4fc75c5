"""State migration 4: ``quarantine.record_type`` takes every national table name (``IDS606CodedScoreAssessmentRefer``
is 31 characters; the column was 30). A database from before is widened; a fresh one is created wide and never runs
the step. SQLite, and PostgreSQL where it is reachable (the ``engine`` fixture)."""

from __future__ import annotations

from caldicott.dataset.builder import TABLES
from caldicott.state import quarantine as q
from caldicott.state.migrate import migrate, pending
from caldicott.state.quarantine import Quarantined
from caldicott.state.schema import schema_version
from sqlalchemy import inspect, select, text


def _record_type_length(engine) -> int | None:
    with engine.connect() as conn:
        col = {c["name"]: c for c in inspect(conn).get_columns("quarantine")}["record_type"]
        return col["type"].length


def _every_table_quarantined(engine) -> None:
    items = [Quarantined(t, f"X-{i}", "IDS60612", "no parent") for i, t in enumerate(TABLES)]
    assert max(len(t) for t in TABLES) >= 31
    assert q.quarantine(engine, "monthly_dataset", "2026-09", items) == len(items)
    got = {x.record_type for x in q.entries(engine, "monthly_dataset", "2026-09")}
    assert "IDS606CodedScoreAssessmentRefer" in got and got == set(TABLES)


def test_a_fresh_database_takes_every_national_table_name(engine):
    assert _record_type_length(engine) == 40
    with engine.connect() as conn:
        assert 4 not in set(conn.execute(select(schema_version.c.version)).scalars())
    _every_table_quarantined(engine)


def test_a_database_with_the_narrow_column_is_widened(engine):
    with engine.begin() as conn:           # what the earlier code created
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE quarantine ALTER COLUMN record_type TYPE VARCHAR(30)"))
        else:
            conn.execute(text("DROP TABLE quarantine"))
            conn.execute(text(
                "CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, flow VARCHAR(50) NOT NULL, "
                "run_key VARCHAR(100) NOT NULL, record_type VARCHAR(30) NOT NULL, record_id VARCHAR(60) NOT NULL, "
                "reason_code VARCHAR(40) NOT NULL, reason TEXT NOT NULL, created_at DATETIME NOT NULL, "
                "CONSTRAINT uq_quarantine_item UNIQUE (flow, run_key, record_type, record_id, reason_code))"))
    assert any(p.startswith("step 4") for p in pending(engine))
    assert migrate(engine) == [4]
    assert migrate(engine) == []           # idempotent
    assert pending(engine) == []
    if engine.dialect.name == "postgresql":
        assert _record_type_length(engine) == 40
    _every_table_quarantined(engine)
