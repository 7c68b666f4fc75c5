"""The referrer_updates DAG through a real scheduler, delivering to the real SFTP peer.

One mapped task per contract; SFTP contracts' files arrive (sessions for the day, activity for the
month), with exactly the rows the domain computes and without summary text where the contract has
none; the MESH contract's files reach its mailbox on the mesh-sandbox; a re-run delivers nothing twice;
XCom carries no patient data. The synthetic source's ``fhir-r4-v1`` contract (CT002: SFTP, no summaries)
gets a FHIR Bundle of its referrer's sessions of the day and no summary in any form, also on a day whose
sessions have summary text in the records; an SFTP contract with summaries, switched to ``fhir-r4-v1`` for
one run, gets them as DocumentReferences.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.records.synth import SUMMARIES
from caldicott.transport.ledger import Ledger
from caldicott.updates import build, fhir

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


def _sessions_name(contract: dict, day: dt.date) -> str:
    """The session file's name as docs/referrer_updates.md publishes it (written out, not taken from the code)."""
    fmt = contract["file_format"]
    return f"{contract['contract_id']}_sessions_{day.isoformat()}_{fmt}{'.json' if fmt == 'fhir-r4-v1' else '.csv'}"


def _no_summaries(data: bytes) -> None:
    """No clinical summary in any form: not as text, not base64 (a FHIR attachment), no field or resource for it."""
    assert b"clinical_summary" not in data and b"DocumentReference" not in data
    for text in SUMMARIES:
        assert text.encode() not in data and base64.b64encode(text.encode()) not in data


def _check_bundle(data: bytes, contract: dict, day: dt.date, expected: pd.DataFrame, records_db: Path) -> list[str]:
    """A fhir-r4-v1 file: a Bundle whose Encounters are exactly the screened sessions of the contract's referrer on
    ``day`` (checked against the records themselves too: referrer, patient, London day); summaries as the
    contract says. Returns the Encounters' care contact ids."""
    bundle = json.loads(data)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["meta"]["tag"] == [{"system": fhir.systems().format_tag, "code": "fhir-r4-v1"}]
    assert {e["resource"]["resourceType"] for e in bundle.get("entry", [])} <= {
        "ServiceRequest", "Encounter", "DocumentReference"}
    encounters = fhir.resources(bundle, "Encounter")
    got = [e["identifier"][0]["value"] for e in encounters]
    assert got == expected["care_contact_id"].tolist()
    assert [e["subject"]["identifier"]["value"] for e in encounters] == expected["nhs_number"].tolist()
    db = sqlite3.connect(records_db)
    try:
        for enc, cid in zip(encounters, got, strict=True):
            referrer, nhs, at = db.execute(
                "SELECT r.referrer_org_code, p.nhs_number, c.contact_at FROM care_contact c "
                "JOIN referral r USING (service_request_id) JOIN patient p USING (local_patient_id) "
                "WHERE c.care_contact_id = ?", (cid,)).fetchone()
            assert referrer == contract["referrer_org_code"]
            assert enc["subject"]["identifier"]["value"] == nhs
            london = pd.Timestamp(at).tz_localize("UTC").tz_convert("Europe/London")
            assert london.date() == day and dt.datetime.fromisoformat(enc["period"]["start"]) == london
    finally:
        db.close()
    requests = fhir.resources(bundle, "ServiceRequest")
    assert {r["requester"]["identifier"]["value"] for r in requests} <= {contract["referrer_org_code"]}
    assert sorted(r["identifier"][0]["value"] for r in requests) == sorted(set(expected["service_request_id"]))
    notes = fhir.resources(bundle, "DocumentReference")
    if contract["include_summaries"]:
        assert [fhir.summary_text(d) for d in notes] == expected["clinical_summary"].dropna().tolist()
    else:
        assert notes == []
        _no_summaries(data)
    return got


def _expected(records, contract: dict, day: dt.date, orgs) -> pd.DataFrame:
    return build.screen(build.load_sessions(records, *build.london_bounds(day, day + dt.timedelta(days=1)),
                                            contract["referrer_org_code"]), orgs)[0]


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
    total_rows, fhir_rows = 0, {}
    for c in sftp.to_dict("records"):
        folder = peer.root / c["remote_path"].lstrip("/")
        names = sorted(p.name for p in folder.iterdir())
        cid = c["contract_id"]
        assert names == sorted([f"{cid}_activity_2026-10_csv-v1.csv", _sessions_name(c, day)])
        for p in folder.iterdir():
            assert p.stat().st_mode & 0o777 == 0o640
            if not c["include_summaries"]:
                _no_summaries(p.read_bytes())
        data = (folder / _sessions_name(c, day)).read_bytes()
        expected = _expected(records, c, day, orgs)
        if c["file_format"] == "fhir-r4-v1":
            got = _check_bundle(data, c, day, expected, ws.records_db)
            fhir_rows[cid] = len(got)
        else:
            got = [r["care_contact_id"] for r in csv.DictReader(io.StringIO(data.decode("utf-8")))]
            assert got == expected["care_contact_id"].tolist()
        total_rows += len(got)
    assert total_rows > 0, "the chosen day should have sessions for the SFTP contracts"
    # the synthetic source's FHIR contract (CT002: SFTP, no summaries) got its Bundle; on the e2e source's busiest
    # day its referrer has no session (an empty Bundle, checked above), so the next test picks days that have some
    assert fhir_rows, "the synthetic source should have an SFTP fhir-r4-v1 contract"
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


def _summary_day(records, referrer: str, orgs, taken: set[dt.date]) -> dt.date:
    """The latest London day (not the last of a month: no activity file) on which ``referrer`` had a session
    with a clinical summary that passes screening, other than the days the other tests use."""
    sessions = build.screen(build.load_sessions(records, *build.london_bounds(dt.date(2020, 1, 1),
                                                                             dt.date(2026, 11, 1)), referrer),
                            orgs)[0]
    sessions = sessions[sessions["clinical_summary"].notna()]
    days = pd.to_datetime(sessions["contact_at"]).dt.tz_localize("UTC").dt.tz_convert("Europe/London").dt.date
    return max(d for d in set(days) if d not in taken and (d + dt.timedelta(days=1)).day != 1)


def test_fhir_contracts_over_sftp_with_and_without_summaries(e2e):
    """Two runs on days the FHIR contracts have sessions (the busiest day may have none for them):
    1. the source's fhir-r4-v1 contract without summaries (CT002), on a day its referrer's sessions have summary
       text in the records: a .json Bundle of exactly those sessions as Encounters, and the text in no form;
    2. an SFTP contract with summaries switched to fhir-r4-v1 for one run: each summary arrives as a
       DocumentReference of its own session's Encounter, and no CSV session file is written for it."""
    ws, peer = e2e.workspace, e2e.peers["sftp"]
    records = make_engine(sqlite_url(ws.records_db), readonly=True)
    contracts = build.active_contracts(records)
    sftp = contracts[contracts["transport"] == "sftp"]
    summarised = sftp["include_summaries"].astype(bool)
    orgs = build.known_organisations(records)
    busiest = busiest_day(ws.records_db)
    taken = {busiest, busiest - dt.timedelta(days=1)}      # the days the other tests of this module run

    # 1. the generated FHIR contract without summaries, on a day its sessions have summaries in the source
    plain = sftp[(sftp["file_format"] == "fhir-r4-v1") & ~summarised]
    assert len(plain), "the synthetic source should have an SFTP fhir-r4-v1 contract without summaries"
    plain = plain.iloc[0].to_dict()
    day = _summary_day(records, plain["referrer_org_code"], orgs, taken)
    taken.add(day)
    run_id = _trigger(e2e, day, nth=2)
    assert e2e.stack.xcom(DAG_ID, run_id, "report")["not_delivered"] == []
    folder = peer.root / plain["remote_path"].lstrip("/")
    assert sorted(p.name for p in folder.iterdir() if day.isoformat() in p.name) == [
        f"{plain['contract_id']}_sessions_{day.isoformat()}_fhir-r4-v1.json"]
    data = (folder / _sessions_name(plain, day)).read_bytes()
    expected = _expected(records, plain, day, orgs)
    assert expected["clinical_summary"].notna().any(), "the records should hold summary text for this day"
    assert len(_check_bundle(data, plain, day, expected, ws.records_db)) > 0

    # 2. an SFTP contract with summaries, switched to fhir-r4-v1 for one run
    c = sftp[summarised & (sftp["file_format"] == "csv-v1")].iloc[0].to_dict()
    day = _summary_day(records, c["referrer_org_code"], orgs, taken)
    db = sqlite3.connect(ws.records_db)
    try:
        with db:
            db.execute("UPDATE contract SET file_format = 'fhir-r4-v1' WHERE contract_id = ?", (c["contract_id"],))
        run_id = _trigger(e2e, day, nth=3)
    finally:
        with db:
            db.execute("UPDATE contract SET file_format = ? WHERE contract_id = ?",
                       (c["file_format"], c["contract_id"]))
        db.close()
    assert e2e.stack.xcom(DAG_ID, run_id, "report")["not_delivered"] == []
    switched = {**c, "file_format": "fhir-r4-v1"}
    folder = peer.root / c["remote_path"].lstrip("/")
    assert sorted(p.name for p in folder.iterdir() if day.isoformat() in p.name) == [
        f"{c['contract_id']}_sessions_{day.isoformat()}_fhir-r4-v1.json"]
    data = (folder / _sessions_name(switched, day)).read_bytes()
    expected = _expected(records, c, day, orgs)
    got = _check_bundle(data, switched, day, expected, ws.records_db)
    bundle = json.loads(data)
    by_id = {e["id"]: e["identifier"][0]["value"] for e in fhir.resources(bundle, "Encounter")}
    summaries = expected.set_index("care_contact_id")["clinical_summary"]
    notes = fhir.resources(bundle, "DocumentReference")
    for d in notes:   # each summary is attached to its own session's Encounter
        cid = by_id[d["context"]["encounter"][0]["reference"].removeprefix("urn:uuid:")]
        assert fhir.summary_text(d) == summaries[cid]
    assert len(notes) == summaries.notna().sum() > 0 and len(got) > 0
    # the FHIR contract without summaries, in the same run: a Bundle of its own (possibly no) sessions, no summary
    _check_bundle((peer.root / plain["remote_path"].lstrip("/") / _sessions_name(plain, day)).read_bytes(), plain,
                  day, _expected(records, plain, day, orgs), ws.records_db)


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

    assert (peer.root / good["remote_path"].lstrip("/") / _sessions_name(good, day)).exists()
    assert not (peer.root / bad["remote_path"].lstrip("/") / _sessions_name(bad, day)).exists()
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
