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


def test_no_approvers_configured_no_default(monkeypatch):
    """Production has no default approvers: without CALDICOTT_APPROVERS the approval step cannot exist."""
    monkeypatch.delenv("CALDICOTT_APPROVERS", raising=False)
    with pytest.raises(ValueError, match="at least one assigned approver"):
        _op()


class _Ti:
    dag_id, run_id, task_id, id = "disclosure_request", "r1", "approve_disclosure", "0190-ti-id"

    def xcom_pull(self, task_ids):   # a forged XCom: nothing may read it
        raise AssertionError("the approval step must not read XCom")


def _conf(synth_source, ident, reference: str, **over) -> dict:
    pid = synth_source.result.frames["referral"]["local_patient_id"].iloc[0]
    conf = {"request_type": "court_order", "reference": reference, "requester_organisation": "Oxford Crown Court",
            "requester_person": "Clerk", "authority_check": "sealed order seen", "purpose": "trial",
            "necessity": "ordered", "legal_basis": "court_order", "local_patient_id": pid,
            "categories": ["referrals"], "date_from": "2018-01-01", "date_to": "2030-12-31", "country": "GB",
            "recipient_certificate_pem": ident.cert_pem.decode(), "approval_timeout_minutes": 5}
    conf.update(over)
    return conf


@pytest.fixture
def held(monkeypatch, synth_source, state_engine, tmp_path):
    """A request recorded and packaged in the state database, and the operator's context for its run."""
    from caldicott.crypto.keys import make_identity
    from caldicott.disclosure import flow
    from caldicott.disclosure.request import DisclosureRequest

    monkeypatch.setattr("caldicott_airflow.connections.state_engine", lambda: state_engine)
    monkeypatch.setenv("CALDICOTT_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("CALDICOTT_APPROVERS", "manager1,manager2")
    conf = _conf(synth_source, make_identity("Oxford Crown Court"), "OP-1")
    req = DisclosureRequest.from_conf(conf)
    flow.record_request(state_engine, req, "clerk1")
    flow.make_package(synth_source.engine, state_engine, req)
    ctx = {"ti": _Ti(), "task_instance": _Ti(), "params": conf,
           "dag_run": SimpleNamespace(conf=conf, triggering_user_name="clerk1")}
    return SimpleNamespace(req=req, ctx=ctx, state=state_engine)


def _event(answer: dict) -> dict:
    """The resume event Airflow writes from the task's HITL row when an assigned user answers (3.3)."""
    return {"responded_at": dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC), "timedout": False, **answer}


FORM = {"reasons": "sealed order seen; proportionate", "legal_basis_confirmed": True, "tell_patient": True,
        "not_told_reason": "n/a", "consulted": "Caldicott Guardian"}


def test_decision_is_recorded_from_airflows_answer_not_xcom(held):
    """The register's decision comes from the answer Airflow resumed the task with (``_Ti.xcom_pull`` raises)."""
    from caldicott.disclosure import register

    out = _op().execute_complete(held.ctx, _event({
        "chosen_options": ["Refuse"], "params_input": {**FORM, "reasons": "not necessary"},
        "responded_by_user": {"id": "manager2", "name": "manager2"}}))
    dec = register.decision(held.state, held.req.disclosure_id)
    assert out["outcome"] == "refused" and dec["event"] == "refused" and dec["actor"] == "manager2"
    assert dec["details"]["reasons"] == "not necessary"


def test_approval_recorded_with_the_server_shown(monkeypatch, held):
    from caldicott.disclosure import register

    assert _op().execute_complete(held.ctx, _event({
        "chosen_options": ["Approve"], "params_input": FORM,
        "responded_by_user": {"id": "manager1", "name": "manager1"}}))["outcome"] == "approved"
    details = register.decision(held.state, held.req.disclosure_id)["details"]
    assert details["endpoint"]["folder"].endswith("disclosure-outbox") and details["legal_basis_confirmed"]


@pytest.mark.parametrize(("approvers", "who", "why"), [("manager1,clerk1", "clerk1", "separation of duties"),
                                                       ("manager1,manager2", "admin", "not one of the assigned")])
def test_answer_from_the_requester_or_a_stranger_is_refused(monkeypatch, held, approvers, who, why):
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.disclosure import register

    monkeypatch.setenv("CALDICOTT_APPROVERS", approvers)
    with pytest.raises(AirflowFailException, match=why):
        _op().execute_complete(held.ctx, _event({"chosen_options": ["Approve"], "params_input": FORM,
                                                 "responded_by_user": {"id": who, "name": who}}))
    assert register.decision(held.state, held.req.disclosure_id) is None


def test_requester_is_not_assigned(monkeypatch, held):
    """Separation of duties at the source: Airflow then refuses the requester's answer (403)."""
    monkeypatch.setenv("CALDICOTT_APPROVERS", "manager1,clerk1")
    op = _op()
    monkeypatch.setattr("airflow.providers.standard.operators.hitl.HITLOperator.execute", lambda self, ctx: "parked")
    assert op.execute(held.ctx) == "parked"
    assert [u["name"] for u in op.assigned_users] == ["manager1"]
    assert "manager1" in op.body and "clerk1" not in op.body.split("Who may decide")[1]
    monkeypatch.setenv("CALDICOTT_APPROVERS", "clerk1")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="no approver other than"):
        _op().execute(held.ctx)


def test_timeout_escalates_and_refuses(monkeypatch, held):
    from caldicott.disclosure import register

    posted = []
    monkeypatch.setattr("caldicott_airflow.disclosure._post", lambda url, msg: posted.append((url, msg)))
    monkeypatch.setenv("CALDICOTT_GUARDIAN_WEBHOOK", "http://127.0.0.1:9/hook")
    out = _op().execute_complete(held.ctx, {"error": "timeout", "error_type": "timeout"})
    assert out == {"disclosure_id": held.req.disclosure_id, "outcome": "refused", "timed_out": True}
    [(url, msg)] = posted
    assert url.endswith("/hook")
    assert msg["disclosure_id"] == held.req.disclosure_id and msg["kind"] == "disclosure_escalation"
    assert register.has_event(held.state, held.req.disclosure_id, register.ESCALATED)


def test_answer_with_invalid_form_is_incomplete(monkeypatch, held):
    from airflow.sdk.exceptions import AirflowFailException
    from caldicott.disclosure import register

    with pytest.raises(AirflowFailException, match="incomplete"):
        _op().execute_complete(held.ctx, _event({"chosen_options": ["Approve"], "params_input": {"reasons": "x"},
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}}))
    assert register.has_event(held.state, held.req.disclosure_id, register.DECISION_INCOMPLETE)


def test_approvers_are_told_a_request_waits(monkeypatch, held):
    from caldicott_airflow.disclosure import ApproverNotifier

    posted = []
    monkeypatch.setattr("caldicott_airflow.disclosure._post", lambda url, msg: posted.append(msg))
    monkeypatch.setenv("CALDICOTT_APPROVER_WEBHOOK", "http://127.0.0.1:9/hook")
    assert any(isinstance(n, ApproverNotifier) for n in _op().notifiers)
    ApproverNotifier().notify(held.ctx)
    assert posted and posted[0]["disclosure_id"] == held.req.disclosure_id
    assert posted[0]["kind"] == "disclosure_awaiting_decision"


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
        "channel": "smime-email", "recipient_address": "safeguarding@council.example", "country": "GB",
        "recipient_certificate_pem": ident.cert_pem.decode()})
    monkeypatch.setenv("CALDICOTT_DISCLOSURE_CONNECTIONS", "caldicott_smtp")
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


def test_connections_come_from_the_deployments_allow_list(monkeypatch):
    """A requester cannot name an arbitrary connection (so an arbitrary server) in the run's conf."""
    from caldicott_airflow.disclosure_sources import ConfigMissing, connection_for

    monkeypatch.delenv("CALDICOTT_DISCLOSURE_CONNECTIONS", raising=False)
    assert connection_for("outbox", "") is None
    with pytest.raises(ConfigMissing, match="CALDICOTT_DISCLOSURE_CONNECTIONS"):
        connection_for("smime-email", "")   # fail closed: nothing listed, nothing but the outbox
    monkeypatch.setenv("CALDICOTT_DISCLOSURE_CONNECTIONS", "caldicott_smtp, caldicott_sftp_disclosure")
    assert connection_for("smime-email", "") == "caldicott_smtp"
    assert connection_for("sftp", "") == "caldicott_sftp_disclosure"
    with pytest.raises(ConfigMissing, match="'attacker_sftp'"):
        connection_for("sftp", "attacker_sftp")
