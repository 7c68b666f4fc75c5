"""The quarantine: records a flow held back, each with a reason, so the rest of the batch proceeds.

Bad input is quarantined, not fatal. Each entry names the record by the
source's opaque id and a reason code (documented in the README's runbook); the reason text must never
carry patient data — it says what rule failed, not what the value was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from caldicott.db import insert_ignore, utcnow
from caldicott.state.schema import quarantine as quarantine_table


@dataclass(frozen=True)
class Quarantined:
    """One held-back record: its type and opaque id, a reason code and a patient-free explanation."""

    record_type: str
    record_id: str
    reason_code: str
    reason: str


def quarantine(engine: Engine, flow: str, run_key: str, items: Iterable[Quarantined]) -> int:
    """Record ``items`` for (``flow``, ``run_key``); re-recording the same item is a no-op.

    Returns the number of items passed (not the number newly stored), so a re-run reports the same
    count as the first run.
    """
    rows = [
        {"flow": flow, "run_key": run_key, "record_type": q.record_type, "record_id": str(q.record_id),
         "reason_code": q.reason_code, "reason": q.reason, "created_at": utcnow()}
        for q in items
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(insert_ignore(conn, quarantine_table), rows)
    return len(rows)


def counts_by_reason(engine: Engine, flow: str, run_key: str | None = None) -> dict[str, int]:
    """How many records were quarantined per reason code, for a run's report."""
    q = select(quarantine_table.c.reason_code, func.count()).where(quarantine_table.c.flow == flow)
    if run_key is not None:
        q = q.where(quarantine_table.c.run_key == run_key)
    with engine.connect() as conn:
        return dict(conn.execute(q.group_by(quarantine_table.c.reason_code)).all())


def entries(engine: Engine, flow: str, run_key: str) -> list[Quarantined]:
    """The quarantined items of one run (opaque ids and reasons only)."""
    t = quarantine_table
    q = (select(t.c.record_type, t.c.record_id, t.c.reason_code, t.c.reason)
         .where(t.c.flow == flow, t.c.run_key == run_key).order_by(t.c.id))
    with engine.connect() as conn:
        return [Quarantined(*row) for row in conn.execute(q)]
