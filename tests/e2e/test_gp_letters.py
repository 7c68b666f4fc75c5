"""The gp_letters DAG through a real scheduler, with the real SMTP server, mesh-sandbox and print house.

Runs ranges of months (conf ``start``/``end``) so the 400-patient source yields enough letters and hits
the planted faults. Ranges are kept apart per test (letter ids do not depend on the run, so overlapping
runs would see each other's letters): June 2025 - July 2026 = consent, quarantine, acks and idempotent
re-run; August - September 2026 = crash mid-batch; October 2026 = no acknowledgement ⇒ alert.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.letters.build import find_events, load_letters
from caldicott.letters.flow import letter_id
from caldicott.state.quarantine import entries
from caldicott.transport.ledger import Ledger

from devtools.peers.gp_responder import GpResponder
from tests import faults

pytestmark = pytest.mark.e2e
DAG = "gp_letters"


def _run(e2e, conf: dict, logical: dt.datetime, timeout: float = 600) -> tuple[str, str]:
    run_id = e2e.stack.trigger(DAG, logical, conf=conf)
    return run_id, e2e.stack.wait_run(DAG, run_id, timeout=timeout)


def _delivered_smtp(e2e) -> list[str]:
    """Ledger ids of letters in the SMTP server's mailbox, one entry per delivery (duplicates kept)."""
    out = []
    for m in e2e.peers["smtp"].messages():
        mid = (m["Message-ID"] or "").strip("<>")
        if mid.startswith("gp_letters-"):
            out.append(mid.split("@")[0])
    return out


def _mesh_letter_id(msg) -> str:
    """The letter a MESH message carries: its file name (GP Connect Send Document: ``<letter id>.json``), or else
    its local id (the letter id, before GP Connect fixed the local id to the sender's ODS code)."""
    name = msg.filename or ""
    return name.rsplit(".", 1)[0] if name.startswith(f"{DAG}-") else msg.local_id


def _letters(e2e, start, end):
    records = make_engine(sqlite_url(e2e.workspace.records_db), readonly=True)
    return load_letters(records, find_events(records, start, end))


def test_letters_consent_quarantine_acks_and_idempotent_rerun(e2e):
    mesh = e2e.peers["mesh"]
    conf = {"start": "2025-06-01", "end": "2026-08-01", "ack_timeout_hours": 0, "ack_wait_seconds": 120}
    with mesh.client(mesh.GP_MAILBOX) as gp_box, GpResponder(gp_box, interval=0.5) as gp:
        run_id, state = _run(e2e, conf, dt.datetime(2026, 8, 1, 6, tzinfo=dt.UTC))
        assert state == "success", e2e.stack.task_states(DAG, run_id)
    # the wait for acks is a rescheduling sensor: it gave its slot back between looks, and then every ack was in
    assert e2e.stack.task_states(DAG, run_id)["await_acks"] == "success"
    report = e2e.stack.xcom(DAG, run_id, "report")
    acks = e2e.stack.xcom(DAG, run_id, "check_acks")
    assert report["sent"] > 0 and report["failed"] == 0

    letters = _letters(e2e, dt.date(2025, 6, 1), dt.date(2026, 8, 1))
    smtp_ids = _delivered_smtp(e2e)
    mesh_ids = [local_id for _, local_id, _ in gp.received]
    post_ids = [p.name.split(".")[0] for p in e2e.peers["print_house"].files()]
    delivered = smtp_ids + mesh_ids + post_ids
    assert len(delivered) == len(set(delivered)) == report["sent"]

    # consent declined: no GP letter, but the patient's copy
    declined = [lt for lt in letters if not lt.patient["gp_sharing_consent"] and not lt.problems]
    assert declined, "the synthetic month should hold a patient who declined GP sharing"
    for lt in declined:
        gp_id, pat_id = letter_id(lt.referral_id, lt.event, "gp"), letter_id(lt.referral_id, lt.event, "patient")
        assert gp_id in report["withheld_ids"] and gp_id not in delivered
        assert pat_id in delivered
    assert report["withheld"]["gp_sharing_declined"] == len(report["withheld_ids"])

    # quarantine and held, with reasons
    state_db = make_engine(sqlite_url(e2e.workspace.state_db))
    found = entries(state_db, DAG, report["run_key"])
    reasons = {q.reason_code for q in found}
    manifest = json.loads(e2e.workspace.manifest.read_text())["bad"]
    assert {"unknown_channel", "practice_certificate_missing"} <= reasons
    assert {q.record_id for q in found if q.reason_code == "unknown_channel"} == \
        set(manifest["practice_unknown_channel"])
    for lt in letters:
        pid = lt.patient["local_patient_id"]
        if pid in manifest["missing_gp_practice"]:
            assert any(q.record_id == pid and q.reason_code == "missing_gp_practice" for q in found)
        if pid in manifest["invalid_nhs_number"]:
            assert any(q.record_id == pid and q.reason_code == "invalid_nhs_number" for q in found)
            assert letter_id(lt.referral_id, lt.event, "patient") not in delivered
    ledger = Ledger(state_db)
    for held in report["held_ids"]:
        assert ledger.get(held).state == "held" and held not in delivered

    # acks: every MESH letter acknowledged (infrastructure + business), none overdue
    assert mesh_ids and acks["overdue"] == 0
    assert all(ledger.get(i).state == "acked" for i in mesh_ids)

    # nothing patient-identifying in XCom
    records = sqlite3.connect(e2e.workspace.records_db)
    names = {f for (f,) in records.execute("SELECT family_name FROM patient")}
    numbers = [n for (n,) in records.execute("SELECT nhs_number FROM patient") if n]
    blob = json.dumps([report, acks])
    assert not any(n in blob for n in numbers) and not any(f" {n}" in blob or f'"{n}' in blob for n in names)

    # re-run the same interval: nothing is sent twice
    run2, state2 = _run(e2e, conf, dt.datetime(2026, 8, 1, 7, tzinfo=dt.UTC))
    assert state2 == "success"
    again = e2e.stack.xcom(DAG, run2, "report")
    assert again["sent"] == 0 and again["already_sent"] == report["sent"]
    assert sorted(_delivered_smtp(e2e)) == sorted(smtp_ids)


def test_crash_mid_batch_then_rerun_sends_each_letter_exactly_once(e2e):
    """Every ``send_batch`` of a run crashes after two sends, then a re-run: each letter arrives exactly once.

    The crash comes from the test side (``tests/faults.py``: a ``sitecustomize`` on the e2e Airflow's PYTHONPATH
    wraps the gateway's sender in the named run's tasks); the DAG has no fault param, and the scheduler, executor
    and task processes are the real ones. The re-run must skip what the ledger records as sent and reconcile what
    the crash left ``sending``: a ledger that did not would send some letters twice, and the counts below fail.
    """
    mesh = e2e.peers["mesh"]
    control = Path(e2e.stack.env[faults.CONTROL_ENV])
    before = set(_delivered_smtp(e2e))
    conf = {"start": "2026-08-01", "end": "2026-10-01", "ack_timeout_hours": 48}
    run1 = f"crash_after_2_sends__{uuid.uuid4().hex[:8]}"
    faults.arm(control, dag_id=DAG, task_id="send_batch", run_id=run1, after_sends=2)
    try:
        e2e.stack.trigger(DAG, dt.datetime(2026, 10, 1, 6, tzinfo=dt.UTC), conf=conf, run_id=run1)
        state1 = e2e.stack.wait_run(DAG, run1, timeout=600)
    finally:
        faults.disarm(control)
    assert state1 == "failed"
    crashed = faults.fired(control)
    assert crashed and {(c["run_id"], c["try_number"]) for c in crashed} == {(run1, "1")}, crashed
    status, data = e2e.stack.api("GET", f"/dags/{DAG}/dagRuns/{run1}/taskInstances?limit=100")
    sends = [t for t in data.get("task_instances", []) if t["task_id"] == "send_batch"]
    # each crashed task failed at once (no retry), and nothing else failed. A task process can log more than one
    # fault (concurrent MESH sends past the limit each raise; a batch may release on two channels): one per pid
    crashed_tasks = {c["pid"] for c in crashed}
    assert status == 200 and sum(t["state"] == "failed" for t in sends) == len(crashed_tasks), (sends, crashed)
    partial = [i for i in _delivered_smtp(e2e) if i not in before]
    assert len(partial) >= 2 * sum(c["channel"] == "smtp" for c in crashed) > 0
    run2, state2 = _run(e2e, conf, dt.datetime(2026, 10, 1, 7, tzinfo=dt.UTC))
    assert state2 == "success", e2e.stack.task_states(DAG, run2)
    report = e2e.stack.xcom(DAG, run2, "report")
    smtp_new = [i for i in _delivered_smtp(e2e) if i not in before]
    assert len(smtp_new) == len(set(smtp_new)) and len(partial) < len(smtp_new)
    local_ids = []
    with mesh.client(mesh.GP_MAILBOX) as gp:
        for mid in gp.list_messages():
            msg = gp.retrieve_message(mid)
            local_ids.append(_mesh_letter_id(msg))
            msg.close()
            gp.acknowledge_message(mid)
    assert len(local_ids) == len(set(local_ids))
    post_new = [p for p in e2e.peers["print_house"].files() if p.parent.name.startswith("2026-08-01..")]
    planned_total = sum(v for k, v in report["planned"].items() if k.endswith("_planned"))
    assert len(smtp_new) + len(local_ids) + len(post_new) == planned_total
    # a patient with no registered practice: GP letter quarantined, patient copy still sent
    manifest = json.loads(e2e.workspace.manifest.read_text())["bad"]
    found = entries(make_engine(sqlite_url(e2e.workspace.state_db)), DAG, report["run_key"])
    no_gp = [lt for lt in _letters(e2e, dt.date(2026, 8, 1), dt.date(2026, 10, 1))
             if lt.patient["local_patient_id"] in manifest["missing_gp_practice"]]
    for lt in no_gp:
        assert any(q.record_id == lt.patient["local_patient_id"] and q.reason_code == "missing_gp_practice"
                   for q in found)


def test_missing_acknowledgement_raises_an_alert(e2e):
    conf = {"start": "2026-10-01", "end": "2026-11-01", "ack_timeout_hours": 0, "ack_wait_seconds": 0}
    run_id, state = _run(e2e, conf, dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC))
    assert state == "failed"
    states = e2e.stack.task_states(DAG, run_id)
    assert states["check_acks"] == "failed" and states["report"] == "success"
    assert states["await_acks"] == "success"          # ack_wait_seconds 0: it looked once and let check_acks run
    # overdue letters of THIS run (the flow-wide count would also hold the earlier runs' unacknowledged letters)
    report = e2e.stack.xcom(DAG, run_id, "report")
    ledger = Ledger(make_engine(sqlite_url(e2e.workspace.state_db)))
    assert ledger.counts(DAG, report["run_key"]).get("ack_overdue", 0) > 0


def test_a_mesh_non_delivery_report_raises_an_alert_and_the_letter_is_not_resent(e2e):
    """After the October run above: MESH reports one of its letters undelivered (never collected)."""
    from caldicott.letters.gp_connect import WORKFLOW
    from caldicott.transport.ledger import State, ledger
    from sqlalchemy import select

    state_db = make_engine(sqlite_url(e2e.workspace.state_db))
    with state_db.connect() as conn:
        item, ref = conn.execute(select(ledger.c.item_id, ledger.c.transport_ref).where(
            ledger.c.flow == DAG, ledger.c.state == State.ACK_OVERDUE.value).order_by(ledger.c.item_id)).first()
    mesh = e2e.peers["mesh"]
    mesh.non_delivery_report(ref, item, WORKFLOW)
    with mesh.client(mesh.GP_MAILBOX) as gp:
        before = len(gp.list_messages())
    conf = {"start": "2026-10-01", "end": "2026-11-01", "ack_timeout_hours": 24, "ack_wait_seconds": 0}
    run_id, run_state = _run(e2e, conf, dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC))
    assert run_state == "failed"
    assert e2e.stack.task_states(DAG, run_id)["check_acks"] == "failed"
    assert Ledger(state_db).entries([item])[item].state == State.UNDELIVERABLE
    with mesh.client(mesh.GP_MAILBOX) as gp:
        assert len(gp.list_messages()) == before        # the re-run resent nothing, the undelivered letter included


def test_a_malformed_run_setting_is_refused_before_the_run_exists(e2e):
    """The settings are declared Params: the REST API (like the trigger form) refuses a bad date with a 400 and no
    run is created, instead of a task failing deep in the run."""
    e2e.stack.wait_dag(DAG)
    for conf in ({"day": "2026-02-30"}, {"start": "1 June 2025", "end": "2026-08-01"}, {"ack_wait_seconds": 86400}):
        status, body = e2e.stack.api("POST", f"/dags/{DAG}/dagRuns", {
            "logical_date": dt.datetime(2026, 2, 28, 6, tzinfo=dt.UTC).isoformat(), "conf": conf,
            "dag_run_id": f"bad_param__{uuid.uuid4().hex[:8]}"})
        assert status == 400, (conf, status, body)
        assert "Invalid input for param" in json.dumps(body), body


def test_a_range_given_by_halves_fails_the_first_task_by_name_without_retry(e2e):
    """That start and end come together and in order is no single Param's schema: plan_letters checks it, and a
    person's mistake is not retried."""
    run_id, state = _run(e2e, {"start": "2026-10-01"}, dt.datetime(2026, 11, 2, 6, tzinfo=dt.UTC), timeout=300)
    assert state == "failed"
    status, data = e2e.stack.api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/plan_letters")
    assert status == 200 and data["state"] == "failed" and data["try_number"] == 1, data


def test_a_successful_records_check_starts_the_days_letters(e2e):
    """records_quality's success is an Asset event; gp_letters runs on it (no logical date, no data interval) for
    the London day before it was queued, which is the day its 06:00 clock run covers.

    This Airflow's scheduler normally creates no runs itself (``use_job_schedule`` off, devtools/airflow_env.py: the
    tests trigger their own), and that switch also stops it creating Asset-triggered runs: the event is queued and
    waits. So the event is first seen queued for gp_letters, then the scheduler is restarted with run creation on
    (every other DAG paused meanwhile) until the Asset-triggered run is done, and restored."""
    import pendulum

    before = {r["dag_run_id"] for r in _asset_runs(e2e)}
    rq = e2e.stack.trigger("records_quality", dt.datetime(2026, 11, 3, tzinfo=dt.UTC))
    assert e2e.stack.wait_run("records_quality", rq, timeout=600) == "success"
    # the task's outlet produced the event, queued for gp_letters
    status, assets = e2e.stack.api("GET", "/assets?uri_pattern=records_quality/checked")
    asset_ids = {a["id"] for a in assets.get("assets", []) if a["uri"] == "caldicott://records_quality/checked"}
    status, queued = e2e.stack.api("GET", f"/dags/{DAG}/assets/queuedEvents")
    assert status == 200 and asset_ids & {q["asset_id"] for q in queued.get("queued_events", [])}, queued
    with _scheduler_creating_runs(e2e, keep=DAG):
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        new: list[dict] = []
        while not new and dt.datetime.now(dt.UTC) < deadline:
            new = [r for r in _asset_runs(e2e) if r["dag_run_id"] not in before]
            if not new:
                time.sleep(3)
        assert new, "no Asset-triggered gp_letters run after records_quality succeeded"
        run = new[0]
        assert run["logical_date"] is None and run["run_type"] == "asset_triggered"
        e2e.stack.wait_run(DAG, run["dag_run_id"], timeout=600)
        _wait_no_active_runs(e2e, DAG)   # the clock's run for today, created with it, also done (it sends nothing)
    states = e2e.stack.task_states(DAG, run["dag_run_id"])
    # (check_acks may fail: it alerts flow-wide, and the October letters above are still overdue / undeliverable)
    assert states["plan_letters"] == states["report"] == "success", states
    queued_day = pendulum.parse(run["run_after"]).in_timezone("Europe/London").date()
    report = e2e.stack.xcom(DAG, run["dag_run_id"], "report")
    assert report["run_key"] == (queued_day - dt.timedelta(days=1)).isoformat()
    assert report["sent"] == 0   # the synthetic source ends in October 2026: nothing new for yesterday


def _wait_no_active_runs(e2e, dag_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, data = e2e.stack.api("GET", f"/dags/{dag_id}/dagRuns?state=queued&state=running&limit=100")
        if status == 200 and not data.get("dag_runs"):
            return
        time.sleep(3)
    raise TimeoutError(f"{dag_id} still has active runs after {timeout}s")


def _restart_scheduler(e2e, env: dict[str, str]) -> None:
    """Stop the stack's scheduler and start it again with ``env`` (its other components keep running)."""
    import subprocess

    from devtools.paths import venv_bin
    from devtools.stack import COMPONENTS, stop_process_groups

    stack = e2e.stack
    stop_process_groups([stack.procs.pop("scheduler")], grace=30)
    out = open(stack.home / "stack-logs" / "scheduler.log", "ab")  # noqa: SIM115 - closed with the process
    stack.procs["scheduler"] = subprocess.Popen([venv_bin("airflow"), *COMPONENTS["scheduler"]], env=env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(5)
    stack.wait_ready(180)


@contextlib.contextmanager
def _scheduler_creating_runs(e2e, keep: str):
    """For the block: every DAG but ``keep`` paused and the scheduler creating runs (scheduled and Asset-triggered);
    afterwards the scheduler as the fixture started it and the paused DAGs unpaused again."""
    stack = e2e.stack
    status, data = stack.api("GET", "/dags?limit=100&paused=false")
    assert status == 200, data
    paused = [d["dag_id"] for d in data["dags"] if d["dag_id"] != keep]
    for dag_id in paused:
        stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": True})
    _restart_scheduler(e2e, {**stack.env, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"})
    try:
        yield
    finally:
        _restart_scheduler(e2e, stack.env)
        for dag_id in paused:
            stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})


def _asset_runs(e2e) -> list[dict]:
    status, data = e2e.stack.api("GET", f"/dags/{DAG}/dagRuns?run_type=asset_triggered&limit=100")
    assert status == 200, data
    return [r for r in data.get("dag_runs", []) if r.get("run_type") == "asset_triggered"]
