"""The monthly_dataset DAG's other endings, through the real scheduler:

* the named submitter never answers: each submission's ``confirm_submission`` times out (``confirm_timeout_minutes``
  from the run's conf), fails without retrying and alerts on-call; nothing is recorded as submitted;
* an automatic route: the run's ``submission_route=sftp`` with the intermediary configured in the Airflow Variable
  ``caldicott_dataset_submission`` (set over the REST API, as an operator would): both archives (primary and
  refresh) land on the SFTP peer once, the human steps are skipped, and the remote paths are recorded as references;
* a missed window: with the calendar Variable ``caldicott_dataset_calendar`` saying the window closed, nothing is
  built or sent, the run fails, each submission's alert names its period and kind, and the deadline alert (computed
  from the same calendar) has fired.

``monthly_dataset`` has ``max_active_runs=1`` and ``catchup=True``, and the e2e stack unpauses DAGs at creation,
so the scheduler's own catch-up runs (which wait 25 days at the human step) would hold the only slot: each test
marks those failed (by hand: no alert) so that its own run can start.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from caldicott.dataset import state_tables
from caldicott.dataset.writer import load_key, read_archive
from caldicott.db import make_engine, sqlite_url
from caldicott.transport.ledger import Ledger

from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

pytestmark = pytest.mark.e2e

DAG_ID = "monthly_dataset"
VARIABLE = "caldicott_dataset_submission"
CALENDAR_VARIABLE = "caldicott_dataset_calendar"


@pytest.fixture(scope="module")
def ndop(e2e):
    """NHS England's opt-out service stand-in, so each run's NDOP branch finishes and the run can end."""
    with e2e.peers["mesh"].client(SERVICE_MAILBOX) as client, NdopResponder(client) as responder:
        yield responder


def _make_room(stack, run_id: str) -> str:
    """Other active runs of the DAG are marked failed until ``run_id`` leaves the queue."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if stack.run_state(DAG_ID, run_id) != "queued":
            return run_id
        for state in ("running", "queued"):
            status, data = stack.api("GET", f"/dags/{DAG_ID}/dagRuns?state={state}&limit=50")
            for other in data.get("dag_runs", []) if status == 200 else []:
                if other["dag_run_id"] != run_id:
                    stack.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{other['dag_run_id']}", {"state": "failed"})
        time.sleep(2)
    raise AssertionError(f"{run_id} never left the queue")


def _start_alone(stack, conf: dict, offset: int) -> tuple[str, dt.datetime]:
    """Trigger a manual run (logical date now + ``offset`` s) and make room for it."""
    logical = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=offset)
    return _make_room(stack, stack.trigger(DAG_ID, logical, conf)), logical


def _task_log(stack, run_id: str, task_id: str) -> str:
    status, ti = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
    assert status == 200, ti
    status, body = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
                                    f"{ti['try_number']}?full_content=true")
    assert status == 200, body
    return json.dumps(body)


def test_unanswered_confirmation_times_out_alerts_and_records_nothing(e2e, ndop):
    stack = e2e.stack
    run_id, _ = _start_alone(stack, {"month": "2026-08", "submission_route": "staged",
                                     "confirm_timeout_minutes": 0.5}, offset=0)
    assert stack.wait_run(DAG_ID, run_id, timeout=600) == "failed", stack.task_states(DAG_ID, run_id)
    states = stack.task_states(DAG_ID, run_id)
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    for kind, period in (("primary", "2026-08"), ("refresh", "2026-07")):
        assert states[f"{kind}.stage_submission"] == "success"
        assert states[f"{kind}.confirm_submission"] == "failed"
        assert states[f"{kind}.record_submission"] == "upstream_failed"
        task = f"{kind}.confirm_submission"
        _, ti = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}")
        assert ti["try_number"] == 1                              # failed for good: a retry would only ask again
        status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/-1/hitlDetails")
        assert status == 200 and detail["response_received"] is False and period in detail["subject"]
        log = _task_log(stack, run_id, task)
        assert "caldicott on-call alert" in log and "AirflowFailException" in log   # the on-call notifier fired
        row = state_tables.get(state, period, kind)
        assert row["state"] == "staged" and row["submission_reference"] is None and row["submitted_at"] is None
        assert Ledger(state).get(row["item_id"]).state == "sent"       # staged, never confirmed (not acked)


def test_sftp_route_sends_once_and_skips_the_human_step(e2e, ndop):
    stack, sftp = e2e.stack, e2e.peers["sftp"]
    config = {"route": "staged", "sftp_conn_id": "caldicott_sftp_referrer", "sftp_directory": "/intermediary/iapt",
              "recipient": "CSU-E2E"}
    status, body = stack.api("POST", "/variables", {"key": VARIABLE, "value": json.dumps(config)})
    assert status in (200, 201), body
    names = {"primary": "iapt_2026-07_v2.1.zip.enc", "refresh": "iapt_2026-06_v2.1_refresh.zip.enc"}
    try:
        run_id, logical = _start_alone(stack, {"month": "2026-07", "submission_route": "sftp"}, offset=5)
        assert stack.wait_run(DAG_ID, run_id, timeout=600) == "success", stack.task_states(DAG_ID, run_id)
        states = stack.task_states(DAG_ID, run_id)
        for kind in names:
            assert states[f"{kind}.confirm_submission"] == "skipped"
            assert states[f"{kind}.record_submission"] == "success"
        folder = sftp.root / "intermediary/iapt"
        stamps = {n: (folder / n).stat().st_mtime_ns for n in names.values()}

        # a re-run of the whole window sends nothing again
        rerun = _make_room(stack, stack.rerun(DAG_ID, logical))
        assert stack.wait_run(DAG_ID, rerun, timeout=600) == "success", stack.task_states(DAG_ID, rerun)
        for kind in names:
            staged = stack.xcom(DAG_ID, rerun, f"{kind}.stage_submission")
            assert (staged["sent"], staged["already_sent"], staged["route"]) == (0, 1, "sftp")
            assert staged["confirmed"] and staged["submission_reference"].endswith(names[kind])
    finally:
        stack.api("DELETE", f"/variables/{VARIABLE}")

    assert sorted(p.name for p in folder.iterdir()) == sorted(names.values())
    assert {n: (folder / n).stat().st_mtime_ns for n in names.values()} == stamps
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    key = load_key(e2e.peers["monthly_dataset"].key)
    for kind, period in (("primary", "2026-07"), ("refresh", "2026-06")):
        landed = folder / names[kind]
        row = state_tables.get(state, period, kind)
        assert row["state"] == "submitted" and row["submission_reference"] == f"/intermediary/iapt/{landed.name}"
        assert row["submitted_by"].startswith("automatic: sftp caldicott_sftp_referrer")
        received, written = read_archive(landed, key), read_archive(Path(row["archive_path"]), key)
        assert {k: len(v) for k, v in received.items() if k != "manifest"} == \
            {k: len(v) for k, v in written.items() if k != "manifest"}
        assert landed.read_bytes() == Path(row["archive_path"]).read_bytes()
    staging = Path(e2e.workspace.outputs) / "staging"
    assert not [n for n in names.values() if list(staging.rglob(n))]      # nothing staged for a person


CLOSED = ("window_opens\twindow_closes\trefresh_period\tprimary_period\n"
          "2026-05-01\t2026-05-27\t2026-03\t2026-04\n")


def test_a_missed_window_fails_alerts_and_names_period_and_kind(e2e, ndop):
    stack = e2e.stack
    status, body = stack.api("POST", "/variables", {"key": CALENDAR_VARIABLE, "value": CLOSED})
    assert status in (200, 201), body
    try:
        run_id, _ = _start_alone(stack, {"month": "2026-04"}, offset=10)
        assert stack.wait_run(DAG_ID, run_id, timeout=600) == "failed", stack.task_states(DAG_ID, run_id)
        states = stack.task_states(DAG_ID, run_id)
        deadline = _deadline_state(stack, run_id)
    finally:
        stack.api("DELETE", f"/variables/{CALENDAR_VARIABLE}")
    assert states["plan_submissions"] == "success"
    for kind, period in (("primary", "2026-04"), ("refresh", "2026-03")):
        assert states[f"{kind}.build_validate_write"] == "failed"
        assert states[f"{kind}.stage_submission"] == "upstream_failed"
        log = _task_log(stack, run_id, f"{kind}.build_validate_write")
        events = " ".join(str(e.get("event")) for e in json.loads(log)["content"])
        # the task fails with the whole message; the structured alert names period and kind (the generic failure
        # alert scrubs dates and numbers, so it could not)
        assert f"the {period} {kind} submission missed its window: the window closed on 2026-05-27" in log
        alert = json.loads(events.split("caldicott on-call alert: ", 1)[1].split("}", 1)[0] + "}")
        assert (alert["kind"], alert["period"], alert["submission"]) == ("submission_window_missed", period, kind)
    assert not list((Path(e2e.workspace.outputs) / "staging").glob("2026-0[34]/*"))   # nothing sent
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    assert state_tables.get(state, "2026-04") is None                                # nothing built
    # the deadline alert (the end of 27 May, BST, less the 72 h lead: long past) has fired
    assert deadline["deadline_time"].startswith("2026-05-24 23:00")
    assert deadline["missed"] in (1, True) and "alerted via" in (deadline["output"] or "")


def _deadline_state(stack, run_id: str, timeout: float = 120) -> dict:
    """The run's deadline row as the scheduler left it, once it is marked missed and its callback has run."""
    from sqlalchemy import text

    meta = make_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    end = time.monotonic() + timeout
    row: dict = {}
    try:
        while time.monotonic() < end:
            with meta.connect() as conn:
                found = conn.execute(text(
                    "SELECT d.deadline_time, d.missed, c.state, c.output FROM deadline d JOIN dag_run r ON "
                    "r.id = d.dagrun_id JOIN callback c ON c.id = d.callback_id WHERE r.dag_id = :d AND r.run_id = :r"),
                    {"d": DAG_ID, "r": run_id}).mappings().first()
            row = {k: (str(v) if k == "deadline_time" else v) for k, v in (found or {}).items()}
            if row.get("missed") and row.get("output"):
                return row
            time.sleep(2)
    finally:
        meta.dispose()
    return row
