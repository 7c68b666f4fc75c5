"""The monthly_dataset DAG's two other endings, through the real scheduler:

* the named submitter never answers: ``confirm_submission`` times out (``confirm_timeout_minutes`` from the run's
  conf), fails without retrying and alerts on-call; nothing is recorded as submitted;
* an automatic route: the run's ``submission_route=sftp`` with the intermediary configured in the Airflow Variable
  ``caldicott_dataset_submission`` (set over the REST API, as an operator would): the archive lands on the SFTP
  peer once, the human step is skipped, and the remote path is recorded as the submission reference.

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
    assert states["stage_submission"] == "success"
    assert states["confirm_submission"] == "failed" and states["record_submission"] == "upstream_failed"

    _, ti = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/confirm_submission")
    assert ti["try_number"] == 1                              # failed for good: a retry would only ask again
    status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/confirm_submission/-1/"
                                      "hitlDetails")
    assert status == 200 and detail["response_received"] is False and "2026-08" in detail["subject"]
    log = _task_log(stack, run_id, "confirm_submission")
    assert "caldicott on-call alert" in log and "AirflowFailException" in log   # the on-call notifier fired

    state = make_engine(sqlite_url(e2e.workspace.state_db))
    row = state_tables.get(state, "2026-08")
    assert row["state"] == "staged" and row["submission_reference"] is None and row["submitted_at"] is None
    assert Ledger(state).get(row["item_id"]).state == "sent"       # staged, never confirmed (not acked)


def test_sftp_route_sends_once_and_skips_the_human_step(e2e, ndop):
    stack, sftp = e2e.stack, e2e.peers["sftp"]
    config = {"route": "staged", "sftp_conn_id": "caldicott_sftp_referrer", "sftp_directory": "/intermediary/iapt",
              "recipient": "CSU-E2E"}
    status, body = stack.api("POST", "/variables", {"key": VARIABLE, "value": json.dumps(config)})
    assert status in (200, 201), body
    try:
        run_id, logical = _start_alone(stack, {"month": "2026-07", "submission_route": "sftp"}, offset=5)
        assert stack.wait_run(DAG_ID, run_id, timeout=600) == "success", stack.task_states(DAG_ID, run_id)
        states = stack.task_states(DAG_ID, run_id)
        assert states["confirm_submission"] == "skipped" and states["record_submission"] == "success"
        landed = sftp.root / "intermediary/iapt/iapt_2026-07_v2.1.zip.enc"
        stamp = landed.stat().st_mtime_ns

        # a re-run of the whole month sends nothing again
        rerun = _make_room(stack, stack.rerun(DAG_ID, logical))
        assert stack.wait_run(DAG_ID, rerun, timeout=600) == "success", stack.task_states(DAG_ID, rerun)
        staged = stack.xcom(DAG_ID, rerun, "stage_submission")
        assert (staged["sent"], staged["already_sent"], staged["route"]) == (0, 1, "sftp")
    finally:
        stack.api("DELETE", f"/variables/{VARIABLE}")

    assert [p.name for p in landed.parent.iterdir()] == [landed.name] and landed.stat().st_mtime_ns == stamp
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    row = state_tables.get(state, "2026-07")
    assert row["state"] == "submitted" and row["submission_reference"] == f"/intermediary/iapt/{landed.name}"
    assert row["submitted_by"].startswith("automatic: sftp caldicott_sftp_referrer")
    key = load_key(e2e.peers["monthly_dataset"].key)
    received, written = read_archive(landed, key), read_archive(Path(row["archive_path"]), key)
    assert {k: len(v) for k, v in received.items() if k != "manifest"} == \
        {k: len(v) for k, v in written.items() if k != "manifest"}
    assert landed.read_bytes() == Path(row["archive_path"]).read_bytes()
    assert not list((Path(e2e.workspace.outputs) / "staging").glob("2026-07/*.zip.enc"))  # nothing for a person
