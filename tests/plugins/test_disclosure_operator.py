"""The disclosure approval step without a scheduler: no default answer, assigned approvers from config,
the decision form, and a timeout that escalates (ids only) instead of approving."""

from __future__ import annotations

import datetime as dt
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def _op(**kw):
    from caldicott_airflow.disclosure import DisclosureApprovalOperator

    return DisclosureApprovalOperator(task_id="approve_disclosure", **kw)


def test_no_default_and_assigned_approvers(monkeypatch):
    monkeypatch.setenv("CALDICOTT_APPROVERS", "alice, bob")
    op = _op()
    assert op.options == ["Approve", "Refuse"] and op.defaults is None and op.multiple is False
    assert [u["id"] for u in op.assigned_users] == ["alice", "bob"]
    assert set(op.params) == {"reasons", "legal_basis_confirmed", "tell_patient", "not_told_reason", "consulted"}
    with pytest.raises(ValueError, match="no default"):
        _op(defaults="Approve")


def test_default_approvers(monkeypatch):
    monkeypatch.delenv("CALDICOTT_APPROVERS", raising=False)
    assert [u["id"] for u in _op().assigned_users] == ["manager1", "manager2"]


class _Ti:
    dag_id, run_id, task_id = "disclosure_request", "r1", "approve_disclosure"

    def xcom_pull(self, task_ids):
        return {"disclosure_id": "dsc-1", "request_type": "police"}


def test_timeout_escalates_and_returns_timed_out(monkeypatch):
    posted = []
    monkeypatch.setattr("caldicott_airflow.disclosure._post", lambda url, msg: posted.append((url, msg)))
    monkeypatch.setenv("CALDICOTT_GUARDIAN_WEBHOOK", "http://127.0.0.1:9/hook")
    op = _op()
    ctx = {"ti": _Ti(), "task_instance": _Ti(), "params": {}, "dag_run": SimpleNamespace(conf={
        "approval_timeout_minutes": 5})}
    out = op.execute_complete(ctx, {"error": "timeout", "error_type": "timeout"})
    assert out == {"timed_out": True, "timeout_minutes": 5.0, "notified": ["task_log", "webhook"]}
    [(url, msg)] = posted
    assert url.endswith("/hook")
    assert msg["disclosure_id"] == "dsc-1" and msg["kind"] == "disclosure_escalation"


def test_answer_with_invalid_form_is_passed_on_as_incomplete():
    op = _op()
    event = {"chosen_options": ["Approve"], "params_input": {"reasons": "x"},  # keys missing
             "responded_at": dt.datetime.now(dt.UTC), "responded_by_user": {"id": "manager1", "name": "manager1"}}
    out = op.execute_complete({"ti": _Ti(), "params": {}}, event)
    assert out["form_invalid"] and out["params_input"] == {}


def test_approvers_are_told_a_request_waits(monkeypatch):
    from caldicott_airflow.disclosure import ApproverNotifier

    posted = []
    monkeypatch.setattr("caldicott_airflow.disclosure._post", lambda url, msg: posted.append(msg))
    monkeypatch.setenv("CALDICOTT_APPROVER_WEBHOOK", "http://127.0.0.1:9/hook")
    assert any(isinstance(n, ApproverNotifier) for n in _op().notifiers)
    ApproverNotifier().notify({"ti": _Ti(), "task_instance": _Ti()})
    assert posted and posted[0]["disclosure_id"] == "dsc-1" and posted[0]["kind"] == "disclosure_awaiting_decision"
