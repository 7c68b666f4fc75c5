"""The disclosure_request DAG through a real scheduler: approved over REST by an assigned service manager,
refused, timed out (escalated, then refused), and a user who is not an assigned approver cannot answer."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
import zipfile

import pytest
from caldicott.crypto.cms import decrypt_file
from caldicott.crypto.keys import make_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.disclosure import register
from caldicott.disclosure.approval import md_text

pytestmark = pytest.mark.e2e

DAG_ID = "disclosure_request"
TASK = "approve_disclosure"


def wait_task_state(stack, run_id: str, task_id: str, want: str, timeout: float = 240) -> None:
    """For ``awaiting_input`` this also waits until an answer cannot race the scheduler (devtools/stack.py)."""
    stack.wait_task_state(DAG_ID, run_id, task_id, want, timeout)


def request_conf(e2e, reference: str, cert_pem: bytes, **over) -> dict:
    db = sqlite3.connect(e2e.workspace.records_db)
    pid, first, last = db.execute(
        "SELECT r.local_patient_id, MIN(c.contact_at), MAX(c.contact_at) FROM referral r "
        "JOIN care_contact c ON c.service_request_id = r.service_request_id "
        "GROUP BY r.local_patient_id ORDER BY COUNT(*) DESC LIMIT 1").fetchone()
    conf = {"request_type": "court_order", "reference": reference, "requester_organisation": "Oxford Crown Court",
            "requester_person": "Clerk to the court", "authority_check": "sealed order seen; court office called",
            "purpose": "criminal trial", "necessity": "ordered by the judge", "legal_basis": "court_order",
            "local_patient_id": pid, "categories": ["demographics", "appointments", "clinical_notes"],
            "date_from": first[:10], "date_to": last[:10], "urgency": "urgent",
            "consent_status": "not_sought", "country": "GB", "recipient_certificate_pem": cert_pem.decode(),
            "approval_timeout_minutes": 30}
    conf.update(over)
    return conf


def answer(stack, run_id: str, user: str, option: str, **form) -> tuple[int, dict]:
    params = {"reasons": "", "legal_basis_confirmed": False, "tell_patient": True, "not_told_reason": "n/a",
              "consulted": ""}
    params.update(form)
    return stack.answer(DAG_ID, run_id, TASK, option, params, user=user)


def test_disclosures_approved_refused_timed_out(e2e):
    stack = e2e.stack
    ident = make_identity("Oxford Crown Court")
    now = dt.datetime.now(dt.UTC)
    runs = {
        "approve": stack.trigger(DAG_ID, now, request_conf(e2e, "E2E-APPROVE", ident.cert_pem)),
        "refuse": stack.trigger(DAG_ID, now + dt.timedelta(seconds=1),
                                request_conf(e2e, "E2E-REFUSE", ident.cert_pem, request_type="police",
                                             legal_basis="crime_prevention", requester_organisation="A Police")),
        "timeout": stack.trigger(DAG_ID, now + dt.timedelta(seconds=2),
                                 request_conf(e2e, "E2E-TIMEOUT", ident.cert_pem, approval_timeout_minutes=0.2)),
    }
    for name in ("approve", "refuse"):  # the third is left unanswered until its timeout
        wait_task_state(stack, runs[name], TASK, "awaiting_input")

    # what the approver sees names the request, never the patient
    status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{runs['approve']}/taskInstances/{TASK}/-1/hitlDetails",
                               user="manager1")
    assert status == 200, detail
    conf = request_conf(e2e, "x", ident.cert_pem)
    assert conf["local_patient_id"] not in detail["subject"] + detail["body"]
    assert "Court order" in detail["subject"] and "- Appointments" in detail["body"]
    assert {u["id"] for u in detail["assigned_users"]} == {"manager1", "manager2"}

    # not an assigned approver: the admin cannot answer, nor can a viewer
    for user in ("admin", "viewer1"):
        status, _ = answer(stack, runs["approve"], user, "Approve", reasons="x", legal_basis_confirmed=True)
        assert status == 403, (user, status)

    status, body = answer(stack, runs["approve"], "manager1", "Approve", reasons="order of the court; proportionate",
                          legal_basis_confirmed=True, consulted="Caldicott Guardian")
    assert status == 200, body
    status, body = answer(stack, runs["refuse"], "manager2", "Refuse",
                          reasons="no court order and no consent; not necessary")
    assert status == 200, body
    status, _ = answer(stack, runs["refuse"], "manager1", "Approve", reasons="again", legal_basis_confirmed=True)
    assert status == 409

    for name, run_id in runs.items():
        try:
            final = stack.wait_run(DAG_ID, run_id, timeout=180)
        except TimeoutError:
            final = "timeout"
        assert final == "success", (name, stack.task_states(DAG_ID, run_id))

    state = make_engine(sqlite_url(e2e.workspace.state_db))
    rows = {r["reference"]: r for r in register.requests(state)}
    approved = rows["E2E-APPROVE"]
    assert approved["status"] == "released" and approved["decided_by"] == "manager1" and approved["patient_told"]
    dec = register.decision(state, approved["disclosure_id"])
    assert dec["details"]["legal_basis_confirmed"] and dec["details"]["consulted"] == "Caldicott Guardian"
    assert dec["details"]["categories"] == ["demographics", "appointments", "clinical_notes"]
    # the file in the outbox is exactly what was approved, and only the requester can open it
    outbox = e2e.workspace.outputs / "disclosure-outbox"
    [sent] = [p for p in outbox.rglob("*.p7m") if approved["disclosure_id"] in p.name]
    import hashlib
    assert hashlib.sha256(sent.read_bytes()).hexdigest() == approved["released_checksum"] \
        == dec["details"]["package_checksum"]
    names = zipfile.ZipFile(io.BytesIO(decrypt_file(sent.read_bytes(), ident.cert_pem, ident.key_pem))).namelist()
    assert set(names) == {"manifest.json", "demographics.csv", "appointments.csv", "clinical_notes.csv"}
    assert (e2e.workspace.outputs / "disclosures" / approved["disclosure_id"] / "patient_notification.txt").exists()
    states = stack.task_states(DAG_ID, runs["approve"])
    assert states["write_refusal_letter"] == "skipped" and states["notify_patient"] == "success"

    refused = rows["E2E-REFUSE"]
    assert refused["status"] == "refused" and refused["decided_by"] == "manager2" and not refused["escalated"]
    assert (e2e.workspace.outputs / "disclosures" / refused["disclosure_id"] / "refusal_letter.txt").exists()
    assert stack.task_states(DAG_ID, runs["refuse"])["release_package"] == "skipped"

    timed = rows["E2E-TIMEOUT"]
    assert timed["status"] == "refused" and timed["escalated"] and timed["decided_by"] == "caldicott"
    assert (e2e.workspace.outputs / "disclosures" / timed["disclosure_id"] / "refusal_letter.txt").exists()
    assert not [p for p in outbox.rglob("*.p7m") if timed["disclosure_id"] in p.name or
                refused["disclosure_id"] in p.name]
    # XCom of the approval step holds the form answers and ids only
    xc = stack.xcom(DAG_ID, runs["approve"], "build_package")
    assert xc["record_counts"]["appointments"] > 0 and conf["local_patient_id"] not in str(xc)


def test_approved_disclosure_released_over_sftp(e2e):
    """channel sftp: the approved package lands on the requester's SFTP server (pinned host key), atomically."""
    peer = e2e.peers.get("sftp")
    if peer is None:
        pytest.skip("no SFTP stand-in peer in this checkout")
    stack = e2e.stack
    ident = make_identity("Solicitors LLP")
    conf = request_conf(e2e, "E2E-SFTP", ident.cert_pem, request_type="solicitor", legal_basis="consent",
                        consent_status="given", requester_organisation="Example Solicitors LLP",
                        categories=["referrals", "outcome_scores"], channel="sftp",
                        connection_id="caldicott_sftp_referrer", recipient_address="/disclosures/example-llp")
    run_id = stack.trigger(DAG_ID, dt.datetime.now(dt.UTC), conf)
    wait_task_state(stack, run_id, TASK, "awaiting_input")
    status, body = answer(stack, run_id, "manager2", "Approve", reasons="patient's signed consent seen",
                          legal_basis_confirmed=True, tell_patient=False, not_told_reason="patient_already_knows",
                          consulted="none")
    assert status == 200, body
    assert stack.wait_run(DAG_ID, run_id, timeout=300) == "success", stack.task_states(DAG_ID, run_id)
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    row = next(r for r in register.requests(state) if r["reference"] == "E2E-SFTP")
    landed = peer.root / "disclosures" / "example-llp" / f"{row['disclosure_id']}.zip.p7m"
    import hashlib
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == row["released_checksum"]
    assert not list(landed.parent.glob("*.part"))
    assert register.latest(state, row["disclosure_id"], register.PATIENT_NOT_NOTIFIED)["details"]["reason"] \
        == "patient_already_knows"
    names = zipfile.ZipFile(io.BytesIO(decrypt_file(landed.read_bytes(), ident.cert_pem, ident.key_pem))).namelist()
    assert set(names) == {"manifest.json", "referrals.csv", "outcome_scores.csv"}


def test_approved_disclosure_released_by_smime_email(e2e):
    """channel smime-email: the approved package reaches the requester's secure mailbox through the caldicott_smtp
    connection, S/MIME-encrypted to their certificate, and opens to exactly the approved package."""
    import hashlib

    from caldicott.disclosure.mail import package_from_message

    peer = e2e.peers.get("smtp")
    if peer is None:
        pytest.skip("no SMTP stand-in peer in this checkout")
    stack = e2e.stack
    ident = make_identity("Crown Court secure mailbox")
    mailbox = "e2e.disclosures@justice.gov.example"
    conf = request_conf(e2e, "E2E-SMIME", ident.cert_pem, channel="smime-email", recipient_address=mailbox,
                        categories=["referrals", "appointments"])
    run_id = stack.trigger(DAG_ID, dt.datetime.now(dt.UTC), conf)
    wait_task_state(stack, run_id, TASK, "awaiting_input")
    status, detail = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK}/-1/hitlDetails",
                               user="manager2")
    assert status == 200, detail
    assert f"- **Mailbox** {md_text(mailbox)}" in detail["body"], detail["body"]
    assert md_text("S/MIME-encrypted e-mail") in detail["body"] and md_text("caldicott_smtp") in detail["body"]
    status, body = answer(stack, run_id, "manager2", "Approve", reasons="sealed order; limited to what it specifies",
                          legal_basis_confirmed=True, consulted="Caldicott Guardian")
    assert status == 200, body
    assert stack.wait_run(DAG_ID, run_id, timeout=300) == "success", stack.task_states(DAG_ID, run_id)
    state = make_engine(sqlite_url(e2e.workspace.state_db))
    row = next(r for r in register.requests(state) if r["reference"] == "E2E-SMIME")
    built = register.latest(state, row["disclosure_id"], register.PACKAGE_BUILT)["details"]
    mine = [raw for raw, msg in zip(peer.raw(), peer.messages(), strict=True) if msg["X-Envelope-To"] == mailbox]
    assert len(mine) == 1
    package = package_from_message(mine[0], ident.cert_pem, ident.key_pem)
    assert hashlib.sha256(package).hexdigest() == built["plaintext_checksum"]
    assert row["released_checksum"] == built["package_checksum"] and row["decided_by"] == "manager2"
    assert conf["local_patient_id"].encode() not in mine[0]
