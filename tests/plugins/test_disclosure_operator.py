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


@pytest.mark.parametrize("configured", ["", " , "])
def test_no_assigned_approver_is_refused(monkeypatch, configured):
    """Airflow lets any user answer a HITL task with no assigned users: the operator refuses to exist then."""
    monkeypatch.setenv("CALDICOTT_APPROVERS", configured)
    with pytest.raises(ValueError, match="at least one assigned approver"):
        _op()
    monkeypatch.delenv("CALDICOTT_APPROVERS")
    with pytest.raises(ValueError, match="at least one assigned approver"):
        _op(assigned_users=[])


def test_smime_email_route_from_the_airflow_smtp_connection(monkeypatch, tmp_path, synth_source, state_engine):
    """open_sender wires channel smime-email to the caldicott_smtp connection (a real SMTP server on loopback):
    the approved package arrives from the connection's from_email and opens with the requester's key."""
    import hashlib

    from caldicott.crypto.keys import make_identity
    from caldicott.disclosure import flow
    from caldicott.disclosure.mail import package_from_message
    from caldicott.disclosure.request import DisclosureRequest
    from caldicott_airflow.disclosure_sources import open_sender

    from devtools.peers.smtp import FROM_ADDR, SmtpPeer

    ident = make_identity("County Council")
    pid = synth_source.result.frames["referral"]["local_patient_id"].iloc[0]
    req = DisclosureRequest.from_conf({
        "request_type": "safeguarding", "reference": "SG-1", "requester_organisation": "County Council",
        "requester_person": "Safeguarding lead", "authority_check": "called back on the council's number",
        "purpose": "s47 enquiry", "necessity": "child at risk", "legal_basis": "safeguarding",
        "local_patient_id": pid, "categories": ["referrals"], "date_from": "2018-01-01", "date_to": "2030-12-31",
        "channel": "smime-email", "recipient_address": "safeguarding@council.example",
        "recipient_certificate_pem": ident.cert_pem.decode()})
    flow.record_request(state_engine, req, "api")
    summary = flow.make_package(synth_source.engine, state_engine, req)
    flow.record_decision(state_engine, summary, {
        "chosen_options": ["Approve"], "responded_by_user": {"id": "manager1", "name": "manager1"},
        "params_input": {"reasons": "child at risk; proportionate", "legal_basis_confirmed": True,
                         "tell_patient": False, "not_told_reason": "risk_of_serious_harm", "consulted": "none"}},
        approvers=["manager1"])
    with SmtpPeer(tmp_path / "smtp") as peer:
        for k, v in peer.airflow_env().items():
            monkeypatch.setenv(k, v)
        with open_sender(req) as sender:
            assert sender.channel == "smime-email"
            result = flow.release(state_engine, req, sender, req.disclosure_id)
        assert result["released"] and result["sent"] == 1
        [msg], [raw] = peer.messages(), peer.raw()
    assert msg["From"] == FROM_ADDR and msg["X-Envelope-To"] == "safeguarding@council.example"
    package = package_from_message(raw, ident.cert_pem, ident.key_pem)
    assert hashlib.sha256(package).hexdigest() == summary["plaintext_checksum"]
