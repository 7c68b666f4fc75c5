"""The referrer_updates DAG through a real scheduler, delivering to the real SFTP peer.

One mapped task per contract; SFTP contracts' files arrive (sessions for the day, activity for the
month), with exactly the rows the domain computes and without summary text where the contract has
none; the MESH contract's files reach its mailbox on the mesh-sandbox; a re-run delivers nothing twice;
XCom carries no patient data.
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
    assert report["files"] == {"sent": 2 * len(contracts)}
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
    assert Ledger(state).counts("referrer_updates", day.isoformat()) == {"sent": len(contracts)}

    # the MESH contract's files are in the referrer's mailbox, once each, with the contract's workflow id
    from caldicott.transport.ledger import item_id

    for c in mesh.to_dict("records"):
        wanted = {item_id("referrer_updates", c["contract_id"], "sessions", day.isoformat()),
                  item_id("referrer_updates", c["contract_id"], "activity", "2026-10")}
        with e2e.peers["mesh"].client(c["mesh_mailbox"]) as box:
            found = [box.retrieve_message(m) for m in box.list_messages()]
            mine = [(m.local_id, m.workflow_id) for m in found if m.local_id in wanted]
            for m in found:
                m.close()
        assert sorted(mine) == sorted((i, c["mesh_workflow"]) for i in wanted)

    # re-run the same day: nothing is sent again, the same files stay (no duplicates, untouched)
    before = {p: p.stat().st_mtime_ns for p in peer.root.rglob("*") if p.is_file()}
    run2 = _trigger(e2e, day, nth=1)
    again = e2e.stack.xcom(DAG_ID, run2, "report")
    assert again["files"] == {"already_sent": 2 * len(contracts)}
    assert {p: p.stat().st_mtime_ns for p in peer.root.rglob("*") if p.is_file()} == before

    # XCom carries ids and counts only
    numbers = [n for (n,) in sqlite3.connect(ws.records_db).execute("SELECT nhs_number FROM patient") if n]
    blob = json.dumps([report, again])
    assert numbers and not any(n in blob for n in numbers)
    for text in SUMMARIES:
        assert text not in blob


def test_a_contract_with_a_changed_host_key_fails_alone(e2e):
    """One contract's peer presents another host key: its task fails at once (no retry), naming the contract;
    the other contracts deliver; the report fails the run naming that contract."""
    import asyncssh

    ws, peer = e2e.workspace, e2e.peers["sftp"]
    day = busiest_day(ws.records_db) - dt.timedelta(days=1)
    conn = peer.connection()
    other_key = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[:2])
    status, _ = e2e.stack.api("POST", "/connections", {
        "connection_id": "caldicott_sftp_wrong_key", "conn_type": "sftp", "host": conn["host"], "port": conn["port"],
        "login": conn["login"], "password": conn["password"],
        "extra": json.dumps({**conn["extra"], "host_key": other_key})})
    assert status in (200, 201)
    records = make_engine(sqlite_url(ws.records_db), readonly=True)
    contracts = build.active_contracts(records)
    sftp = contracts[contracts["transport"] == "sftp"]
    bad, good = sftp.iloc[0], sftp.iloc[1]
    db = sqlite3.connect(ws.records_db)
    try:
        with db:
            db.execute("UPDATE contract SET connection_id = 'caldicott_sftp_wrong_key' WHERE contract_id = ?",
                       (bad["contract_id"],))
        logical = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=10)
        run_id = e2e.stack.trigger(DAG_ID, logical, conf={"day": day.isoformat()},
                                   run_id=f"e2e__{DAG_ID}__badkey__{time.time_ns()}")
        assert e2e.stack.wait_run(DAG_ID, run_id, timeout=600) == "failed"
    finally:
        with db:
            db.execute("UPDATE contract SET connection_id = ? WHERE contract_id = ?",
                       (bad["connection_id"], bad["contract_id"]))
        db.close()
    _, data = e2e.stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    planned = e2e.stack.xcom(DAG_ID, run_id, "plan")        # map index i is planned[i]
    tis = {(t["task_id"], planned[t["map_index"]] if t["map_index"] >= 0 else None): t
           for t in data["task_instances"]}
    assert tis[("deliver", bad["contract_id"])]["state"] == "failed"
    assert tis[("deliver", bad["contract_id"])]["try_number"] == 1, "a changed host key must not be retried"
    assert tis[("deliver", good["contract_id"])]["state"] == "success"
    assert tis[("report", None)]["state"] == "failed"

    name = f"_sessions_{day.isoformat()}_csv-v1.csv"
    assert (peer.root / good["remote_path"].lstrip("/") / f"{good['contract_id']}{name}").exists()
    assert not (peer.root / bad["remote_path"].lstrip("/") / f"{bad['contract_id']}{name}").exists()
    state = make_engine(sqlite_url(ws.state_db))
    ledger = Ledger(state)
    from caldicott.transport.ledger import item_id

    entry = ledger.get(item_id("referrer_updates", bad["contract_id"], "sessions", day.isoformat()))
    assert entry.state == "failed"
    assert "host key CHANGED" in ledger_detail(state, entry.item_id)


def ledger_detail(engine, iid: str) -> str:
    from caldicott.transport.ledger import ledger
    from sqlalchemy import select

    with engine.connect() as conn:
        return conn.execute(select(ledger.c.detail).where(ledger.c.item_id == iid)).scalar_one()
