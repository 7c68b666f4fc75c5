"""The referrer_updates DAG through a real scheduler, delivering to the real SFTP peer.

One mapped task per contract; SFTP contracts' files arrive (sessions for the day, activity for the
month), with exactly the rows the domain computes and without summary text where the contract has
none; the MESH contract is held in the ledger; a re-run delivers nothing twice; XCom carries no
patient data.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import time

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.records.synth import SUMMARIES
from caldicott.transport.ledger import Ledger
from caldicott.updates import build

from devtools.demos.referrer_updates import DAG_ID, busiest_day

pytestmark = pytest.mark.e2e


def _trigger(e2e, day: dt.date, nth: int = 0) -> str:
    # the conf names the day; logical dates must differ between runs of one DAG
    logical = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=nth)
    run_id = e2e.stack.trigger(DAG_ID, logical,
                               conf={"day": day.isoformat(), "activity_month": "2026-10"},
                               run_id=f"e2e__{DAG_ID}__{time.time_ns()}")
    assert e2e.stack.wait_run(DAG_ID, run_id, timeout=600) == "success"
    return run_id


def test_referrer_updates_deliver_over_sftp_once(e2e):
    ws, peer = e2e.workspace, e2e.peers["sftp"]
    day = busiest_day(ws.records_db)
    run_id = _trigger(e2e, day)
    report = e2e.stack.xcom(DAG_ID, run_id, "report")

    records = make_engine(sqlite_url(ws.records_db), readonly=True)
    contracts = build.active_contracts(records)
    sftp = contracts[contracts["transport"] == "sftp"]
    mesh = contracts[contracts["transport"] == "mesh"]
    assert report["contracts"] == len(contracts)
    assert report["files"] == {"sent": 2 * len(sftp), "held": 2 * len(mesh)}
    assert report["not_delivered"] == []

    orgs = build.known_organisations(records)
    total_rows = 0
    for c in sftp.to_dict("records"):
        folder = peer.root / c["remote_path"].lstrip("/")
        names = sorted(p.name for p in folder.iterdir())
        cid = c["contract_id"]
        assert names == [f"{cid}_activity_2026-10_csv-v1.csv", f"{cid}_sessions_{day.isoformat()}_csv-v1.csv"]
        for p in folder.iterdir():
            assert p.stat().st_mode & 0o777 == 0o640
            data = p.read_bytes()
            if not c["include_summaries"]:
                assert not any(t.encode() in data for t in SUMMARIES)
                assert b"clinical_summary" not in data
        sessions = (folder / f"{cid}_sessions_{day.isoformat()}_csv-v1.csv").read_text()
        got = [r["care_contact_id"] for r in csv.DictReader(io.StringIO(sessions))]
        expected, _ = build.screen(build.load_sessions(records, *build.london_bounds(day, day + dt.timedelta(days=1)),
                                                       c["referrer_org_code"]), orgs)
        assert got == expected["care_contact_id"].tolist()
        total_rows += len(got)
    assert total_rows > 0, "the chosen day should have sessions for the SFTP contracts"
    assert report["rows"]["sessions"] == total_rows + sum(
        len(build.screen(build.load_sessions(records, *build.london_bounds(day, day + dt.timedelta(days=1)), r),
                         orgs)[0]) for r in mesh["referrer_org_code"])

    state = make_engine(sqlite_url(ws.state_db))
    assert Ledger(state).counts("referrer_updates", day.isoformat()) == {"sent": len(sftp), "held": len(mesh)}

    # re-run the same day: nothing is sent again, the same files stay (no duplicates, untouched)
    before = {p: p.stat().st_mtime_ns for p in peer.root.rglob("*") if p.is_file()}
    run2 = _trigger(e2e, day, nth=1)
    again = e2e.stack.xcom(DAG_ID, run2, "report")
    assert again["files"] == {"already_sent": 2 * len(sftp), "held": 2 * len(mesh)}
    assert {p: p.stat().st_mtime_ns for p in peer.root.rglob("*") if p.is_file()} == before

    # XCom carries ids and counts only
    numbers = [n for (n,) in sqlite3.connect(ws.records_db).execute("SELECT nhs_number FROM patient") if n]
    blob = json.dumps([report, again])
    assert numbers and not any(n in blob for n in numbers)
    for text in SUMMARIES:
        assert text not in blob
