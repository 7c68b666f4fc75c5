"""Demo: the daily records-quality scan over the whole synthetic source."""

from __future__ import annotations

import datetime as dt

ORDER = 10
DAG_ID = "records_quality"


def run(ctx) -> dict:
    run_id = ctx.stack.trigger(DAG_ID, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    state = ctx.stack.wait_run(DAG_ID, run_id, timeout=600)
    result = ctx.stack.xcom(DAG_ID, run_id, "scan_records") or {}
    return {"state": state, "run_id": run_id, "records_checked": result.get("records_checked"),
            "quarantined": result.get("quarantined"), "by_reason": result.get("by_reason")}
