"""The monthly_dataset DAG through a real scheduler: built, validated, NDOP checked over the real
mesh-sandbox (a test-double responder plays NHS England's opt-out service), staged, and confirmed by the
named submitter entering the SDCS reference through the REST API (HITL)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from caldicott.dataset import rules, state_tables
from caldicott.dataset.builder import Period, build, read_source
from caldicott.dataset.writer import decrypt, load_key, read_archive
from caldicott.db import make_engine, sqlite_url

from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

pytestmark = pytest.mark.e2e

DAG_ID = "monthly_dataset"
HITL_TASK = "confirm_submission"


def test_monthly_dataset_end_to_end(e2e):
    stack, ws = e2e.stack, e2e.workspace
    period = Period.month(2026, 9)
    records = make_engine(sqlite_url(ws.records_db), readonly=True)
    expected = build(read_source(records, period), period)
    rules.screen(expected)
    ndop_patient = expected.tables["IDS001MPI"].iloc[0]
    opted_out = str(ndop_patient["NHSNumber"])

    mesh = e2e.peers["mesh"]
    with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=[opted_out]) as responder:
        run_id = stack.trigger(DAG_ID, dt.datetime(2026, 10, 1, 5, tzinfo=dt.UTC), {"month": "2026-09"})
        stack.wait_task_state(DAG_ID, run_id, HITL_TASK, "awaiting_input")
        # the submitter's view names the month, never a patient
        status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{HITL_TASK}/-1/hitlDetails")
        assert status == 200 and "2026-09" in detail["subject"]
        status, body = stack.answer(DAG_ID, run_id, HITL_TASK, "Uploaded", {"submission_reference": "SDCS-E2E-0001"})
        assert status == 200, body
        assert stack.wait_run(DAG_ID, run_id, timeout=600) == "success", stack.task_states(DAG_ID, run_id)
    assert responder.requests and responder.requests[0] == len(expected.tables["IDS001MPI"])

    state = make_engine(sqlite_url(ws.state_db))
    row = state_tables.get(state, "2026-09")
    assert row["state"] == "submitted" and row["submission_reference"] == "SDCS-E2E-0001"
    key = load_key(e2e.peers["monthly_dataset"].key)
    tables = read_archive(Path(row["archive_path"]), key)
    assert {k: len(v) for k, v in tables.items() if k != "manifest"} == expected.counts()
    # the NDOP patient is IN the mandated submission ...
    assert opted_out in set(tables["IDS001MPI"]["NHSNumber"])
    month_dir = Path(row["archive_path"]).parent
    extract = pd.read_csv(io.BytesIO(decrypt((month_dir / "commissioner_extract_2026-09.csv.enc").read_bytes(), key)))
    # ... and NOT in the commissioner extract
    theirs = set(expected.tables["IDS101Referral"].query("LocalPatientId == @ndop_patient.LocalPatientId")
                 ["ServiceRequestId"])
    assert theirs and not theirs & set(extract["ServiceRequestId"])
    assert len(extract) == len(expected.tables["IDS101Referral"]) - len(theirs)
    stmt = json.loads((month_dir / "optout_statement.json").read_text())
    by_rule = {r["rule"]: r["counts"] for r in stmt["rules"]}
    assert by_rule["ndop_not_applied_required_by_law"]["ndop_patients_kept_in_submission"] == 1
    assert by_rule["ndop_applied"]["removed_ndop"] == len(theirs)
    assert "MESH" in stmt["ndop_check"]
    staged = list((Path(ws.outputs) / "staging" / "2026-09").glob("*.zip.enc"))
    assert len(staged) == 1 and decrypt(staged[0].read_bytes(), key)[:2] == b"PK"
    # XCom carries counts only
    xcom = json.dumps(stack.xcom(DAG_ID, run_id, "build_validate_write"))
    assert opted_out not in xcom
    # the NDOP request left through the release gateway (ledgered, answered) and never waited on disk in clear
    from caldicott.transport.ledger import Ledger

    assert Ledger(state).counts("ndop_check", run_key="monthly_dataset-2026-09") == {"acked": 1}
    assert not [p for p in Path(ws.outputs).rglob("*.dat")]
