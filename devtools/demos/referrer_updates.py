"""Demo: session updates to referrers over SFTP for a busy October 2026 day, plus October's activity files.

The day is chosen from the synthetic records (the October 2026 London day with most sessions for the
SFTP contracts), so the files have rows. The run is triggered over the REST API with conf
``{"day": ..., "activity_month": "2026-10"}``; files land on the local SFTP peer and are all listed in
``files_on_sftp_peer``: the synthetic source's SFTP contracts are CT001 (``csv-v1``, with summaries) and CT002
(``fhir-r4-v1``: ``CT002_sessions_<day>_fhir-r4-v1.json``, a FHIR R4 Bundle, no summaries); CT003 goes by MESH
(mailbox ``X26ABC3`` of the local mesh-sandbox, which keeps messages in memory: ``deliveries`` says where each
contract's files went, from the delivery ledger, and ``mesh_inbox`` what that mailbox held before the demo ended).
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

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
    deliveries = where_files_went(ctx.workspace.records_db, ctx.workspace.state_db, day)
    return {"state": state, "run_id": run_id, "day": day.isoformat(), "activity_month": MONTH.strftime("%Y-%m"),
            "files": report.get("files"), "rows": report.get("rows"), "quarantined": report.get("quarantined"),
            "held": report.get("held"), "deliveries": deliveries, "files_on_sftp_peer": delivered,
            "mesh_inbox": _mesh_inbox(ctx, {d["address"] for d in deliveries if d["channel"] == "mesh"})}


def where_files_went(records_db: Path, state_db: Path, day: dt.date) -> list[dict]:
    """Per active contract and file (the day's sessions, the month's activity): format, channel, address, and the
    ledger's state and transport reference (SFTP: the remote path; MESH: the message id). Ids only."""
    from caldicott.policy.referrer_updates import FLOW
    from caldicott.transport.ledger import item_id
    from caldicott.updates.deliver import file_name, period_key

    src = sqlite3.connect(records_db)
    try:
        contracts = src.execute("SELECT contract_id, transport, file_format, remote_path, mesh_mailbox, mesh_workflow "
                                "FROM contract WHERE active ORDER BY contract_id").fetchall()
    finally:
        src.close()
    state = sqlite3.connect(state_db)
    out: list[dict] = []
    try:
        for cid, transport, fmt, remote_path, mailbox, workflow in contracts:
            for kind, period in (("sessions", period_key(day, day + dt.timedelta(days=1))),
                                 ("activity", MONTH.strftime("%Y-%m"))):
                row = state.execute("SELECT state, transport_ref FROM delivery_ledger WHERE item_id = ?",
                                    (item_id(FLOW, cid, kind, period),)).fetchone()
                file_format = fmt if kind == "sessions" else "csv-v1"
                out.append({"contract_id": cid, "kind": kind, "period": period, "format": file_format,
                            "file": file_name(cid, kind, period, encrypted=False, file_format=file_format),
                            "channel": transport,
                            "address": (remote_path if transport == "sftp" else mailbox) or "",
                            "workflow": workflow if transport == "mesh" else None,
                            "state": row[0] if row else "not planned", "transport_ref": row[1] if row else None})
    finally:
        state.close()
    return out


def _mesh_inbox(ctx, mailboxes: set[str]) -> dict[str, int]:
    """How many messages each referrer MESH mailbox holds (the sandbox keeps them in memory, until the demo ends)."""
    mesh = ctx.peers.get("mesh")
    counts: dict[str, int] = {}
    for mailbox in sorted(m for m in mailboxes if m):
        if mesh is None:
            break
        client = mesh.client(mailbox)
        try:
            counts[mailbox] = len(client.list_messages())
        except Exception as exc:   # the summary is best-effort: a sandbox that went away is not a failed demo
            log.warning("MESH mailbox %s not listed: %s", mailbox, type(exc).__name__)
        finally:
            client.close()
    return counts
