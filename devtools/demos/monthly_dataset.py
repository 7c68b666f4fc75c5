"""Demo: the monthly data set for September 2026, answered at the HITL step like the named submitter would."""

from __future__ import annotations

import datetime as dt
import json
import time
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
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = stack.task_states(DAG_ID, run_id)
            if states.get("confirm_submission") == "awaiting_input":
                # the submitter decrypts the staged file, uploads it to SDCS Cloud, and enters the reference
                stack.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/confirm_submission/-1/hitlDetails",
                          {"chosen_options": ["Uploaded"], "params_input": {"submission_reference": "SDCS-DEMO-2609"}})
                break
            if stack.run_state(DAG_ID, run_id) in ("failed", "success"):
                break
            time.sleep(2)
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
