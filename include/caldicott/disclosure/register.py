"""Reading and appending the disclosure register; the gateway asks it whether a release is approved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select

from caldicott.db import utcnow
from caldicott.disclosure.state_tables import disclosure_event

DECISIONS = ("approved", "refused", "withdrawn")


@dataclass(frozen=True)
class Approval:
    """An approved release: to whom, and the checksum of exactly the package that was approved."""

    disclosure_id: str
    recipient: str
    package_checksum: str
    decided_by: str


def append(engine: Engine, disclosure_id: str, event: str, actor: str, details: dict[str, Any]) -> None:
    """Append one event; the register is never updated in place."""
    with engine.begin() as conn:
        conn.execute(insert(disclosure_event).values(
            disclosure_id=disclosure_id, event=event, at=utcnow(), actor=actor, details=details))


def events(engine: Engine, disclosure_id: str) -> list[dict[str, Any]]:
    t = disclosure_event
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.event, t.c.at, t.c.actor, t.c.details)
                            .where(t.c.disclosure_id == disclosure_id).order_by(t.c.id))
        return [dict(r._mapping) for r in rows]


def approved_release(engine: Engine, disclosure_id: str | None) -> Approval | None:
    """The approval in force for ``disclosure_id``: its latest decision, if that decision was 'approved'."""
    if not disclosure_id:
        return None
    t = disclosure_event
    with engine.connect() as conn:
        row = conn.execute(
            select(t.c.event, t.c.actor, t.c.details)
            .where(t.c.disclosure_id == disclosure_id, t.c.event.in_(DECISIONS))
            .order_by(t.c.id.desc()).limit(1)
        ).first()
    if row is None or row.event != "approved":
        return None
    d = row.details or {}
    if not d.get("recipient") or not d.get("package_checksum"):
        return None
    return Approval(disclosure_id, d["recipient"], d["package_checksum"], row.actor)
