"""Demo: GP assessment and discharge letters for a busy October week, with a GP practice acknowledging
MESH letters (the sandbox does not route acks, so the demo plays the practice with the GP responder)."""

from __future__ import annotations

import datetime as dt
import sqlite3

from devtools.peers.gp_responder import GpResponder

ORDER = 30
DAG_ID = "gp_letters"
START, END = "2026-10-12", "2026-10-19"   # Monday to Sunday: several assessments and discharges a day


def run(ctx) -> dict:
    mesh = ctx.peers.get("mesh")
    conf = {"start": START, "end": END, "ack_timeout_hours": 0, "ack_wait_seconds": 60}
    responder = GpResponder(mesh.client(mesh.GP_MAILBOX)).start() if mesh is not None else None
    try:
        run_id = ctx.stack.trigger(DAG_ID, dt.datetime(2026, 10, 19, 6, tzinfo=dt.UTC), conf=conf)
        state = ctx.stack.wait_run(DAG_ID, run_id, timeout=900)
    finally:
        if responder is not None:
            responder.stop()
    report = ctx.stack.xcom(DAG_ID, run_id, "report") or {}
    acks = ctx.stack.xcom(DAG_ID, run_id, "check_acks") or {}
    return {"state": state, "run_id": run_id, "start": START, "end": END, "letters": report.get("letters"),
            "sent": report.get("sent"), "already_sent": report.get("already_sent"), "withheld": report.get("withheld"),
            "held": len(report.get("held_ids") or []), "quarantined_by_reason": report.get("quarantined_by_reason"),
            "planned": report.get("planned"), "acked": acks.get("acked"), "ack_overdue": acks.get("overdue"),
            "ledger": ledger_rows(ctx.workspace.state_db, report.get("run_key"))}


def ledger_rows(state_db, run_key: str | None) -> list[dict]:
    """The run's items in the delivery ledger by purpose (GP letter / patient copy), channel and state: what went
    where, counted whether this run or an earlier one sent it (so a re-run of the demo reports the same)."""
    if not run_key:
        return []
    db = sqlite3.connect(state_db)
    try:
        rows = db.execute("SELECT purpose, channel, state, COUNT(*) FROM delivery_ledger "
                          "WHERE flow = ? AND run_key = ? GROUP BY purpose, channel, state "
                          "ORDER BY purpose, channel, state", (DAG_ID, run_key)).fetchall()
    finally:
        db.close()
    return [{"purpose": p, "channel": c, "state": s, "items": n} for p, c, s, n in rows]
