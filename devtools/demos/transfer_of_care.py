"""Demo: transfer-of-care patient reports for October 2026 (a month, not the GP letters' week: onward referrals are
rarer than letters, and a month of the demo's source reaches a provider on every channel).

Reports exist only where the records source holds onward referrals (``onward_referral``); the synthetic generator
fills them (providers on every channel, one with no channel, one outside the adequacy list). The stand-in peers
serve the providers in the records source (``devtools/providers.py``: their MESH mailboxes, their SFTP connections),
so reports to them are delivered; the no-channel provider's are held and the US provider's refused by the release
gateway, and the run reports both. On a source without onward referrals, the run plans nothing and says so."""

from __future__ import annotations

import datetime as dt
import sqlite3

ORDER = 35
DAG_ID = "transfer_of_care"
START, END = "2026-10-01", "2026-11-01"


def run(ctx) -> dict:
    conf = {"start": START, "end": END}
    run_id = ctx.stack.trigger(DAG_ID, dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC), conf=conf)
    state = ctx.stack.wait_run(DAG_ID, run_id, timeout=900)
    report = ctx.stack.xcom(DAG_ID, run_id, "report") or {}
    return {"state": state, "run_id": run_id, "start": START, "end": END, "reports": report.get("reports"),
            "sent": report.get("sent"), "already_sent": report.get("already_sent"),
            "withheld": report.get("withheld"), "held": report.get("held_by_reason"),
            "refused": len(report.get("refused_ids") or []),
            "not_adequate": len(report.get("not_adequate_ids") or []),
            "refused_why": sorted(set((report.get("refused_reasons") or {}).values())),
            "quarantined_by_reason": report.get("quarantined_by_reason"),
            "ledger": ledger_rows(ctx.workspace.state_db, report.get("run_key"))}


def ledger_rows(state_db, run_key: str | None) -> list[dict]:
    """The run's reports in the delivery ledger by purpose (receiver report, GP copy, patient copy), channel, state."""
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
