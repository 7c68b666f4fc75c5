"""Demo: the submission window that takes September 2026 (primary) and August 2026 (refresh), each answered at
its human step like the named submitter would. A second demo finds both confirmed: nobody is asked again, and the
summary reports the references recorded the first time."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

ORDER = 40
DAG_ID = "monthly_dataset"
MONTH = "2026-09"
KINDS = ("primary", "refresh")
REFERENCES = {"primary": "SDCS-DEMO-2609-P", "refresh": "SDCS-DEMO-2608-R"}
PROVIDER = "Synthetic NHS Talking Therapies Service"
DONE = ("success", "skipped", "failed", "upstream_failed", "removed")


def await_human_step(stack, run_id: str, task_id: str, timeout: float = 600) -> str:
    """Wait until ``task_id`` awaits input (returned once it is safe to answer) or ends without asking."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = stack.task_states(DAG_ID, run_id).get(task_id)
        if state == "awaiting_input":
            stack.settle_parked(DAG_ID, run_id, task_id)
            return state
        if state in DONE or stack.run_state(DAG_ID, run_id) in ("success", "failed"):
            return state or "none"
        time.sleep(2)
    return f"{state} (timed out)"


def run(ctx) -> dict:
    from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

    stack = ctx.stack
    mesh = ctx.peers.get("mesh")
    responder = NdopResponder(mesh.client(SERVICE_MAILBOX)).start() if mesh is not None else None
    steps: dict[str, str] = {}
    try:
        run_id = stack.trigger(DAG_ID, dt.datetime(2026, 10, 1, 5, tzinfo=dt.UTC),
                               {"month": MONTH, "provider_name": PROVIDER})
        for kind in KINDS:
            task = f"{kind}.confirm_submission"
            steps[kind] = await_human_step(stack, run_id, task)
            if steps[kind] == "awaiting_input":
                # the submitter writes the IDB tables from the staged file, imports them, uploads, enters the reference
                stack.answer(DAG_ID, run_id, task, "Uploaded", {"submission_reference": REFERENCES[kind]})
                steps[kind] = "answered"
        state = stack.wait_run(DAG_ID, run_id, timeout=600)
    finally:
        if responder is not None:
            responder.stop()
    out = Path(ctx.workspace.outputs) / "monthly_dataset"
    submissions = {}
    for kind in KINDS:
        built = stack.xcom(DAG_ID, run_id, f"{kind}.build_validate_write") or {}
        staged = stack.xcom(DAG_ID, run_id, f"{kind}.stage_submission") or {}
        recorded = stack.xcom(DAG_ID, run_id, f"{kind}.record_submission") or {}
        period = built.get("run_key") or staged.get("run_key")
        folder = out / period / ("" if kind == "primary" else kind) if period else None
        submissions[kind] = {"period": period, "rows": built.get("rows"), "rebuilt": built.get("rebuilt"),
                             "quarantined": built.get("quarantined"), "route": staged.get("route"),
                             "sent": staged.get("sent"), "already_sent": staged.get("already_sent"),
                             "human_step": steps.get(kind), "reference": recorded.get("reference"),
                             "already_confirmed": recorded.get("already_confirmed", False),
                             "report": str(folder / "report.html") if folder else None}
    extract = stack.xcom(DAG_ID, run_id, "commissioner_extract") or {}
    stmt = out / MONTH / "optout_statement.json"
    return {"state": state, "run_id": run_id, "submissions": submissions,
            "planning_extract": extract.get("planning"),
            "ndop_patients_kept_in_submission": extract.get("ndop_patients_kept_in_submission"),
            "ndop_check": json.loads(stmt.read_text())["ndop_check"] if stmt.exists() else None}
