"""Shared record checks: each finds its fault, names the record by opaque id, and says nothing more."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from caldicott.records import checks


def patients(**over):
    base = {"local_patient_id": ["P1", "P2", "P3"], "nhs_number": ["9990000018", "9990000026", "9990000034"],
            "postcode": ["LS1 4AB", "BD7 1XY", "S10 2QQ"], "birth_date": [dt.date(1980, 1, 1)] * 3,
            "gp_practice_code": ["Z84001", "Z84001", "Z84002"]}
    base.update(over)
    return pd.DataFrame(base)


def codes(items):
    return {(q.record_id, q.reason_code) for q in items}


def test_clean_patients_pass():
    assert checks.patient_problems(patients(), pd.Series(["Z84001", "Z84002"]), need_gp=True) == []


def test_each_patient_fault_is_named():
    df = patients(nhs_number=["9990000019", "9990000026", "9990000026"],
                  postcode=["LS14AB", "BD7 1XY", "S10 2QQ"],
                  birth_date=[dt.date(1980, 1, 1), None, dt.date(1980, 1, 1)],
                  gp_practice_code=["Z84001", None, "Z99999"])
    found = codes(checks.patient_problems(df, pd.Series(["Z84001"]), need_gp=True))
    assert found == {("P1", "invalid_nhs_number"), ("P1", "invalid_postcode"),
                     ("P2", "duplicate_nhs_number"), ("P3", "duplicate_nhs_number"),
                     ("P2", "missing_birth_date"), ("P2", "missing_gp_practice"), ("P3", "unknown_gp_practice")}


def test_reasons_carry_no_values():
    df = patients(nhs_number=["9990000019", "9990000026", "9990000034"])
    (item,) = checks.patient_problems(df)
    assert "9990000019" not in item.reason and item.record_id == "P1"


def test_referral_and_contact_faults():
    refs = pd.DataFrame({"service_request_id": ["R1", "R2"], "received_date": [dt.date(2026, 5, 10)] * 2,
                         "discharge_date": [dt.date(2026, 5, 1), None], "referrer_org_code": ["ZP000", "ZNOPE"]})
    assert codes(checks.referral_problems(refs, pd.Series(["ZP000"]))) == {
        ("R1", "discharge_before_referral"), ("R2", "unknown_referrer")}
    # 23:30 UTC on 9 May is 00:30 BST on 10 May: the same local day as receipt, so not "before"
    contacts = pd.DataFrame({"care_contact_id": ["C1", "C2"], "service_request_id": ["R1", "R2"],
                             "contact_at": [dt.datetime(2026, 5, 9, 23, 30), dt.datetime(2026, 5, 9, 22, 30)]})
    assert codes(checks.contact_problems(contacts, refs)) == {("C2", "contact_before_referral")}


def test_scores_out_of_range():
    scores = pd.DataFrame({"assessment_id": ["A1", "A2", "A3", "A4"],
                           "tool_code": ["720433000", "720433000", "445455005", "932581000000100"],
                           "score": [27, 28, -1, 8]})
    assert codes(checks.score_problems(scores)) == {("A2", "score_out_of_range"), ("A3", "score_out_of_range")}
