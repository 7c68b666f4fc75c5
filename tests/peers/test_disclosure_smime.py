"""Channel smime-email against a real SMTP server on loopback (aiosmtpd, devtools/peers/smtp.py): the approved
package reaches the requester's secure mailbox once, opens with their key to exactly the approved bytes and with
no other key, carries nothing about the patient in clear, and without an approved register entry nothing is sent."""

from __future__ import annotations

import hashlib
import io
import smtplib
import zipfile

import pandas as pd
import pytest
from caldicott import gateway
from caldicott.crypto.keys import make_identity
from caldicott.disclosure import flow, register
from caldicott.disclosure.mail import DisclosureMailSender, package_from_message, seal_for_mail
from caldicott.disclosure.package import build_package
from caldicott.disclosure.request import DisclosureRequest
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound
from caldicott.transport.ledger import Intent, Ledger, item_id
from caldicott.transport.smtp import SmtpSender

from devtools.peers.smtp import SmtpPeer

FROM = "disclosures@talkingtherapies.nhs.example"
MAILBOX = "disclosures.oxford@justice.gov.example"
APPROVERS = ["manager1"]
FORM = {"reasons": "sealed court order seen; limited to what it specifies", "legal_basis_confirmed": True,
        "tell_patient": True, "not_told_reason": "n/a", "consulted": "Caldicott Guardian"}


@pytest.fixture
def smtp(tmp_path):
    with SmtpPeer(tmp_path / "smtp") as peer:
        yield peer


@pytest.fixture
def court():
    return make_identity("Oxford Crown Court")


@pytest.fixture
def sender(smtp):
    client = smtplib.SMTP("127.0.0.1", smtp.port)
    yield DisclosureMailSender(SmtpSender(client, FROM))
    client.quit()


def _request(synth_source, cert_pem: bytes, reference: str) -> DisclosureRequest:
    f = synth_source.result.frames
    cc = f["care_contact"].merge(f["referral"][["service_request_id", "local_patient_id"]], on="service_request_id")
    pid = cc.groupby("local_patient_id").size().sort_values(ascending=False).index[0]
    dates = pd.to_datetime(cc[cc.local_patient_id == pid]["contact_at"])
    return DisclosureRequest.from_conf({
        "request_type": "court_order", "reference": reference, "requester_organisation": "Oxford Crown Court",
        "requester_person": "Clerk to the court", "authority_check": "sealed order seen; court office called",
        "purpose": "criminal trial", "necessity": "ordered by the judge", "legal_basis": "court_order",
        "local_patient_id": pid, "categories": ["demographics", "appointments", "clinical_notes"],
        "date_from": str(dates.min().date()), "date_to": str(dates.max().date()), "urgency": "urgent",
        "consent_status": "not_sought", "channel": "smime-email", "recipient_address": MAILBOX, "country": "GB",
        "recipient_certificate_pem": cert_pem.decode()})


def _approve(state, summary) -> None:
    flow.record_decision(state, summary, {"chosen_options": ["Approve"], "params_input": FORM,
                                          "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS)


def test_approved_package_emailed_once_and_opens_only_with_the_requesters_key(synth_source, state_engine, smtp,
                                                                              sender, court):
    req = _request(synth_source, court.cert_pem, "T20267001")
    did = flow.record_request(state_engine, req, "api")
    summary = flow.make_package(synth_source.engine, state_engine, req)
    _approve(state_engine, summary)

    first = flow.release(state_engine, req, sender, did)
    again = flow.release(state_engine, req, sender, did)   # a retried task sends nothing more
    assert first["released"] and first["sent"] == 1 and again["already_sent"] == 1
    [raw] = smtp.raw()
    [msg] = smtp.messages()
    assert msg["X-Envelope-To"] == MAILBOX and msg["To"] == MAILBOX and msg["From"] == FROM
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg["Message-ID"] == f"<{first['item_id']}@caldicott.invalid>" and did in msg["Subject"]

    # the requester's key opens it to exactly the package that was built and approved
    package = package_from_message(raw, court.cert_pem, court.key_pem)
    assert hashlib.sha256(package).hexdigest() == summary["plaintext_checksum"]
    assert package == build_package(synth_source.engine, req).to_zip()
    names = set(zipfile.ZipFile(io.BytesIO(package)).namelist())
    assert names == {"manifest.json", "demographics.csv", "appointments.csv", "clinical_notes.csv"}
    # and the register says what went: the approved envelope's checksum
    released = register.latest(state_engine, did, register.RELEASED)["details"]
    assert released["channel"] == "smime-email" and released["package_checksum"] == summary["package_checksum"]
    assert register.decision(state_engine, did)["details"]["recipient_address"] == MAILBOX

    # another key cannot open it
    with pytest.raises(ValueError):
        package_from_message(raw, court.cert_pem, make_identity("Someone Else").key_pem)

    # nothing about the patient in clear: not in the headers, and the body is one encrypted part
    patient = synth_source.result.frames["patient"].set_index("local_patient_id").loc[req.local_patient_id]
    for v in (req.local_patient_id, patient.nhs_number, patient.family_name, patient.given_name, patient.postcode,
              req.reference):
        if isinstance(v, str) and len(v) >= 5:   # (shorter strings could turn up by chance in base64)
            assert v.encode() not in raw, v
    assert b"Content-Disposition: attachment; filename=\"smime.p7m\"" in raw and b"PK\x03\x04" not in raw


def test_without_an_approved_register_entry_nothing_is_sent(synth_source, state_engine, smtp, sender, court):
    # held (never decided)
    held = _request(synth_source, court.cert_pem, "T-HELD")
    flow.record_request(state_engine, held, "api")
    flow.make_package(synth_source.engine, state_engine, held)
    res = flow.release(state_engine, held, sender, held.disclosure_id)
    assert res["released"] is False and "no approval" in res["reason"] and not smtp.messages()
    # refused
    refused = _request(synth_source, court.cert_pem, "T-REFUSED")
    flow.record_request(state_engine, refused, "api")
    summary = flow.make_package(synth_source.engine, state_engine, refused)
    flow.record_decision(state_engine, summary, {"chosen_options": ["Refuse"], "params_input": {"reasons": "no"},
                                                 "responded_by_user": {"id": "manager1", "name": "manager1"}},
                         approvers=APPROVERS)
    assert flow.release(state_engine, refused, sender, refused.disclosure_id)["released"] is False
    # "approved" by someone who is not an approver: not a decision
    rogue = _request(synth_source, court.cert_pem, "T-ROGUE")
    flow.record_request(state_engine, rogue, "api")
    summary = flow.make_package(synth_source.engine, state_engine, rogue)
    with pytest.raises(flow.NotAnApprover):
        flow.record_decision(state_engine, summary, {"chosen_options": ["Approve"], "params_input": FORM,
                                                     "responded_by_user": {"id": "admin", "name": "admin"}},
                             approvers=APPROVERS)
    assert flow.release(state_engine, rogue, sender, rogue.disclosure_id)["released"] is False
    # approved, then the request comes back asking for another mailbox: the approved bytes do not follow it
    moved = _request(synth_source, court.cert_pem, "T-MOVED")
    flow.record_request(state_engine, moved, "api")
    _approve(state_engine, flow.make_package(synth_source.engine, state_engine, moved))
    elsewhere = DisclosureRequest.from_conf({**moved.register_details(), "categories": list(moved.categories),
                                             "recipient_address": "someone@elsewhere.example",
                                             "recipient_certificate_pem": court.cert_pem.decode()})
    assert elsewhere.disclosure_id == moved.disclosure_id
    assert flow.release(state_engine, elsewhere, sender, moved.disclosure_id)["released"] is False
    # the gateway itself, asked directly: an approved request, but an envelope other than the approved one
    item = Outbound(item_id("disclosure", moved.disclosure_id), Purpose.DISCLOSURE, moved.recipient, "smime-email",
                    seal_for_mail(b"PK other bytes", court.cert_pem, moved.disclosure_id, "x"), Protection.SMIME,
                    address=MAILBOX, disclosure_id=moved.disclosure_id)
    Ledger(state_engine).record_intent([Intent(item.item_id, flow.FLOW, "disclosure", "t", moved.recipient,
                                               "smime-email", moved.disclosure_id)])
    report = gateway.release([item], sender, state_engine)
    assert report.sent == [] and "differs from the one approved" in report.refused[item.item_id]
    assert smtp.files() == []
