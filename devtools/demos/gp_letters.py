"""Demo: GP assessment and discharge letters for a busy October week, with a GP practice acknowledging
MESH letters (the sandbox does not route acks, so the demo plays the practice with the GP responder)."""

from __future__ import annotations

import datetime as dt

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
    return {"state": state, "run_id": run_id, "letters": report.get("letters"), "sent": report.get("sent"),
            "already_sent": report.get("already_sent"), "withheld": report.get("withheld"),
            "held": len(report.get("held_ids") or []), "quarantined_by_reason": report.get("quarantined_by_reason"),
            "acked": acks.get("acked"), "ack_overdue": acks.get("overdue")}
