"""S/MIME round trip with the practice's own key; GP Connect bundle and ITK3 acks; policy decisions."""

from __future__ import annotations

import email
import email.policy
import json

import pytest
from caldicott.crypto import smime
from caldicott.crypto.keys import make_identity
from caldicott.letters import gp_connect, messages
from caldicott.letters.pdf import html_to_pdf, pdf_text
from caldicott.policy import letters as policy
from caldicott.policy.purposes import Protection

from devtools.peers.gp_responder import ack_bundle, pdf_of  # the receiving practice's side


@pytest.fixture(scope="module")
def pdf_bytes():
    return html_to_pdf("<h1>Assessment letter</h1><p>Re: O&#39;Brien-Zoë &lt;script&gt;</p>")


def _practice_identity(synth_source, n: int):
    code = synth_source.result.frames["gp_practice"]["ods_code"].iloc[n]
    keys = synth_source.keys_dir
    return (keys / f"{code}.crt").read_bytes(), (keys / f"{code}.key").read_bytes()


def test_smime_email_round_trip_with_the_practice_key(synth_source, pdf_bytes):
    cert, key = _practice_identity(synth_source, 0)
    raw = messages.smime_email("gp_letters-abc", pdf=pdf_bytes, body="Please find attached.", sender="a@nhs.example",
                               to="p@nhs.example", certificate_pem=cert, service="NHS Talking Therapies")
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer["Message-ID"] == "<gp_letters-abc@caldicott.invalid>"
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert b"O'Brien" not in raw and b"%PDF" not in raw
    inner = email.message_from_bytes(smime.open_envelope(raw, cert, key), policy=email.policy.default)
    (attachment,) = list(inner.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    text = pdf_text(attachment.get_content())
    assert "O'Brien-Zoë <script>" in text


def test_another_practice_key_cannot_decrypt(synth_source, pdf_bytes):
    cert, _ = _practice_identity(synth_source, 0)
    other_cert, other_key = _practice_identity(synth_source, 1)
    raw = messages.smime_email("x", pdf=pdf_bytes, body="b", sender="a@x", to="b@x", certificate_pem=cert,
                               service="S")
    with pytest.raises(ValueError):
        smime.open_envelope(raw, other_cert, other_key)


def test_gateway_email_is_marked_secure_and_carries_no_patient_data_in_headers(pdf_bytes):
    raw = messages.gateway_email("gp_letters-x", pdf=pdf_bytes, body="b", sender="a@x", to="p@x", service="S")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"].startswith("[secure] ")
    assert "Brien" not in msg["Subject"]


def test_post_file_opens_only_with_the_print_house_key(pdf_bytes, tmp_path):
    ident = make_identity("PRINTHOUSE")
    der = messages.post_file(pdf_bytes, ident.cert_pem)
    assert smime.open_der(der, ident.cert_pem, ident.key_pem) == pdf_bytes


def test_gp_connect_bundle_carries_the_pdf_and_acks_map_back(pdf_bytes):
    """The Send Document message round trip; requirement by requirement in test_send_document_spec.py."""
    import datetime as dt

    def build() -> bytes:
        return gp_connect.build_bundle(
            "gp_letters-1", document=gp_connect.Document("Assessment letter", pdf_bytes, "urn:uuid:1"),
            patient={"nhs_number": "9990000018", "given_name": "Ann", "family_name": "Lee",
                     "birth_date": dt.date(1980, 1, 2)},
            sender=gp_connect.SendingOrganisation("ZZZ01", "Service", "0113 000 0000", "X26ABC1"),
            author=gp_connect.Author("999000000001", "Example", ("Alex",)),
            generated_at=dt.datetime(2026, 10, 15, 6, tzinfo=dt.UTC))

    b = build()
    bundle = json.loads(b)
    assert bundle["type"] == "message"
    assert pdf_of(b) == pdf_bytes
    (patient,) = gp_connect.resources(bundle, "Patient")
    assert patient["identifier"][0]["value"] == "9990000018"
    assert b == build()     # the same letter generated at the same time: the same bytes
    for code, kind, positive in (("20013", "infrastructure", True), ("30001", "business", True),
                                 ("30002", "business", False)):
        parsed = gp_connect.parse_ack(ack_bundle(b, code))
        assert parsed == (gp_connect.message_header_id("gp_letters-1"), kind, positive, code)


def _patient(**kw):
    return {"local_patient_id": "P1", "gp_practice_code": "Z1", "gp_sharing_consent": True, "copy_channel": "email",
            "email": "p@x", "address_line": "1 A St", **kw}


def test_policy_routes(synth_source):
    cert, _ = _practice_identity(synth_source, 0)
    smime_practice = {"ods_code": "Z1", "channel": "smime-email", "email": "gp@x", "certificate_pem": cert.decode()}
    d = policy.gp_decision(_patient(), smime_practice, patient_ok=True)
    assert d.outcome == "send" and d.route.protection == Protection.SMIME
    assert d.gp_sharing_consent   # the decision found consent given: the source of the letter's evidence
    d = policy.gp_decision(_patient(), {**smime_practice, "certificate_pem": None}, patient_ok=True)
    assert d.outcome == "held" and d.reason == "practice_certificate_missing"
    declined = policy.gp_decision(_patient(gp_sharing_consent=False), smime_practice, patient_ok=True)
    assert declined.outcome == "withheld" and not declined.gp_sharing_consent
    assert policy.gp_decision(_patient(gp_practice_code=None), None, patient_ok=True).reason == "missing_gp_practice"
    assert policy.gp_decision(_patient(), {**smime_practice, "channel": "fax"}, patient_ok=True).reason == \
        "unknown_channel"
    mesh = policy.gp_decision(_patient(), {"ods_code": "Z1", "channel": "mesh", "mesh_mailbox": "X26ABC2"},
                              patient_ok=True)
    assert mesh.route.protection == Protection.MESH and mesh.route.address == "X26ABC2"
    # the patient's copy: always, never plain
    assert policy.patient_decision(_patient(gp_sharing_consent=False), patient_ok=True,
                                   postcode_ok=True).route.protection == Protection.SECURE_GATEWAY
    assert policy.patient_decision(_patient(copy_channel="post"), patient_ok=True,
                                   postcode_ok=True).route.channel == "post"
    assert policy.patient_decision(_patient(copy_channel="post"), patient_ok=True,
                                   postcode_ok=False).reason == "patient_address_missing"
    assert policy.patient_decision(_patient(copy_channel="pigeon"), patient_ok=True,
                                   postcode_ok=True).reason == "unknown_copy_channel"
    smime_copy = policy.patient_decision(_patient(copy_channel="smime", patient_certificate_pem=cert.decode()),
                                         patient_ok=True, postcode_ok=True)
    assert smime_copy.route.protection == Protection.SMIME
    assert "address_line" not in policy.minimum_patient(_patient(), "gp")
