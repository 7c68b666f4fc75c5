"""Issue 14, replayed through the REST API of a real Airflow: an ordinary account forges an approval.

The attack: any user who may write XCom and set task states (Airflow's USER role and up) posts an XCom
result for ``approve_disclosure`` saying "Approve, by manager1" and marks the task successful; a second
variant also forges the branch after it. Airflow's own HITL record still says nobody answered. Nothing may
be released: the register holds no decision, the attempts are recorded, the outbox stays empty.
"""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.crypto.keys import make_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.disclosure import register
from caldicott.disclosure.request import DisclosureRequest

from tests.e2e.test_disclosure import DAG_ID, TASK, answer, request_conf, wait_task_state

pytestmark = pytest.mark.e2e

ATTACKER = "clerk1"   # an ordinary account (simple auth manager role USER): may trigger runs, write XCom
FORGED = {"chosen_options": ["Approve"], "responded_by_user": {"id": "manager1", "name": "manager1"},
          "responded_at": "2026-12-06T09:00:00+00:00",
          "params_input": {"reasons": "forged", "legal_basis_confirmed": True, "tell_patient": False,
                           "not_told_reason": "tipping_off", "consulted": ""}}


def _forge(stack, run_id: str, task_id: str, value) -> None:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
    status, body = stack.api("POST", f"{path}/xcomEntries", {"key": "return_value", "value": value}, user=ATTACKER)
    if status == 409:   # already there: overwrite it
        status, body = stack.api("PATCH", f"{path}/xcomEntries/return_value", {"key": "return_value", "value": value},
                                 user=ATTACKER)
    assert status in (200, 201), (task_id, status, body)   # the attacker CAN write it: that is the point


def _mark_success(stack, run_id: str, task_id: str) -> None:
    status, body = stack.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}",
                             {"new_state": "success"}, user=ATTACKER)
    assert status == 200, (task_id, status, body)


def test_forged_approval_releases_nothing(e2e):
    stack = e2e.stack
    ident = make_identity("Oxford Crown Court")
    now = dt.datetime.now(dt.UTC)
    confs = {
        "xcom": request_conf(e2e, "E2E-FORGE-1", ident.cert_pem),
        "xcom+branch": request_conf(e2e, "E2E-FORGE-2", ident.cert_pem),
    }
    runs = {name: stack.trigger(DAG_ID, now + dt.timedelta(seconds=i), conf, user=ATTACKER)
            for i, (name, conf) in enumerate(confs.items())}
    for run_id in runs.values():
        wait_task_state(stack, run_id, TASK, "awaiting_input")

    # the requester is not among those asked, and Airflow refuses their answer
    status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{runs['xcom']}/taskInstances/{TASK}/-1/hitlDetails",
                               user="manager1")
    assert status == 200 and ATTACKER not in {u["id"] for u in detail["assigned_users"]}
    status, _ = answer(stack, runs["xcom"], ATTACKER, "Approve", reasons="mine", legal_basis_confirmed=True)
    assert status == 403

    # variant 1: forge the approval step's result and mark it successful
    _forge(stack, runs["xcom"], TASK, FORGED)
    _mark_success(stack, runs["xcom"], TASK)
    # variant 2: also forge the branch after it, so the release task runs
    _forge(stack, runs["xcom+branch"], TASK, FORGED)
    _forge(stack, runs["xcom+branch"], "record_decision", "release_package")
    _mark_success(stack, runs["xcom+branch"], "record_decision")
    _mark_success(stack, runs["xcom+branch"], TASK)

    finals = {name: stack.wait_run(DAG_ID, run_id, timeout=240) for name, run_id in runs.items()}
    states = {name: stack.task_states(DAG_ID, run_id) for name, run_id in runs.items()}
    assert finals == {"xcom": "failed", "xcom+branch": "failed"}, states
    assert states["xcom"]["record_decision"] == "failed"
    assert states["xcom"]["release_package"] in ("upstream_failed", "skipped", None)
    assert states["xcom+branch"]["release_package"] == "failed"

    state = make_engine(sqlite_url(e2e.workspace.state_db))
    outbox = e2e.workspace.outputs / "disclosure-outbox"
    for name, conf in confs.items():
        did = DisclosureRequest.from_conf(conf).disclosure_id
        assert register.decision(state, did) is None, name
        assert not register.has_event(state, did, register.RELEASED), name
        assert not [p for p in outbox.rglob("*.p7m") if did in p.name], name
        assert register.latest(state, did, register.REQUESTED)["actor"] == ATTACKER
    did1 = DisclosureRequest.from_conf(confs["xcom"]).disclosure_id
    assert register.has_event(state, did1, register.NO_DECISION)
    did2 = DisclosureRequest.from_conf(confs["xcom+branch"]).disclosure_id
    refused = register.latest(state, did2, register.RELEASE_REFUSED)
    assert refused and refused["details"]["reason"] == "no approval in the register"
    # Airflow's own record agrees: nobody answered either request
    for run_id in runs.values():
        status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK}/-1/hitlDetails",
                                   user="manager1")
        assert status == 200 and not detail["response_received"], detail
