"""Demo: the monthly data set for September 2026, answered at the HITL step like the named submitter would."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

ORDER = 40
DAG_ID = "monthly_dataset"
MONTH = "2026-09"


def run(ctx) -> dict:
    from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

    stack = ctx.stack
    mesh = ctx.peers.get("mesh")
    responder = NdopResponder(mesh.client(SERVICE_MAILBOX)).start() if mesh is not None else None
    try:
        run_id = stack.trigger(DAG_ID, dt.datetime(2026, 10, 1, 5, tzinfo=dt.UTC), {"month": MONTH})
        try:
            stack.wait_task_state(DAG_ID, run_id, "confirm_submission", "awaiting_input", timeout=600)
            # the submitter decrypts the staged file, uploads it to SDCS Cloud, and enters the reference
            stack.answer(DAG_ID, run_id, "confirm_submission", "Uploaded", {"submission_reference": "SDCS-DEMO-2609"})
        except TimeoutError:
            pass   # the run failed before the step: reported below
        state = stack.wait_run(DAG_ID, run_id, timeout=600)
    finally:
        if responder is not None:
            responder.stop()
    built = stack.xcom(DAG_ID, run_id, "build_validate_write") or {}
    extract = stack.xcom(DAG_ID, run_id, "commissioner_extract") or {}
    out = Path(ctx.workspace.outputs) / "monthly_dataset" / MONTH
    stmt = out / "optout_statement.json"
    return {"state": state, "run_id": run_id, "rows": built.get("rows"), "quarantined": built.get("quarantined"),
            "quarantined_by_rule": built.get("quarantined_by_rule"),
            "planning_extract": extract.get("planning"),
            "optout_statement": str(stmt) if stmt.exists() else None,
            "report": str(out / "report.html"), "ndop_check": json.loads(stmt.read_text())["ndop_check"]
            if stmt.exists() else None}
