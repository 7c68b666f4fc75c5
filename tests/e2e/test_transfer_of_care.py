"""The transfer_of_care DAG through a real scheduler, with mesh-sandbox, the SMTP server and the SFTP server.

Until the synthetic generator fills ``onward_referral``, the test plants its own rows (tests/unit/transfers/source.py)
in the session's records source: receivers on MESH, S/MIME e-mail and SFTP (Ireland), one with no channel and one in
the United States. Day 2026-10-14 (no other e2e test runs this DAG)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.transfers.flow import report_id
from caldicott.transport.ledger import Ledger

from devtools.peers.mesh import REFERRER_MAILBOX
from tests.unit.transfers import source

pytestmark = pytest.mark.e2e
DAG = "transfer_of_care"


def _run(e2e, conf: dict, logical: dt.datetime) -> tuple[str, str]:
    run_id = e2e.stack.trigger(DAG, logical, conf=conf)
    return run_id, e2e.stack.wait_run(DAG, run_id, timeout=600)


def _ours(mesh) -> list[str]:
    """Local ids of transfer reports in the receiver's MESH mailbox (only ours acknowledged)."""
    out = []
    with mesh.client(REFERRER_MAILBOX) as box:
        for i in box.list_messages():
            msg = box.retrieve_message(i)
            local = msg.local_id or ""
            msg.close()
            if local.startswith(f"{DAG}-"):
                out.append(local)
                box.acknowledge_message(i)
    return out


def test_reports_go_to_receivers_held_and_refused_ones_say_why_and_a_rerun_sends_nothing(e2e):
    records = make_engine(sqlite_url(e2e.workspace.records_db))
    planted = source.plant(records, mesh_mailbox=REFERRER_MAILBOX)
    rid = {org: report_id(oid, "receiver") for oid, org in planted.onward.items()}
    conf = {"day": source.DAY.isoformat()}
    run_id, state = _run(e2e, conf, dt.datetime(2026, 10, 15, 6, 30, tzinfo=dt.UTC))
    assert state == "success", e2e.stack.task_states(DAG, run_id)
    report = e2e.stack.xcom(DAG, run_id, "report")
    assert report["failed"] == 0 and report["sent"] >= 3

    # each receiver on its own channel
    assert _ours(e2e.peers["mesh"]) == [rid["ZTMSH1"]]
    raw = e2e.peers["smtp"].raw()
    assert sum(b"transfers@receiver.nhs.example" in m.split(b"\r\n\r\n", 1)[0] for m in raw) == 1
    sftp_files = [p.name for p in (e2e.peers["sftp"].root / "transfers").iterdir()]
    assert sftp_files == [f"{rid['ZTSFT1']}.pdf.p7m"]

    # no channel: held with its reason; outside the adequacy list: refused by the gateway with its rule
    assert rid["ZTNON1"] in report["held_ids"] and report["held_by_reason"].get("receiver_no_channel") == 1
    assert "US not on the adequacy list" in report["refused_reasons"][rid["ZTUSA1"]]
    ledger = Ledger(make_engine(sqlite_url(e2e.workspace.state_db)))
    assert ledger.get(rid["ZTUSA1"]).state == "held" and ledger.get(rid["ZTNON1"]).state == "held"

    # nothing patient-identifying in XCom
    db = sqlite3.connect(e2e.workspace.records_db)
    numbers = [n for (n,) in db.execute("SELECT nhs_number FROM patient") if n]
    names = {f for (f,) in db.execute("SELECT family_name FROM patient")}
    blob = json.dumps(report)
    assert not any(n in blob for n in numbers) and not any(f'"{n}' in blob or f" {n}" in blob for n in names)

    # re-run the day: nothing sent twice
    run2, state2 = _run(e2e, conf, dt.datetime(2026, 10, 15, 7, 30, tzinfo=dt.UTC))
    assert state2 == "success"
    again = e2e.stack.xcom(DAG, run2, "report")
    assert again["sent"] == 0 and again["already_sent"] == report["sent"]
    assert _ours(e2e.peers["mesh"]) == [] and len(e2e.peers["smtp"].raw()) == len(raw)
