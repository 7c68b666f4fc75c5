"""Every registered validation rule: a valid record passes it, a record broken for it fails it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from caldicott.dataset import rules
from caldicott.dataset.builder import Dataset, Period, SourceMonth, build
from caldicott.records.schema import SNOMED

PERIOD = Period.month(2026, 9)


def tiny_source() -> SourceMonth:
    """Three patients with valid data, one referral each, contacts in the month, scores at and off contacts."""
    patients = pd.DataFrame({
        "local_patient_id": ["P1", "P2", "P3"], "nhs_number": ["9990000018", "9990000026", "9990000034"],
        "birth_date": [dt.date(1980, 1, 2), dt.date(1975, 5, 6), dt.date(2000, 12, 31)],
        "postcode": ["LS1 1AB", "BD7 2CD", "YO31 9ZZ"], "gender": ["1", "2", "9"], "ethnic_category": ["A", "H", "Z"],
        "gp_practice_code": ["Z84000", "Z84001", None], "dataset_objection_pre2020": [None, None, None],
        "dataset_objection_date": [None, None, None]})
    referrals = pd.DataFrame({
        "service_request_id": ["R1", "R2", "R3"], "local_patient_id": ["P1", "P2", "P3"],
        "commissioner_code": ["ZC1", "ZC1", "ZC1"],
        "received_date": [dt.date(2026, 8, 1), dt.date(2026, 9, 3), dt.date(2026, 7, 15)],
        "source_of_referral": ["B1", "A1", "C1"], "discharge_date": [None, None, dt.date(2026, 9, 20)],
        "end_code": [None, None, "46"], "presenting_problem_code": ["F32", "F41.1", "F41.2"]})
    at = [dt.datetime(2026, 9, 4, 9), dt.datetime(2026, 9, 10, 13), dt.datetime(2026, 9, 11, 16),
          dt.datetime(2026, 9, 18, 8)]
    contacts = pd.DataFrame({
        "care_contact_id": ["C1", "C2", "C3", "C4"], "service_request_id": ["R1", "R2", "R3", "R3"],
        "contact_at": at, "duration_minutes": [60, 45, 30, 30], "app_type": ["01", "01", "02", "02"],
        "attend_code": ["5", "6", "5", "5"], "cons_mechanism": ["01", "02", "04", "01"],
        "clinician_id": ["CL1", "CL2", "CL3", "CL3"]})
    assessments = pd.DataFrame({
        "assessment_id": ["A1", "A2", "A3", "A4", "A5", "A6"],
        "service_request_id": ["R1", "R1", "R3", "R3", "R2", "R2"],
        "care_contact_id": ["C1", "C1", "C3", "C4", None, None],
        "tool_code": [SNOMED["PHQ9"], SNOMED["GAD7"], SNOMED["PHQ9"], SNOMED["PHQ9"], SNOMED["PHQ9"], SNOMED["GAD7"]],
        "score": [14, 11, 12, 7, 20, 15],
        "assessed_at": [at[0], at[0], at[2], at[3], dt.datetime(2026, 9, 5, 10), dt.datetime(2026, 9, 6, 10)]})
    return SourceMonth(patients, referrals, contacts, assessments)


def tiny() -> Dataset:
    return build(tiny_source(), PERIOD, org_provider="ZZZ01", created_at=dt.datetime(2026, 10, 2, 9))


def test_baseline_passes_every_rule():
    ds = tiny()
    assert all(len(ds.tables[t]) for t in ds.tables), ds.counts()
    failing = {code: out for code, out in rules.evaluate(ds).items() if np.asarray(out).any()}
    assert failing == {}


def test_registry_codes_come_from_the_catalogue_and_cover_every_reject_file_rule():
    assert len(rules.REGISTRY) >= 120
    for code, rule in rules.REGISTRY.items():
        assert code in rules.CATALOGUE and rule.severity in {"REJECT_FILE", "REJECT_GROUP", "REJECT_RECORD", "WARNING"}
    reject_file = {c for c, (sev, _, _) in rules.CATALOGUE.items() if sev == "REJECT_FILE"}
    # IDSREJ101 (all records failed) is decided by screen() from before/after counts
    assert reject_file - set(rules.REGISTRY) == {"IDSREJ101"}


@pytest.mark.parametrize("code", rules.implemented())
def test_rule_fails_a_broken_record(code):
    rule = rules.REGISTRY[code]
    ds = tiny()
    assert not np.asarray(rule.check(ds)).any(), "the valid baseline must pass"
    rule.bad(ds)
    out = rule.check(ds)
    if rule.file_level:
        assert out is True or bool(out)
    else:
        mask = np.asarray(out)
        assert len(mask) == len(ds.tables[rule.table])
        assert mask[0], f"{code} did not flag the broken record"


def test_screen_quarantines_file_rejecting_records_and_their_dependants():
    ds = tiny()
    rules.REGISTRY["IDSREJ006"].bad(ds)         # P1 gets an invalid NHS number
    res = rules.screen(ds)
    assert res.file_failures == []
    codes = {(q.record_type, q.record_id, q.reason_code) for q in res.quarantined}
    assert ("IDS001MPI", "P1", "IDSREJ006") in codes
    assert ("IDS101Referral", "R1", "IDS10101") in codes        # its referral: no valid IDS001 group
    assert ("IDS201CareContact", "C1", "IDS20142") in codes
    assert ("IDS607CodedScoreAssessmentAct", "A1", "IDS60708") in codes
    assert "P1" not in set(ds.tables["IDS001MPI"]["LocalPatientId"])
    assert not rules.nhs_invalid(ds.tables["IDS001MPI"]["NHSNumber"]).any()
    # nothing left in the file fails a reject rule
    left = {c for c, out in rules.evaluate(ds).items() if np.asarray(out).any()}
    assert all(rules.REGISTRY[c].severity == "WARNING" for c in left)


def test_duplicate_nhs_numbers_quarantine_both_patients():
    ds = tiny()
    rules.REGISTRY["IDSREJ009"].bad(ds)
    res = rules.screen(ds)
    dup = {q.record_id for q in res.quarantined if q.reason_code == "IDSREJ009"}
    assert dup == {"P1", "P2"}


def test_all_records_failing_is_a_file_rejection():
    ds = tiny()
    ds.tables["IDS001MPI"]["Postcode"] = pd.Series(["BAD"] * 3, dtype="string[pyarrow]")
    res = rules.screen(ds)
    assert "IDSREJ101" in res.file_failures and "IDSREJ003" in res.file_failures


def test_nhs_invalid_agrees_with_the_shared_check():
    from caldicott.records.nhs_numbers import valid_mask

    rng = np.random.default_rng(3)
    nums = pd.Series([f"{n:010d}" for n in rng.integers(0, 10**10, 5000)] + ["1234554321", "0000000000", "12", None],
                     dtype="string[pyarrow]")
    present = nums.notna().to_numpy()
    assert (rules.nhs_invalid(nums)[present] == ~valid_mask(nums)[present]).all()
