"""The monthly_dataset DAG through a real scheduler: the window that takes September 2026 builds two submissions,
September's primary and August's refresh, each built, validated, staged and confirmed by the named submitter
entering its own SDCS reference through the REST API (HITL); the NDOP check goes over the real mesh-sandbox (a
test-double responder plays NHS England's opt-out service) and both reports carry the real opt-out figures. The
run's deadline is computed from the calendar (the close of its own window, less the lead). A second run of the same
window asks nobody: both submissions are reported with their references, and nothing recorded changes."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from caldicott.dataset import builder, rules, state_tables
from caldicott.dataset.builder import Period, read_source
from caldicott.dataset.calendar import load
from caldicott.dataset.writer import decrypt, load_key, read_archive
from caldicott.db import make_engine, sqlite_url
from sqlalchemy import text

from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder


def build(*args, **kw):
    """The builder with the test provider's ODS code (OrgIDProv has no default)."""
    return builder.build(*args, **{"org_provider": "ZZZ01", **kw})

pytestmark = pytest.mark.e2e

DAG_ID = "monthly_dataset"
LOGICAL = dt.datetime(2026, 10, 1, 5, tzinfo=dt.UTC)
REFS = {"primary": "SDCS-E2E-0001", "refresh": "SDCS-E2E-0001R"}
SUBMISSIONS = {"primary": "2026-09", "refresh": "2026-08"}


def _expected(records, key: str):
    period = Period.month(*(int(x) for x in key.split("-")))
    ds = build(read_source(records, period), period)
    rules.screen(ds)
    return ds


def _deadline(stack, run_id: str):
    meta = make_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with meta.connect() as conn:
        row = conn.execute(text("SELECT d.deadline_time FROM deadline d JOIN dag_run r ON r.id = d.dagrun_id "
                                "WHERE r.dag_id = :d AND r.run_id = :r"), {"d": DAG_ID, "r": run_id}).first()
    meta.dispose()
    if row is None:
        return None
    at = pd.Timestamp(row[0])
    return at.tz_localize("UTC") if at.tz is None else at.tz_convert("UTC")


def test_monthly_dataset_end_to_end(e2e):
    stack, ws = e2e.stack, e2e.workspace
    records = make_engine(sqlite_url(ws.records_db), readonly=True)
    expected = {kind: _expected(records, key) for kind, key in SUBMISSIONS.items()}
    ndop_patient = expected["primary"].tables["IDS001MPI"].iloc[0]
    opted_out = str(ndop_patient["NHSNumber"])

    mesh = e2e.peers["mesh"]
    with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=[opted_out]) as responder:
        run_id = stack.trigger(DAG_ID, LOGICAL, {"month": "2026-09", "provider_name": "E2E Talking Therapies"})
        for kind, key in SUBMISSIONS.items():
            task = f"{kind}.confirm_submission"
            stack.wait_task_state(DAG_ID, run_id, task, "awaiting_input")
            # the submitter's view names the month and the kind, never a patient
            status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/-1/hitlDetails")
            assert status == 200 and key in detail["subject"] and f"({kind} submission)" in detail["subject"]
            if kind == "primary":   # the deadline: the close of this run's window (calendar), less the 72 h lead
                window = load(path=e2e.peers["monthly_dataset"].calendar_file).window("2026-09")
                assert _deadline(stack, run_id) == pd.Timestamp(window.closes_at - dt.timedelta(hours=72))
            status, body = stack.answer(DAG_ID, run_id, task, "Uploaded", {"submission_reference": REFS[kind]})
            assert status == 200, body
        assert stack.wait_run(DAG_ID, run_id, timeout=600) == "success", stack.task_states(DAG_ID, run_id)
    assert responder.requests                                    # one check for the MPIs of both submissions

    state = make_engine(sqlite_url(ws.state_db))
    key = load_key(e2e.peers["monthly_dataset"].key)
    rows = {kind: state_tables.get(state, p, kind) for kind, p in SUBMISSIONS.items()}
    for kind, row in rows.items():
        assert row["state"] == "submitted" and row["submission_reference"] == REFS[kind], kind
        tables = read_archive(Path(row["archive_path"]), key)
        assert {k: len(v) for k, v in tables.items() if k != "manifest"} == expected[kind].counts(), kind
        report = (Path(row["archive_path"]).parent / "report.html").read_text()
        assert "E2E Talking Therapies (ZZZ01)" in report and "pending" not in report, kind
    assert rows["primary"]["archive_path"] != rows["refresh"]["archive_path"]
    # the NDOP patient is IN the mandated submission ...
    primary = read_archive(Path(rows["primary"]["archive_path"]), key)
    assert opted_out in set(primary["IDS001MPI"]["NHSNumber"])
    month_dir = Path(rows["primary"]["archive_path"]).parent
    extract = pd.read_csv(io.BytesIO(decrypt((month_dir / "commissioner_extract_2026-09.csv.enc").read_bytes(), key)))
    # ... and NOT in the commissioner extract
    theirs = set(expected["primary"].tables["IDS101Referral"].query("LocalPatientId == @ndop_patient.LocalPatientId")
                 ["ServiceRequestId"])
    assert theirs and not theirs & set(extract["ServiceRequestId"])
    stmt = json.loads((month_dir / "optout_statement.json").read_text())
    by_rule = {r["rule"]: r["counts"] for r in stmt["rules"]}
    assert by_rule["ndop_not_applied_required_by_law"]["ndop_patients_kept_in_submission"] == 1
    assert by_rule["ndop_applied"]["removed_ndop"] == len(theirs)
    assert "MESH" in stmt["ndop_check"]
    staging = Path(ws.outputs) / "staging"
    staged = sorted(str(p.relative_to(staging)) for p in staging.glob("2026-0[89]/*.zip.enc"))
    assert staged == ["2026-08/iapt_2026-08_v2.1_refresh.zip.enc", "2026-09/iapt_2026-09_v2.1.zip.enc"]
    # XCom carries counts only
    xcom = json.dumps([stack.xcom(DAG_ID, run_id, f"{k}.build_validate_write") for k in SUBMISSIONS])
    assert opted_out not in xcom
    from caldicott.transport.ledger import Ledger

    assert Ledger(state).counts("ndop_check", run_key="monthly_dataset-2026-09") == {"acked": 1}
    assert not [p for p in Path(ws.outputs).rglob("*.dat")]

    # ---- the same window again: nobody is asked, nothing recorded changes, the run says what went -------------
    rerun = stack.rerun(DAG_ID, LOGICAL)
    with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=[opted_out]):
        assert stack.wait_run(DAG_ID, rerun, timeout=600) == "success", stack.task_states(DAG_ID, rerun)
    states = stack.task_states(DAG_ID, rerun)
    for kind, period in SUBMISSIONS.items():
        assert states[f"{kind}.confirm_submission"] == "skipped", states
        staged_again = stack.xcom(DAG_ID, rerun, f"{kind}.stage_submission")
        assert (staged_again["sent"], staged_again["already_sent"], staged_again["confirmed"],
                staged_again["submission_reference"]) == (0, 1, True, REFS[kind])
        recorded = stack.xcom(DAG_ID, rerun, f"{kind}.record_submission")
        assert recorded["already_confirmed"] and recorded["reference"] == REFS[kind]
        after = state_tables.get(state, period, kind)
        assert (after["submitted_at"], after["submission_reference"]) == (rows[kind]["submitted_at"], REFS[kind])
