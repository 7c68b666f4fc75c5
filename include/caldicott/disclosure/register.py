"""Reading and appending the disclosure register; the gateway asks it whether a release is approved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select

from caldicott.db import utcnow
from caldicott.disclosure.state_tables import disclosure_event

DECISIONS = ("approved", "refused", "withdrawn")


@dataclass(frozen=True)
class Approval:
    """An approved release: to whom, at which address, and the checksum of exactly the package that was approved."""

    disclosure_id: str
    recipient: str
    package_checksum: str
    decided_by: str
    address: str = ""   # the mailbox or remote directory the approver saw ("" for the outbox)


def append(engine: Engine, disclosure_id: str, event: str, actor: str, details: Mapping[str, Any]) -> None:
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
    return Approval(disclosure_id, d["recipient"], d["package_checksum"], row.actor, d.get("recipient_address") or "")


# ---- request lifecycle (issue 6) ---------------------------------------------------------------------
#: Event names, in the order a request normally collects them.
REQUESTED, PACKAGE_BUILT, ESCALATED, RELEASED = "requested", "package_built", "escalated", "released"
DECISION_INCOMPLETE = "decision_incomplete"
NOT_AUTHORISED = "decision_not_authorised"   # an answer from someone not assigned to decide: not a decision
RELEASE_REFUSED = "release_refused"          # release attempted by another route than the one approved
NO_HITL_RESPONSE = "no_hitl_response"        # the approval step ended with no answer in Airflow's HITL record
NO_DECISION = "no_decision"                  # the flow went on past the approval step but the register has none
PATIENT_NOTIFIED, PATIENT_NOT_NOTIFIED, REFUSAL_LETTER = "patient_notified", "patient_not_notified", "refusal_letter"


def has_event(engine: Engine, disclosure_id: str, event: str) -> bool:
    t = disclosure_event
    with engine.connect() as conn:
        return conn.execute(select(t.c.id).where(t.c.disclosure_id == disclosure_id, t.c.event == event)
                            .limit(1)).first() is not None


def latest(engine: Engine, disclosure_id: str, event: str) -> dict[str, Any] | None:
    """The most recent ``event`` for the request (with ``at`` and ``actor``), or None."""
    found = [e for e in events(engine, disclosure_id) if e["event"] == event]
    return found[-1] if found else None


def append_once(engine: Engine, disclosure_id: str, event: str, actor: str, details: Mapping[str, Any]) -> bool:
    """Append ``event`` unless the request already has one (idempotent task retries). True if appended."""
    if has_event(engine, disclosure_id, event):
        return False
    append(engine, disclosure_id, event, actor, details)
    return True


def decision(engine: Engine, disclosure_id: str) -> dict[str, Any] | None:
    """The latest decision event (approved / refused / withdrawn), or None while the request is open."""
    found = [e for e in events(engine, disclosure_id) if e["event"] in DECISIONS]
    return found[-1] if found else None


def status(engine: Engine, disclosure_id: str) -> str:
    """open, approved, released, refused or withdrawn: what a report shows."""
    evs = [e["event"] for e in events(engine, disclosure_id)]
    if not evs:
        return "unknown"
    dec = next((e for e in reversed(evs) if e in DECISIONS), None)
    if dec == "approved":
        return RELEASED if RELEASED in evs else "approved"
    return dec or "open"


def store_package(engine: Engine, disclosure_id: str, content: bytes, plaintext_checksum: str) -> str:
    """Keep the encrypted package; return its checksum (the id an approval binds to)."""
    import hashlib

    from caldicott.db import insert_ignore
    from caldicott.disclosure.state_tables import disclosure_package

    checksum = hashlib.sha256(content).hexdigest()
    with engine.begin() as conn:
        conn.execute(insert_ignore(conn, disclosure_package).values(
            package_checksum=checksum, disclosure_id=disclosure_id, content=content,
            plaintext_checksum=plaintext_checksum, built_at=utcnow()))
    return checksum


def load_package(engine: Engine, package_checksum: str) -> bytes | None:
    from caldicott.disclosure.state_tables import disclosure_package as p

    with engine.connect() as conn:
        return conn.execute(select(p.c.content).where(p.c.package_checksum == package_checksum)).scalar()


def requests(engine: Engine) -> list[dict[str, Any]]:
    """One summary row per request, oldest first: what the report lists (no patient identifiers)."""
    t = disclosure_event
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.disclosure_id, t.c.event, t.c.at, t.c.actor, t.c.details).order_by(t.c.id))
        by_id: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_id.setdefault(r.disclosure_id, []).append(dict(r._mapping))
    out = []
    for did, evs in by_id.items():
        req = next((e for e in evs if e["event"] == REQUESTED), None)
        d = (req or {}).get("details") or {}
        dec = next((e for e in reversed(evs) if e["event"] in DECISIONS), None)
        rel = next((e for e in reversed(evs) if e["event"] == RELEASED), None)
        names = [e["event"] for e in evs]
        st = ("released" if rel else "approved") if dec and dec["event"] == "approved" else (
            dec["event"] if dec else "open")
        out.append({
            "disclosure_id": did, "status": st, "request_type": d.get("request_type"),
            "reference": d.get("reference"), "requester": d.get("requester_organisation"),
            "legal_basis": d.get("legal_basis"), "requested_at": req["at"] if req else None,
            "decided_at": dec["at"] if dec else None, "decided_by": dec["actor"] if dec else None,
            "escalated": ESCALATED in names,
            "released_checksum": (rel["details"] or {}).get("package_checksum") if rel else None,
            "patient_told": PATIENT_NOTIFIED in names if dec and dec["event"] == "approved" else None,
        })
    return out
