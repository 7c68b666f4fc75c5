"""fhir-r4-v1 referrer files against FHIR R4 models no one here wrote (``fhir.resources`` R4B: identical to R4 for
Bundle, ServiceRequest, Encounter and DocumentReference), UK Core profiles, NHS Data Dictionary displays for every
code of the IAPT v2.1 value sets, and the namespace as configuration (fail closed)."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from caldicott.policy.referrer_updates import ContractOptions
from caldicott.updates import deliver, fhir

r4_bundle = pytest.importorskip("fhir.resources.R4B.bundle", reason="fhir.resources (test dependency) not installed")

NS = "https://fhir.caldicott.invalid"
#: Permitted codes, from the reference value sets (NHS England's v2.0 value sets: IDS20128
#: AttendOrDNACode, IDS20156 AppType) and, for v2.1's ConsMechanism (CONSULTATION MECHANISM (MENTAL HEALTH), which
#: replaced v2.0's ConsMediumUsed), the NHS Data Dictionary element's national codes.
ATTEND_CODES = ["2", "3", "4", "5", "6", "7"]
MECHANISM_V21 = {"01": "Face to face", "02": "Telephone", "04": "Talk type for a person unable to speak",
                 "05": "Email", "09": "Text Message (Asynchronous)", "10": "Instant messaging (Synchronous)",
                 "11": "Video consultation", "12": "Message Board (Asynchronous)", "13": "Chat Room (Synchronous)",
                 "98": "Other"}


def _rows(n: int = 3, **override) -> pd.DataFrame:
    mechanisms = list(MECHANISM_V21)
    return pd.DataFrame([{"care_contact_id": f"C{i}", "service_request_id": f"R{i % 2}",
                          "contact_at": dt.datetime(2026, 7, 1, 9, i), "duration_minutes": 45,
                          "app_type": "01" if i == 0 else "02", "attend_code": ATTEND_CODES[i % len(ATTEND_CODES)],
                          "cons_mechanism": mechanisms[i % len(mechanisms)], "clinical_summary": f"Summary {i}",
                          "nhs_number": "9990000018", **override} for i in range(n)])


def _bundle(rows: pd.DataFrame, summaries: bool = True, namespace: str = NS) -> bytes:
    options = ContractOptions("CT9", "ZP9", "sftp", file_format="fhir-r4-v1", include_summaries=summaries)
    return fhir.sessions_bundle(options, rows, "2026-07-01", namespace=namespace)


@pytest.mark.parametrize(("n", "summaries"), [(0, True), (12, True), (12, False)])
def test_files_validate_against_the_fhir_r4_models(n, summaries):
    data = _bundle(_rows(n), summaries)
    parsed = r4_bundle.Bundle.model_validate_json(data)
    assert parsed.type == "collection"
    kinds = {type(e.resource).__name__ for e in parsed.entry or []}
    assert kinds == ({"ServiceRequest", "Encounter"} | ({"DocumentReference"} if summaries else set()) if n else set())


def test_the_models_can_fail():
    bad = json.loads(_bundle(_rows(1)))
    bad["entry"][1]["resource"]["class"] = [bad["entry"][1]["resource"]["class"]]   # R5's shape, not R4's
    with pytest.raises(ValueError):
        r4_bundle.Bundle.model_validate(bad)


def test_every_resource_claims_its_uk_core_profile():
    bundle = json.loads(_bundle(_rows(4)))
    assert bundle["meta"]["profile"] == ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Bundle"]
    for entry in bundle["entry"]:
        kind = entry["resource"]["resourceType"]
        assert entry["resource"]["meta"]["profile"] == [f"https://fhir.hl7.org.uk/StructureDefinition/UKCore-{kind}"]


def test_every_attendance_code_has_its_data_dictionary_display():
    assert sorted(fhir.ATTENDANCE) == sorted(ATTEND_CODES)
    assert fhir.ATTENDANCE["5"][0].startswith("Attended on time or, if late, before the relevant care professional")
    assert fhir.ATTENDANCE["3"][0] == "Did not attend - no advance warning given"


def test_every_v2_1_consultation_mechanism_has_its_data_dictionary_display():
    """The old table called 04 "video" and 05 "talk type"; 11 (video in v2.1) had no display at all."""
    for code, display in MECHANISM_V21.items():
        assert fhir.MECHANISMS[code][0] == display, code
    assert fhir.MECHANISMS["04"][0] == "Talk type for a person unable to speak"
    assert fhir.MECHANISMS["05"][0] == "Email"
    assert fhir.MECHANISMS["06"][0] == "Short Message Service (SMS) - Text Messaging"   # v2.0, retired in v2.1
    assert fhir.MECHANISMS["11"] == ("Video consultation", "VR")
    assert fhir.MECHANISMS["01"][1] == "AMB" and fhir.MECHANISMS["98"][1] is None


def test_codes_in_the_file_carry_those_displays():
    bundle = json.loads(_bundle(_rows(10)))
    for enc in (e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"):
        mechanism = enc["type"][1]["coding"][0]
        assert mechanism["display"] == MECHANISM_V21[mechanism["code"]]
        attend = enc["extension"][0]["valueCoding"]
        assert attend["display"] == fhir.ATTENDANCE[attend["code"]][0]


def test_identifier_and_code_systems_are_under_the_configured_namespace():
    data = _bundle(_rows(2), namespace="https://fhir.trust-a.invalid/")
    assert b".example" not in data and b"https://fhir.trust-a.invalid/Id/iapt-care-contact-id" in data
    assert b"https://fhir.trust-a.invalid/CodeSystem/iapt-consultation-mechanism" in data


def test_no_namespace_configured_refuses_with_a_clear_error(monkeypatch):
    monkeypatch.delenv(fhir.NAMESPACE_ENV, raising=False)
    with pytest.raises(fhir.NamespaceNotConfigured, match="CALDICOTT_FHIR_NAMESPACE"):
        _bundle(_rows(1), namespace=None)
    for bad in ("http://plain.invalid", "fhir.invalid", "https://x.invalid/?q=1"):
        with pytest.raises(fhir.NamespaceNotConfigured):
            fhir.systems(bad)


def test_a_contract_whose_file_cannot_be_built_is_held_with_the_reason(monkeypatch, synth_source, state_engine):
    """Fail closed through delivery: the session file is held in the ledger, saying what to configure."""
    monkeypatch.delenv(fhir.NAMESPACE_ENV, raising=False)
    contracts = synth_source.result.frames["contract"]
    cid = contracts["contract_id"].iloc[0]
    contract = {**deliver.load_contract(synth_source.engine, cid), "file_format": "fhir-r4-v1"}
    sent = []

    class Sender:
        channel = contract["transport"]

        def send(self, item):
            sent.append(item)
            return "ref"

        def already_delivered(self, item):
            return None

    day = dt.date(2026, 10, 14)
    result = deliver.deliver_contract(synth_source.engine, state_engine, cid, day, day + dt.timedelta(days=1),
                                      day.isoformat(), lambda o, c: Sender(), contract=contract)
    assert result.files["sessions"] == "held" and "CALDICOTT_FHIR_NAMESPACE" in result.held_reasons["sessions"]
    assert not [i for i in sent if i.headers["kind"] == "sessions"]

