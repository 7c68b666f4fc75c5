"""GP Connect Send Document, requirement by requirement, for the sending side.

Requirement ids: GP Connect Send Document v2 Supplier Conformance Assessment List (SCAL) and
https://github.com/nhsconnect/gpconnect-messaging ``_data/senddoc_requirements.yml`` (GPCM-SD-*). The message is
also validated as FHIR STU3 by the ``fhir.resources`` STU3 models (a library no one here wrote). Requirements
that do not apply to this sender are listed at the end with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from caldicott.letters import gp_connect as g

from devtools.peers.gp_responder import ack_bundle, pdf_of  # the receiving practice's side

fhir_stu3 = pytest.importorskip("fhir.resources.STU3.bundle", reason="fhir.resources (test dependency) not installed")

NOW = dt.datetime(2026, 10, 15, 6, 3, 27, tzinfo=dt.UTC)
PDF = b"%PDF-1.7 synthetic letter"
PATIENT = {"nhs_number": "9990000018", "given_name": "Ann", "family_name": "Lee", "birth_date": dt.date(1980, 1, 2)}
SENDER = g.SendingOrganisation("ZZZ01", "NHS Talking Therapies (Synthetic Service)", "0113 000 0000", "X26ABC1")
AUTHOR = g.Author("999000000001", "Example", ("Alex",), "Dr", "0113 000 0001")
DOC = g.Document("Assessment letter", PDF, g.activity_reference("R00000001", "assessment"))


def _build(patient=PATIENT, at=NOW, **kw) -> bytes:
    return g.build_bundle("gp_letters-abc", document=DOC, patient=patient, sender=SENDER, author=AUTHOR,
                          generated_at=at, **kw)


@pytest.fixture(scope="module")
def raw() -> bytes:
    return _build()


@pytest.fixture(scope="module")
def msg(raw) -> dict:
    return json.loads(raw)


def _one(msg: dict, kind: str) -> dict:
    (res,) = g.resources(msg, kind) if kind != "Bundle" else [g.resources(msg, "Bundle")[0]]
    return res


def _handling(msg) -> dict:
    header = _one(msg, "MessageHeader")
    (ext,) = [e for e in header["extension"] if e["url"] == g.ITK_HANDLING]
    return {e["url"]: e for e in ext["extension"]}


def test_message_validates_as_fhir_stu3_with_the_fhir_resources_models(raw):
    """GPCM-C-2 / GPCM-SD-065: a message that is not valid FHIR STU3 gets a negative ITK3 response."""
    bundle = fhir_stu3.Bundle.model_validate_json(raw)
    assert bundle.type == "message"
    assert type(bundle.entry[2].resource).__name__ == "Bundle"          # the document bundle, parsed as STU3 too
    # and the R4 shape the old message had is rejected by the same models (so this test can fail)
    bad = json.loads(raw)
    bad["entry"][0]["resource"]["destination"] = [{"endpoint": "X26ABC2", "receiver": {"reference": "urn:uuid:x"}}]
    with pytest.raises(ValueError):
        fhir_stu3.Bundle.model_validate(bad)


def test_a_patient_without_a_given_name_still_validates():
    """GPCM-SD-036: one official name; FHIR has no nulls (the old message sent ``given: [null]``)."""
    raw = _build(patient={**PATIENT, "given_name": None})
    fhir_stu3.Bundle.model_validate_json(raw)
    (name,) = _one(json.loads(raw), "Patient")["name"]
    assert name == {"use": "official", "family": "Lee"}


def test_GPCM_SD_108_every_resource_claims_its_profile(msg):
    profiles = {"MessageHeader": g.PROFILES["header"], "Composition": g.PROFILES["composition"],
                "Practitioner": g.PROFILES["practitioner"], "Patient": g.PROFILES["patient"],
                "Binary": g.PROFILES["binary"]}
    assert msg["meta"]["profile"] == [g.PROFILES["message_bundle"]]
    for kind, profile in profiles.items():
        assert _one(msg, kind)["meta"]["profile"] == [profile]
    header_org, org = g.resources(msg, "Organization")
    assert header_org["meta"]["profile"] == [g.PROFILES["header_org"]]
    assert org["meta"]["profile"] == [g.PROFILES["organization"]]
    assert _one(msg, "Bundle")["meta"]["profile"] == [g.PROFILES["document_bundle"]]


def test_GPCM_SD_103_104_message_header_focus_is_an_itk_document_bundle_with_a_composition(msg):
    header = _one(msg, "MessageHeader")
    doc = msg["entry"][2]
    assert header["focus"] == [{"reference": doc["fullUrl"]}]
    assert doc["resource"]["type"] == "document" and doc["resource"]["meta"]["lastUpdated"]
    kinds = [e["resource"]["resourceType"] for e in doc["resource"]["entry"]]
    assert kinds == ["Composition", "Organization", "Practitioner", "Patient", "Binary"]
    assert [e["resource"]["resourceType"] for e in msg["entry"]] == ["MessageHeader", "Organization", "Bundle"]
    assert msg["identifier"]["value"] and doc["resource"]["identifier"]["value"]


def test_GPCM_SD_039_to_044_itk_message_handling(msg):
    h = _handling(msg)
    assert h["RecipientType"]["valueCoding"]["code"] == "FA"                           # 039
    assert h["BusAckRequested"]["valueBoolean"] is True                                # 040
    assert h["InfAckRequested"]["valueBoolean"] is True                                # 041
    assert h["SenderReference"]["valueString"] == g.activity_reference("R00000001", "assessment")  # 042
    assert h["MessageDefinition"]["valueReference"]["reference"] == g.MESSAGE_DEFINITION  # 043
    assert h["LocalExtension"]["valueString"] == "None"                                # 044 (v2)


def test_GPCM_SD_042_sender_reference_identifies_the_activity_not_the_patient():
    ref = g.activity_reference("R00000001", "assessment")
    assert ref.startswith("urn:uuid:") and "R00000001" not in ref
    assert ref == g.activity_reference("R00000001", "assessment") != g.activity_reference("R00000001", "discharge")


def test_GPCM_SD_045_to_049_message_header(msg):
    header = _one(msg, "MessageHeader")
    header_org = g.resources(msg, "Organization")[0]
    assert header["sender"] == {"reference": msg["entry"][1]["fullUrl"]}               # 045
    assert header_org["identifier"] == [{"system": g.ODS, "value": "ZZZ01"}]
    assert header["source"] == {"endpoint": "X26ABC1"}                                  # 046
    assert header["event"]["code"] == "ITK007C" and header["event"]["system"] == g.ITK_EVENT  # 047
    assert "destination" not in header and "receiver" not in header                    # 049


def test_GPCM_SD_048_timestamp_is_when_the_message_was_generated_not_the_event_date():
    later = NOW + dt.timedelta(hours=5, minutes=7)
    msg = json.loads(_build(at=later))
    assert _one(msg, "MessageHeader")["timestamp"] == later.isoformat(timespec="seconds")
    with pytest.raises(ValueError):
        _build(at=dt.datetime(2026, 10, 15, 6, 0))          # a naive time is refused, never guessed


def test_GPCM_SD_105_and_113_to_122_composition(msg):
    comp = _one(msg, "Composition")
    doc_entries = {e["resource"]["resourceType"]: e["fullUrl"] for e in msg["entry"][2]["resource"]["entry"]}
    assert comp["status"] == "final"                                                    # 114
    assert comp["type"]["coding"] == [{"system": g.SNOMED, "code": "371531000",
                                       "display": "Report of clinical encounter"}]       # 115
    assert comp["date"] == NOW.isoformat(timespec="seconds")                            # 116
    assert comp["confidentiality"] == "N"                                               # 117
    assert comp["title"] == "Assessment letter"                                          # 118 (v2: the kind)
    assert ("Assessment letter for Ann Lee, NHS Number: 9990000018, seen at NHS Talking Therapies "
            "(Synthetic Service), ZZZ01, Version: 1") in comp["text"]["div"]              # 119 (v2 format)
    assert comp["subject"] == {"reference": doc_entries["Patient"]}                     # 106 / 120
    assert comp["author"] == [{"reference": doc_entries["Practitioner"]}]              # 107 / 121
    assert comp["custodian"] == {"reference": doc_entries["Organization"]}             # 105 / 122
    assert "relatesTo" not in comp                                                       # 123: never a replacement


def test_GPCM_SD_109_to_112_and_124_the_pdf_is_the_first_section_entry_base64(msg, raw):
    comp = _one(msg, "Composition")
    binary = _one(msg, "Binary")
    (section,) = comp["section"]
    assert section["entry"][0]["reference"] == f"urn:uuid:{binary['id']}"
    assert binary["contentType"] == "application/pdf"
    assert base64.b64decode(binary["content"]) == PDF
    assert pdf_of(raw) == PDF


def test_GPCM_SD_028_to_031_sending_organisation(msg):
    org = g.resources(msg, "Organization")[1]
    assert org["identifier"] == [{"system": g.ODS, "value": "ZZZ01"}]
    assert org["name"] == "NHS Talking Therapies (Synthetic Service)"
    assert org["telecom"] == [{"system": "phone", "value": "0113 000 0000", "use": "work"}]


def test_GPCM_SD_032_to_034_practitioner_with_sds_user_id(msg):
    pract = _one(msg, "Practitioner")
    assert pract["identifier"] == [{"system": g.SDS_USER_ID, "value": "999000000001"}]
    assert pract["name"] == [{"use": "official", "family": "Example", "given": ["Alex"], "prefix": ["Dr"]}]
    assert pract["telecom"] == [{"system": "phone", "value": "0113 000 0001", "use": "work"}]


def test_GPCM_SD_035_to_037_patient(msg):
    patient = _one(msg, "Patient")
    assert patient["identifier"] == [{"system": g.NHS_NUMBER, "value": "9990000018"}]
    assert patient["name"] == [{"use": "official", "family": "Lee", "given": ["Ann"]}]
    assert patient["birthDate"] == "1980-01-02"
    for missing in ("nhs_number", "family_name", "birth_date"):
        with pytest.raises(ValueError):
            _build(patient={**PATIENT, missing: None})


def test_GPCM_SD_038_056_063_mesh_routing_address_matches_the_patient_resource(msg):
    patient = _one(msg, "Patient")
    address = g.mesh_address(PATIENT)
    assert address == "GPPROVIDER_9990000018_19800102_Lee"
    _, nhs, dob, surname = address.split("_")
    assert (nhs, dob, surname) == (patient["identifier"][0]["value"], patient["birthDate"].replace("-", ""),
                                   patient["name"][0]["family"])
    assert g.mesh_address({**PATIENT, "family_name": "O'Brien-Zoë Ní Bhriain"}).endswith("_O'Brien-ZoeNiBhriain")
    assert g.mesh_address({**PATIENT, "birth_date": None}) == ""


def test_GPCM_SD_057_064_145_146_mesh_metadata():
    h = g.mesh_headers(DOC, PATIENT, SENDER, "gp_letters-abc")
    assert h["workflow_id"] == "GPCONNECT_SEND_DOCUMENT"                                # 057
    assert h["local_id"] == "ZZZ01"                                                     # 145 / 146
    assert h["subject"] == ("Assessment letter for Ann Lee, NHS Number: 9990000018, seen at NHS Talking "
                            "Therapies (Synthetic Service), ZZZ01, Version: 1")          # 061 / 064
    assert h["filename"] == "gp_letters-abc.json" and h["content_type"] == "application/fhir+json"


def test_mesh_subject_is_a_safe_header_for_any_name():
    from email.header import decode_header, make_header

    h = g.mesh_headers(DOC, {**PATIENT, "given_name": "Ζωή\r\nX-Evil: 1", "family_name": "Παπαδοπούλου"}, SENDER,
                       "gp_letters-abc")
    assert h["subject"].isascii() and "\n" not in h["subject"] and "\r" not in h["subject"]
    assert "Ζωή" in str(make_header(decode_header(h["subject"])))


def test_GPCM_SD_058_acks_use_the_ack_workflow():
    assert g.ACK_WORKFLOW == "GPCONNECT_SEND_DOCUMENT_ACK"


@pytest.mark.parametrize(("code", "kind", "positive"), [("20013", "infrastructure", True),
                                                         ("30001", "business", True),
                                                         ("30002", "business", False),
                                                         ("10001", "infrastructure", False)])
def test_itk3_acks_are_parsed_and_map_back_to_the_letter(raw, code, kind, positive):
    ack = ack_bundle(raw, code)
    fhir_stu3.Bundle.model_validate_json(ack)
    assert g.parse_ack(ack) == (g.message_header_id("gp_letters-abc"), kind, positive, code)


def test_the_same_letter_keeps_its_ids_across_builds():
    a, b = json.loads(_build()), json.loads(_build(at=NOW + dt.timedelta(days=1)))
    assert _one(a, "MessageHeader")["id"] == _one(b, "MessageHeader")["id"] == g.message_header_id("gp_letters-abc")
    assert a["identifier"] == b["identifier"]


def test_care_setting_is_sent_only_when_the_service_configures_it():
    assert "extension" not in _one(json.loads(_build()), "Composition")
    comp = _one(json.loads(_build(care_setting=("123456789", "Synthetic service"))), "Composition")
    assert comp["extension"][0]["url"] == g.CARE_SETTING_EXTENSION


# Not applicable to this sender, and why (kept here so the list is complete):
#  GPCM-SD-050..055, 065, 066, 074, 092, 093, 125..128: the receiver's (ITK3 responses, display, replacement).
#  GPCM-SD-059..061 (.CTL file): MESH client only; we use the MESH API (062..064, tested above).
#  GPCM-SD-083/084/089/096/135: the federated-consultation trigger rules of GP practices (PDS lookup, 3 hours).
#  GPCM-SD-098/123/129..132: versions and replacements; a letter is sent once (version 1), never replaced.
#  GPCM-SD-094/095 (tell a person when acks are missing or negative): check_acks, tests/peers and tests/e2e.
