"""Referrer updates, domain only: interval bounds (BST/GMT), minimum necessary on the bytes, the csv-v1
column set, quarantine of bad records, activity files and CMS envelopes. No SFTP, no Airflow.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from caldicott.crypto import cms
from caldicott.crypto.keys import make_identity
from caldicott.db import make_engine, sqlite_url
from caldicott.policy.purposes import Protection
from caldicott.policy.referrer_updates import ACTIVITY_FIELDS, SESSION_FIELDS, ContractOptions, session_fields
from caldicott.records import schema
from caldicott.records.synth import SUMMARIES
from caldicott.state.quarantine import entries
from caldicott.transport.base import Outbound
from caldicott.transport.ledger import Ledger, State
from caldicott.updates import build, deliver

SUMMARY_A = "Summary text that only the summaries contract may see."
SUMMARY_B = "Another private note about the session."


def _rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


@pytest.fixture
def tiny(tmp_path):
    """A hand-made records source: two referrers with contracts (one with summaries), an unknown referrer,
    sessions either side of the BST/GMT day boundaries, one contact before its referral."""
    eng = make_engine(sqlite_url(tmp_path / "records.db"))
    schema.metadata.create_all(eng)
    utc = dt.datetime
    with eng.begin() as c:
        c.execute(schema.organisation.insert(), [
            {"ods_code": "ZPA", "name": "Provider A", "kind": "provider"},
            {"ods_code": "ZPB", "name": "Provider B", "kind": "provider"}])
        c.execute(schema.contract.insert(), [{**dict.fromkeys(schema.contract.c.keys()), **row} for row in [
            {"contract_id": "CTA", "referrer_org_code": "ZPA", "name": "A", "active": True, "transport": "sftp",
             "connection_id": "x", "remote_path": "/in/a", "file_format": "csv-v1", "include_summaries": True,
             "include_activity": True},
            {"contract_id": "CTB", "referrer_org_code": "ZPB", "name": "B", "active": True, "transport": "sftp",
             "connection_id": "x", "remote_path": "/in/b", "file_format": "csv-v1", "include_summaries": False,
             "include_activity": True},
            {"contract_id": "CTM", "referrer_org_code": "ZPB", "name": "M", "active": True, "transport": "mesh",
             "mesh_mailbox": "X26ABC3", "mesh_workflow": "W", "file_format": "csv-v1",
             "include_summaries": False, "include_activity": False}]])
        c.execute(schema.patient.insert(), [
            {"local_patient_id": f"P{i}", "nhs_number": n, "given_name": "Given", "family_name": "Family",
             "copy_channel": "email", "gp_sharing_consent": True}
            for i, n in enumerate(["9990000018", "9990000026", "9990000034", "9990000042", "1234567890"])])
        c.execute(schema.referral.insert(), [
            {"service_request_id": "RA1", "local_patient_id": "P0", "referrer_org_code": "ZPA",
             "source_of_referral": "C1", "received_date": dt.date(2026, 6, 1)},
            {"service_request_id": "RB1", "local_patient_id": "P1", "referrer_org_code": "ZPB",
             "source_of_referral": "C1", "received_date": dt.date(2026, 6, 1)},
            {"service_request_id": "RX1", "local_patient_id": "P2", "referrer_org_code": "ZUNKNOWN",
             "source_of_referral": "C1", "received_date": dt.date(2026, 6, 1)},
            {"service_request_id": "RB2", "local_patient_id": "P3", "referrer_org_code": "ZPB",
             "source_of_referral": "C1", "received_date": dt.date(2026, 10, 25)},
            {"service_request_id": "RB3", "local_patient_id": "P4", "referrer_org_code": "ZPB",
             "source_of_referral": "C1", "received_date": dt.date(2026, 6, 1)}])

        def cc(cid, srid, at, attend="5", summary=SUMMARY_A):
            return {"care_contact_id": cid, "service_request_id": srid, "contact_at": at, "duration_minutes": 45,
                    "app_type": "02", "attend_code": attend, "cons_mechanism": "02", "clinical_summary": summary}

        c.execute(schema.care_contact.insert(), [
            # BST: 2026-07-01 local = [2026-06-30 23:00Z, 2026-07-01 23:00Z)
            cc("C1", "RA1", utc(2026, 6, 30, 23, 30)),           # 00:30 BST on 1 July: in
            cc("C2", "RA1", utc(2026, 7, 1, 22, 59)),            # 23:59 BST on 1 July: in
            cc("C3", "RA1", utc(2026, 7, 1, 23, 0)),             # 00:00 BST on 2 July: out
            cc("C4", "RB1", utc(2026, 7, 1, 9, 0), summary=SUMMARY_B),
            cc("C5", "RX1", utc(2026, 7, 1, 10, 0)),             # unknown referrer
            # the day the clocks go back (25 hours): [2026-10-24 23:00Z, 2026-10-26 00:00Z)
            cc("C6", "RB1", utc(2026, 10, 24, 23, 0), summary=SUMMARY_B),   # 00:00 BST 25 Oct: in
            cc("C7", "RB1", utc(2026, 10, 25, 23, 30), "3", SUMMARY_B),     # 23:30 GMT 25 Oct: in
            cc("C8", "RB1", utc(2026, 10, 26, 0, 0), summary=SUMMARY_B),    # 00:00 GMT 26 Oct: out
            cc("C9", "RB2", utc(2026, 10, 24, 23, 30), summary=SUMMARY_B),  # 24 Oct? no: 00:30 BST 25 Oct,
            # ... but its referral arrived on 25 Oct: fine. C10 is before its referral:
            cc("C10", "RB2", utc(2026, 10, 20, 10, 0), summary=SUMMARY_B),
            cc("C11", "RB3", utc(2026, 7, 1, 11, 0), summary=SUMMARY_B),    # invalid NHS number
        ])
    return make_engine(sqlite_url(tmp_path / "records.db"), readonly=True)


@pytest.mark.parametrize(("day", "start", "end"), [
    (dt.date(2026, 1, 15), dt.datetime(2026, 1, 15, 0), dt.datetime(2026, 1, 16, 0)),      # GMT
    (dt.date(2026, 7, 1), dt.datetime(2026, 6, 30, 23), dt.datetime(2026, 7, 1, 23)),       # BST
    (dt.date(2026, 3, 29), dt.datetime(2026, 3, 29, 0), dt.datetime(2026, 3, 29, 23)),      # 23 h
    (dt.date(2026, 10, 25), dt.datetime(2026, 10, 24, 23), dt.datetime(2026, 10, 26, 0)),   # 25 h
])
def test_london_day_bounds(day, start, end):
    assert build.london_bounds(day, day + dt.timedelta(days=1)) == (start, end)


def _sessions(records, contract_id, day):
    contract = deliver.load_contract(records, contract_id)
    options = build.contract_options(contract)
    rows, bad = build.screen(build.load_sessions(records, *build.london_bounds(day, day + dt.timedelta(days=1)),
                                                 options.referrer_ods), build.known_organisations(records))
    return options, rows, bad


def test_bst_day_takes_exactly_the_sessions_of_that_london_day(tiny):
    options, rows, _ = _sessions(tiny, "CTA", dt.date(2026, 7, 1))
    data = _rows(build.sessions_csv(options, rows))
    assert [r["care_contact_id"] for r in data] == ["C1", "C2"]
    assert [(r["contact_date"], r["contact_time"]) for r in data] == [("2026-07-01", "00:30"), ("2026-07-01", "23:59")]


def test_gmt_changeover_day_has_25_hours(tiny):
    options, rows, bad = _sessions(tiny, "CTB", dt.date(2026, 10, 25))
    data = _rows(build.sessions_csv(options, rows))
    assert sorted(r["care_contact_id"] for r in data) == ["C6", "C7", "C9"]
    times = {r["care_contact_id"]: r["contact_time"] for r in data}
    assert times == {"C6": "00:00", "C7": "23:30", "C9": "00:30"}
    assert not bad


def test_only_the_contracts_own_referrals(tiny):
    options, rows, _ = _sessions(tiny, "CTB", dt.date(2026, 7, 1))
    data = build.sessions_csv(options, rows)
    ids = [r["provider_referral_id"] for r in _rows(data)]
    assert ids == ["RB1"]                      # not RA1 (other referrer), not RX1 (unknown), not RB3 (bad NHS no.)
    assert b"RA1" not in data and b"RX1" not in data and b"9990000018" not in data


def test_contract_without_summaries_never_receives_summary_text(tiny):
    options, rows, _ = _sessions(tiny, "CTB", dt.date(2026, 10, 25))
    assert rows["clinical_summary"].notna().all()          # the source has summaries for these sessions ...
    data = build.sessions_csv(options, rows)
    assert SUMMARY_B.encode() not in data                  # ... and not one byte of them leaves
    assert b"clinical_summary" not in data
    assert data.split(b"\r\n")[0].decode().split(",") == list(SESSION_FIELDS)


def test_contract_with_summaries_receives_them(tiny):
    options, rows, _ = _sessions(tiny, "CTA", dt.date(2026, 7, 1))
    data = build.sessions_csv(options, rows)
    assert data.split(b"\r\n")[0].decode().split(",") == [*SESSION_FIELDS, "clinical_summary"]
    assert [r["clinical_summary"] for r in _rows(data)] == [SUMMARY_A, SUMMARY_A]


def test_nothing_else_from_the_record_leaves(tiny):
    options, rows, _ = _sessions(tiny, "CTA", dt.date(2026, 7, 1))
    data = build.sessions_csv(options, rows)
    for word in (b"Given", b"Family", b"P0"):
        assert word not in data


def test_bad_records_are_quarantined_with_reasons(tiny, state_engine):
    planned = deliver.plan_interval(tiny, state_engine, dt.date(2026, 7, 1), dt.date(2026, 7, 2), "2026-07-01")
    assert planned["contract_ids"] == ["CTA", "CTB", "CTM"]
    found = {(q.record_type, q.record_id, q.reason_code)
             for q in entries(state_engine, "referrer_updates", "2026-07-01")}
    assert found == {("referral", "RX1", "unknown_referrer"), ("patient", "P4", "invalid_nhs_number")}
    _, rows, bad = _sessions(tiny, "CTB", dt.date(2026, 10, 20))
    assert rows.empty
    assert [(q.record_id, q.reason_code) for q in bad] == [("C10", "contact_before_referral")]


def test_csv_is_crlf_utf8_and_quotes_commas():
    import pandas as pd

    options = ContractOptions("CT9", "ZP9", "sftp", include_summaries=True)
    rows = pd.DataFrame([{"care_contact_id": "C1", "service_request_id": "R1", "contact_at": dt.datetime(2026, 1, 5, 9),
                          "duration_minutes": 30, "app_type": "02", "attend_code": "5", "cons_mechanism": "01",
                          "clinical_summary": 'Zoë said "fine", then left', "nhs_number": "9990000018"}])
    data = build.sessions_csv(options, rows)
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    assert _rows(data)[0]["clinical_summary"] == 'Zoë said "fine", then left'
    assert _rows(data)[0]["duration_minutes"] == "30"
    empty = build.sessions_csv(ContractOptions("CT9", "ZP9", "sftp"), rows.iloc[0:0])
    assert empty == (",".join(SESSION_FIELDS) + "\r\n").encode()


def test_unsupported_format_is_refused():
    with pytest.raises(ValueError, match="unsupported file format"):
        session_fields(ContractOptions("CT9", "ZP9", "sftp", file_format="fhir"))


def test_activity_file_counts_per_referral(tiny):
    options, _, _ = _sessions(tiny, "CTB", dt.date(2026, 10, 25))
    start, end = build.london_bounds(*build.month_bounds(dt.date(2026, 10, 1)))
    rows, _ = build.screen(build.load_sessions(tiny, start, end, "ZPB"), build.known_organisations(tiny))
    data = build.activity_csv(options, "2026-10", rows)
    assert data.split(b"\r\n")[0].decode().split(",") == list(ACTIVITY_FIELDS)
    by_ref = {r["provider_referral_id"]: r for r in _rows(data)}
    assert set(by_ref) == {"RB1", "RB2"}
    assert by_ref["RB1"]["sessions_attended"] == "2" and by_ref["RB1"]["sessions_dna"] == "1"
    assert by_ref["RB1"]["minutes_attended"] == "90"
    assert by_ref["RB1"]["first_contact_date"] == "2026-10-25" and by_ref["RB1"]["last_contact_date"] == "2026-10-26"
    assert SUMMARY_B.encode() not in data


@pytest.mark.parametrize(("first", "month"), [
    (dt.date(2026, 10, 31), dt.date(2026, 10, 1)), (dt.date(2026, 11, 1), None), (dt.date(2026, 10, 14), None),
    (dt.date(2026, 2, 28), dt.date(2026, 2, 1))])
def test_activity_month_is_produced_by_the_run_that_closes_the_month(first, month):
    assert build.activity_month_for(first, first + dt.timedelta(days=1)) == month


def test_file_names_are_deterministic():
    name = deliver.file_name("CT001", "sessions", "2026-10-14", encrypted=False)
    assert name == "CT001_sessions_2026-10-14_csv-v1.csv"
    assert deliver.file_name("CT001", "activity", "2026-10", encrypted=True).endswith(".csv.p7m")
    assert deliver.period_key(dt.date(2026, 10, 1), dt.date(2026, 11, 1)) == "2026-10"


class _Capture:
    channel = "sftp"

    def __init__(self):
        self.items: list[Outbound] = []

    def send(self, item):
        self.items.append(item)
        return f"/x/{item.headers['filename']}"

    def already_delivered(self, item):
        return None


def test_mesh_contract_is_held_not_sent(tiny, state_engine):
    result = deliver.deliver_contract(tiny, state_engine, "CTM", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                      "2026-07-01", lambda o, c: None)
    assert result.files == {"sessions": "held"}
    assert "transport not available" in result.held_reasons["sessions"]
    states = Ledger(state_engine).counts("referrer_updates")
    assert states == {State.HELD.value: 1}


def test_encrypted_contract_gets_a_cms_envelope(tiny, state_engine, tmp_path):
    ident = make_identity("ZPA")
    contract = {**deliver.load_contract(tiny, "CTA"), "certificate_pem": ident.cert_pem.decode()}
    sender = _Capture()
    result = deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                      "2026-07-01", lambda o, c: sender, contract=contract)
    assert result.files == {"sessions": "sent"}
    (item,) = sender.items
    assert item.protection == Protection.CMS and item.headers["filename"].endswith(".csv.p7m")
    assert SUMMARY_A.encode() not in item.payload
    plain = cms.decrypt_file(item.payload, ident.cert_pem, ident.key_pem)
    assert [r["care_contact_id"] for r in _rows(plain)] == ["C1", "C2"]


def test_unusable_certificate_holds_the_file(tiny, state_engine):
    contract = {**deliver.load_contract(tiny, "CTA"), "certificate_pem": "not a certificate"}
    sender = _Capture()
    result = deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                      "2026-07-01", lambda o, c: sender, contract=contract)
    assert result.files == {"sessions": "held"} and not sender.items


def test_synthetic_no_summaries_contract_over_a_month(synth_source, state_engine):
    """Over a whole month of the 600-patient source: not one summary sentence reaches a no-summaries contract."""
    contracts = synth_source.result.frames["contract"]
    cid = contracts.loc[~contracts["include_summaries"], "contract_id"].iloc[0]
    sender = _Capture()
    deliver.deliver_contract(synth_source.engine, state_engine, cid, dt.date(2026, 10, 1), dt.date(2026, 11, 1),
                             "2026-10", lambda o, c: sender, activity_month=dt.date(2026, 10, 1))
    assert len(sender.items) == 2
    for item in sender.items:
        for text in SUMMARIES:
            assert text.encode() not in item.payload


def test_missing_connection_fails_naming_the_contract_only(tiny, state_engine):
    def factory(options, contract):
        raise LookupError("The conn_id `x` isn't defined")

    with pytest.raises(deliver.ContractDeliveryError) as info:
        deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2), "2026-07-01",
                                 factory)
    assert str(info.value) == "contract CTA: transport not configured (LookupError)"
    assert Ledger(state_engine).counts("referrer_updates") == {State.INTENDED.value: 1}


def test_rerun_of_a_delivered_interval_builds_nothing(tiny, state_engine):
    sender = _Capture()
    args = (tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2), "2026-07-01")
    first = deliver.deliver_contract(*args, lambda o, c: sender)
    again = deliver.deliver_contract(*args, lambda o, c: pytest.fail("no sender is needed on a re-run"))
    assert first.files == {"sessions": "sent"} and first.rows == {"sessions": 2}
    assert again.files == {"sessions": "already_sent"} and len(sender.items) == 1


def test_an_nhs_number_held_by_two_local_patients_is_quarantined(tiny, tmp_path):
    """The referrer files an update by NHS number: one held twice could land on the wrong patient's record."""
    day = dt.date(2026, 7, 1)
    _, rows, _ = _sessions(tiny, "CTB", day)
    assert "C4" in set(rows["care_contact_id"])       # P1's session goes out while the number is P1's alone
    with make_engine(sqlite_url(tmp_path / "records.db")).begin() as c:   # a second, never-referred record
        c.execute(schema.patient.insert(), {"local_patient_id": "P9", "nhs_number": "9990000026",
                                            "given_name": "G", "family_name": "F", "copy_channel": "email",
                                            "gp_sharing_consent": True})
    _, rows, bad = _sessions(tiny, "CTB", day)
    assert "C4" not in set(rows["care_contact_id"])
    assert ("patient", "P1", "duplicate_nhs_number") in {(q.record_type, q.record_id, q.reason_code) for q in bad}


# ---- fhir-r4-v1: the same rows and fields as a FHIR R4 Bundle ------------------------------------------

FHIR_NAMESPACE = "https://fhir.caldicott.invalid"


@pytest.fixture(autouse=True)
def _fhir_namespace(monkeypatch):
    """The service's FHIR namespace is configuration (fail closed without it): the tests configure one."""
    monkeypatch.setenv("CALDICOTT_FHIR_NAMESPACE", FHIR_NAMESPACE)

def _fhir(records, contract_id, day, **override):
    contract = {**deliver.load_contract(records, contract_id), "file_format": "fhir-r4-v1", **override}
    options = build.contract_options(contract)
    rows, _ = build.screen(build.load_sessions(records, *build.london_bounds(day, day + dt.timedelta(days=1)),
                                               options.referrer_ods), build.known_organisations(records))
    return options, rows, build.sessions_file(options, rows, day.isoformat())


def _b64(text: str) -> bytes:
    import base64

    return base64.b64encode(text.encode())


def test_fhir_bundle_structure(tiny):
    import json

    from caldicott.updates import fhir

    _, _, data = _fhir(tiny, "CTA", dt.date(2026, 7, 1))
    bundle = json.loads(data)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["meta"]["tag"] == [{"system": fhir.systems().format_tag, "code": "fhir-r4-v1"}]
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["ServiceRequest", "Encounter", "DocumentReference", "Encounter", "DocumentReference"]
    # every entry is addressed by its urn:uuid, and every reference inside the bundle resolves to an entry
    urls = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert all(url == f"urn:uuid:{r['id']}" for url, r in urls.items())
    refs = [ref for e in fhir.resources(data, "Encounter") for ref in e["basedOn"]] + [
        ref for d in fhir.resources(data, "DocumentReference") for ref in d["context"]["encounter"]]
    assert refs and all(r["reference"] in urls for r in refs)

    (referral,) = fhir.resources(data, "ServiceRequest")
    assert referral["identifier"] == [{"system": fhir.systems().referral_id, "value": "RA1"}]
    assert referral["requester"]["identifier"] == {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                   "value": "ZPA"}
    assert referral["status"] == "unknown" and referral["intent"] == "order"
    encounters = fhir.resources(data, "Encounter")
    assert [e["identifier"] for e in encounters] == [[{"system": fhir.systems().care_contact_id, "value": c}]
                                                     for c in ("C1", "C2")]
    for resource in [referral, *encounters, *fhir.resources(data, "DocumentReference")]:
        assert resource["subject"] == {"type": "Patient", "identifier": {
            "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}}
    first = encounters[0]
    assert first["period"] == {"start": "2026-07-01T00:30:00+01:00", "end": "2026-07-01T01:15:00+01:00"}
    assert first["status"] == "finished"
    assert first["extension"] == [{"url": fhir.systems().attendance_extension, "valueCoding": {
        "system": fhir.systems().attendance, "code": "5", "display": fhir.ATTENDANCE["5"][0]}}]
    assert first["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR",
                              "display": "virtual"}
    assert [t["coding"][0]["system"] for t in first["type"]] == [fhir.systems().appointment_type,
                                                                 fhir.systems().mechanism]
    assert [t["coding"][0]["code"] for t in first["type"]] == ["02", "02"]
    notes = fhir.resources(data, "DocumentReference")
    assert [fhir.summary_text(d) for d in notes] == [SUMMARY_A, SUMMARY_A]
    assert [d["context"]["encounter"][0]["reference"] for d in notes] == [f"urn:uuid:{e['id']}" for e in encounters]
    assert _b64(SUMMARY_A) in data
    # no Patient or Organization resource, nothing of the record beyond the fields of the policy
    for word in (b"Given", b"Family", b"P0", b'"resourceType":"Patient"', b'"resourceType":"Organization"'):
        assert word not in data


def test_fhir_contract_without_summaries_never_receives_summary_text(tiny):
    options, rows, data = _fhir(tiny, "CTB", dt.date(2026, 10, 25))
    assert not options.include_summaries and rows["clinical_summary"].notna().all()   # the source has them ...
    assert SUMMARY_B.encode() not in data and _b64(SUMMARY_B) not in data              # ... none leaves, in any form
    assert b"DocumentReference" not in data and b"attachment" not in data
    with_summaries = build.sessions_file(build.contract_options(
        {**deliver.load_contract(tiny, "CTB"), "file_format": "fhir-r4-v1", "include_summaries": True}),
        rows, "2026-10-25")
    assert _b64(SUMMARY_B) in with_summaries                                           # (the check can fail)


def test_fhir_maps_attendance_and_is_deterministic(tiny):
    from caldicott.updates import fhir

    _, rows, data = _fhir(tiny, "CTB", dt.date(2026, 10, 25))
    by_id = {e["identifier"][0]["value"]: e for e in fhir.resources(data, "Encounter")}
    assert set(by_id) == {"C6", "C7", "C9"}
    assert by_id["C7"]["status"] == "cancelled"                 # AttendOrDNACode 3: did not attend
    assert by_id["C7"]["extension"][0]["valueCoding"]["code"] == "3"
    assert by_id["C7"]["period"]["start"] == "2026-10-25T23:30:00+00:00"   # GMT after the clocks went back
    assert by_id["C6"]["period"]["start"] == "2026-10-25T00:00:00+01:00"
    assert len(fhir.resources(data, "ServiceRequest")) == 2      # RB1 and RB2, once each
    again = build.sessions_file(build.contract_options(
        {**deliver.load_contract(tiny, "CTB"), "file_format": "fhir-r4-v1"}), rows, "2026-10-25")
    assert again == data


def test_fhir_empty_day_and_unknown_codes():
    import json

    import pandas as pd
    from caldicott.updates import fhir

    options = ContractOptions("CT9", "ZP9", "sftp", file_format="fhir-r4-v1")
    empty = json.loads(build.sessions_file(options, pd.DataFrame(columns=list(build.SESSION_COLUMNS)), "2026-01-05"))
    assert empty["type"] == "collection" and "entry" not in empty          # FHIR JSON has no empty arrays
    rows = pd.DataFrame([{"care_contact_id": "C1", "service_request_id": "R1", "contact_at": dt.datetime(2026, 1, 5, 9),
                          "duration_minutes": None, "app_type": None, "attend_code": "9", "cons_mechanism": None,
                          "clinical_summary": "x", "nhs_number": "9990000018"}])
    (enc,) = fhir.resources(build.sessions_file(options, rows, "2026-01-05"), "Encounter")
    assert enc["status"] == "unknown" and enc["period"] == {"start": "2026-01-05T09:00:00+00:00"}
    assert enc["class"] == {"extension": [{"url": fhir.DATA_ABSENT, "valueCode": "unknown"}]}
    assert "type" not in enc


def test_fhir_contract_file_names_and_encryption(tiny, state_engine):
    from caldicott.updates import fhir

    ident = make_identity("ZPA")
    contract = {**deliver.load_contract(tiny, "CTA"), "file_format": "fhir-r4-v1"}
    sender = _Capture()
    deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2), "2026-07-01",
                             lambda o, c: sender, contract=contract)
    (plain,) = sender.items
    assert plain.headers["filename"] == "CTA_sessions_2026-07-01_fhir-r4-v1.json"
    assert plain.headers["content_type"] == "application/fhir+json"
    assert [e["identifier"][0]["value"] for e in fhir.resources(plain.payload, "Encounter")] == ["C1", "C2"]

    sender = _Capture()
    contract = {**contract, "contract_id": "CTA", "certificate_pem": ident.cert_pem.decode()}
    result = deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 2), dt.date(2026, 7, 3),
                                      "2026-07-02", lambda o, c: sender, contract=contract,
                                      activity_month=dt.date(2026, 7, 1))
    assert result.files == {"sessions": "sent", "activity": "sent"}
    names = sorted(i.headers["filename"] for i in sender.items)
    assert names == ["CTA_activity_2026-07_csv-v1.csv.p7m", "CTA_sessions_2026-07-02_fhir-r4-v1.json.p7m"]
    sessions = next(i for i in sender.items if i.headers["kind"] == "sessions")
    decrypted = cms.decrypt_file(sessions.payload, ident.cert_pem, ident.key_pem)
    assert [e["identifier"][0]["value"] for e in fhir.resources(decrypted, "Encounter")] == ["C3"]


@pytest.mark.parametrize("retryable", [True, False])
def test_retry_is_the_transports_call_not_a_guess_from_the_message(tiny, state_engine, retryable):
    """A final transport error (e.g. a remote path that is not a file) fails the task at once; a passing one
    (peer down) lets Airflow retry. The message names the contract and the transport's words only."""
    from caldicott.transport.base import TransportError

    class Refusing(_Capture):
        def send(self, item):
            raise TransportError("CTA: remote path for this file is not a regular file", retryable=retryable)

    with pytest.raises(deliver.ContractDeliveryError) as info:
        deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2), "2026-07-01",
                                 lambda o, c: Refusing())
    assert info.value.retryable is retryable
    assert str(info.value) == ("contract CTA: 1 file(s) not delivered: "
                               "CTA: remote path for this file is not a regular file")


def test_fhir_hostile_text_round_trips():
    """Control characters, quotes, markup, bidi overrides and emoji in a summary: valid JSON, text unchanged."""
    import json

    import pandas as pd
    from caldicott.updates import fhir

    texts = ['Zoë said "fine", then left', "\x00\x01\x1b[31mred\x1b[0m", "line\r\nbreak", "\u202eevil\u202c",
             "😀🏥💊", "</script><script>alert(1)</script>", "{{ 7*7 }} '; DROP TABLE patient; --"]
    rows = pd.DataFrame([{"care_contact_id": f"C{i}", "service_request_id": "R1",
                          "contact_at": dt.datetime(2026, 1, 5, 9, i), "duration_minutes": 30, "app_type": "02",
                          "attend_code": "5", "cons_mechanism": "01", "clinical_summary": t,
                          "nhs_number": "9990000018"} for i, t in enumerate(texts)])
    data = build.sessions_file(ContractOptions("CT9", "ZP9", "sftp", file_format="fhir-r4-v1",
                                               include_summaries=True), rows, "2026-01-05")
    json.loads(data)
    assert [fhir.summary_text(d) for d in fhir.resources(data, "DocumentReference")] == texts


# ---- data hygiene: shared care contact ids, control characters in free text (issue 13) --------------------------

def test_a_care_contact_id_shared_by_two_referrals_is_quarantined_on_both_rows():
    """Two referrals (two patients) carrying the same care contact id: neither row may leave, since the referrer keys
    updates on that id; the care contact and both referrals are quarantined (data set rule IDS20143)."""
    import pandas as pd

    base = {"contact_at": dt.datetime(2026, 7, 1, 9), "received_date": dt.date(2026, 6, 1), "referrer_org_code": "ZPA",
            "nhs_holders": 1}
    rows = pd.DataFrame([
        {**base, "care_contact_id": "C1", "service_request_id": "RA1", "nhs_number": "9990000018",
         "local_patient_id": "P0"},
        {**base, "care_contact_id": "C1", "service_request_id": "RA2", "nhs_number": "9990000026",
         "local_patient_id": "P1"},
        {**base, "care_contact_id": "C2", "service_request_id": "RA1", "nhs_number": "9990000018",
         "local_patient_id": "P0"},
        # one row here, but the source holds a twin elsewhere (another referrer's referral): held back as well
        {**base, "care_contact_id": "C3", "service_request_id": "RA3", "nhs_number": "9990000034",
         "local_patient_id": "P2", "contact_holders": 2},
    ])
    rows["contact_holders"] = rows["contact_holders"].fillna(1)
    kept, bad = build.screen(rows, {"ZPA"})
    assert kept["care_contact_id"].tolist() == ["C2"]
    found = {(q.record_type, q.record_id) for q in bad if q.reason_code == "duplicate_care_contact_id"}
    assert found == {("care_contact", "C1"), ("referral", "RA1"), ("referral", "RA2"), ("care_contact", "C3"),
                     ("referral", "RA3")}
    assert all("9990" not in q.reason for q in bad)


def test_control_and_bidi_characters_are_removed_from_summaries_and_reported_as_counts(tiny, state_engine, tmp_path):
    from caldicott.updates import free_text

    hostile = "Mood \x00better\u202e, sleep \x1b[31mpoor\x1b[0m\u2066x\u2069;\r\nplan\tagreed. Ζωή שלום 😀"
    with make_engine(sqlite_url(tmp_path / "records.db")).begin() as c:     # (the fixture's engine is read-only)
        c.execute(schema.care_contact.update().where(schema.care_contact.c.care_contact_id == "C1")
                  .values(clinical_summary=hostile))
    sender = _Capture()
    result = deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                      "2026-07-01", lambda o, c: sender)
    (item,) = sender.items
    rows = {r["care_contact_id"]: r for r in csv.DictReader(io.StringIO(item.payload.decode("utf-8"), newline=""))}
    text = rows["C1"]["clinical_summary"]
    for bad in ("\x00", "\x1b", "\u202e", "\u2066", "\u2069", "\r"):
        assert bad not in text
    assert text == "Mood better, sleep [31mpoor[0mx;\nplan\tagreed. Ζωή שלום 😀"
    assert result.text_cleaned == {"values_changed": 1, "bidi_controls": 3, "control_characters": 3}
    assert deliver.summarise([result.as_dict()])["text_cleaned"] == result.text_cleaned
    assert "Mood" not in str(result.as_dict())                  # counts only, never the text
    assert free_text.clean_text("tab\tand\nnewline stay")[0] == "tab\tand\nnewline stay"


def _ledger_detail(state_engine, item: str) -> str | None:
    from sqlalchemy import text

    with state_engine.connect() as c:
        return c.execute(text("SELECT detail FROM delivery_ledger WHERE item_id = :i"), {"i": item}).scalar()


@pytest.mark.parametrize(("country", "why"), [("US", "adequacy: US not on the adequacy list"),
                                              ("", "adequacy: recipient country unknown")])
def test_a_referrer_outside_the_adequacy_list_gets_nothing_and_the_ledger_says_why(tiny, state_engine, tmp_path,
                                                                                  country, why):
    """The file declares its referrer's country (organisation.country); the release gateway refuses one not on the
    adequacy list, or none, and the ledger holds the file with the rule."""
    with make_engine(sqlite_url(tmp_path / "records.db")).begin() as c:     # (the fixture's engine is read-only)
        c.execute(schema.organisation.update().where(schema.organisation.c.ods_code == "ZPA").values(country=country))
    sender = _Capture()
    result = deliver.deliver_contract(tiny, state_engine, "CTA", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                      "2026-07-01", lambda o, c: sender)
    assert result.files == {"sessions": "held"} and not sender.items
    assert why in result.held_reasons["sessions"]
    item = deliver.item_id(deliver.FLOW, "CTA", "sessions", "2026-07-01")
    assert Ledger(state_engine).get(item).state == State.HELD.value
    assert why in (_ledger_detail(state_engine, item) or "")
    # the other referrer, in GB, still gets its file, declaring its country
    other = deliver.deliver_contract(tiny, state_engine, "CTB", dt.date(2026, 7, 1), dt.date(2026, 7, 2),
                                     "2026-07-01", lambda o, c: sender)
    assert other.files == {"sessions": "sent"} and sender.items[0].headers["country"] == "GB"
