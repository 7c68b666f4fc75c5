"""Demo: session updates to referrers over SFTP for a busy October 2026 day, plus October's activity files.

The day is chosen from the synthetic records (the October 2026 London day with most sessions for the
SFTP contracts), so the files have rows. The run is triggered over the REST API with conf
``{"day": ..., "activity_month": "2026-10"}``; files land on the local SFTP peer and are all listed in
``files_on_sftp_peer``: the synthetic source's SFTP contracts are CT001 (``csv-v1``, with summaries) and CT002
(``fhir-r4-v1``: ``CT002_sessions_<day>_fhir-r4-v1.json``, a FHIR R4 Bundle, no summaries); CT003 goes by MESH.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

ORDER = 40
DAG_ID = "referrer_updates"
MONTH = dt.date(2026, 10, 1)


def busiest_day(records_db: Path, month: dt.date = MONTH) -> dt.date:
    """The London day of ``month`` with most sessions for active SFTP contracts' referrers."""
    import pandas as pd
    from caldicott.db import make_engine, sqlite_url
    from caldicott.updates import build

    engine = make_engine(sqlite_url(records_db), readonly=True)
    try:
        contracts = build.active_contracts(engine)
        refs = set(contracts.loc[contracts["transport"] == "sftp", "referrer_org_code"])
        sessions = build.load_sessions(engine, *build.london_bounds(*build.month_bounds(month)))
    finally:
        engine.dispose()
    sessions = sessions[sessions["referrer_org_code"].isin(refs)]
    if sessions.empty:
        return month
    days = pd.to_datetime(sessions["contact_at"]).dt.tz_localize("UTC").dt.tz_convert("Europe/London").dt.date
    counts = days.value_counts()
    return min(d for d, n in counts.items() if n == counts.max())


def run(ctx, *, day: dt.date | None = None) -> dict:
    day = day or busiest_day(ctx.workspace.records_db)
    # the conf names the day; a fresh logical date lets the demo be run again on the same Airflow home
    run_id = ctx.stack.trigger(DAG_ID, dt.datetime.now(dt.UTC),
                               conf={"day": day.isoformat(), "activity_month": MONTH.strftime("%Y-%m")},
                               run_id=f"demo__{DAG_ID}__{time.time_ns()}")
    state = ctx.stack.wait_run(DAG_ID, run_id, timeout=900)
    report = ctx.stack.xcom(DAG_ID, run_id, "report") or {}
    peer = ctx.peers.get("sftp")
    delivered = sorted(str(p.relative_to(peer.root)) for p in peer.root.rglob("*") if p.is_file()) if peer else []
    return {"state": state, "run_id": run_id, "day": day.isoformat(), "files": report.get("files"),
            "rows": report.get("rows"), "quarantined": report.get("quarantined"), "held": report.get("held"),
            "files_on_sftp_peer": delivered}
