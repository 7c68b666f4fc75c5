"""Every registered validation rule: a valid record passes it, a record broken for it fails it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from caldicott.dataset import rules
from caldicott.dataset.builder import Dataset, Period, SourceMonth, build
from caldicott.records.schema import SNOMED

from tests.unit.dataset import factory

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
        "end_code": [None, None, "46"], "presenting_problem_code": ["F32", "F41.1", "F41.2"],
        "presenting_problem_significance": ["1", "1", "2"]})
    at = [dt.datetime(2026, 9, 4, 9), dt.datetime(2026, 9, 10, 13), dt.datetime(2026, 9, 11, 16),
          dt.datetime(2026, 9, 18, 8)]
    contacts = pd.DataFrame({
        "care_contact_id": ["C1", "C2", "C3", "C4"], "service_request_id": ["R1", "R2", "R3", "R3"],
        "contact_at": at, "duration_minutes": [60, 45, 30, 30], "app_type": ["01", "01", "02", "02"],
        "attend_code": ["5", "6", "5", "5"], "cons_mechanism": ["01", "02", "04", "01"],
        "clinician_id": ["CL1", "CL2", "CL3", "CL3"], "ltc_service": ["N", "N", "Y", "Y"]})
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
    """The builder's tiny month passes every rule: the source's 3-character ICD-10 code F32 and F41.1 are written
    F32X and F411 (IDS60309/IDS60310 want 4-6 characters), IAPTLTCServiceInd and PresCompCodSig come from the
    source."""
    ds = tiny()
    assert all(len(ds.tables[t]) for t in ("IDS001MPI", "IDS101Referral", "IDS201CareContact",
                                            "IDS607CodedScoreAssessmentAct")), ds.counts()
    failing = {code: out for code, out in rules.evaluate(ds).items() if np.asarray(out).any()}
    assert failing == {}
    assert ds.tables["IDS603PresentingComplaints"]["PresComp"].tolist() == ["F411"]   # R2, the one new referral
    assert set(ds.tables["IDS201CareContact"]["IAPTLTCServiceInd"]) == {"N", "Y"}


def test_registry_codes_come_from_the_catalogue_and_cover_every_reject_file_rule():
    assert len(rules.REGISTRY) >= 350
    for code, rule in rules.REGISTRY.items():
        assert code in rules.CATALOGUE and rule.severity in {"REJECT_FILE", "REJECT_GROUP", "REJECT_RECORD", "WARNING"}
    reject_file = {c for c, (sev, _, _) in rules.CATALOGUE.items() if sev == "REJECT_FILE"}
    # IDSREJ101 (all records failed) is decided by screen() from before/after counts
    assert reject_file - set(rules.REGISTRY) == {"IDSREJ101"}
    # every catalogue rule is implemented or says why not
    assert set(rules.CATALOGUE) == set(rules.REGISTRY) | set(rules.NOT_IMPLEMENTED)
    assert not set(rules.REGISTRY) & set(rules.NOT_IMPLEMENTED)


@pytest.mark.parametrize("code", [c for c in rules.implemented() if rules.REGISTRY[c].bad is not None])
def test_rule_fails_a_broken_record(code):
    """The breakers written beside the rules (one check among several: the table-driven tests in
    test_rules_national.py, test_value_sets.py and test_scales.py are written from the reference files)."""
    rule = rules.REGISTRY[code]
    ds = factory.dataset()
    assert not np.asarray(rule.mask(ds) if not rule.file_level else rule.check(ds)).any()
    rule.bad(ds)
    if rule.file_level:
        assert bool(rule.check(ds))
    else:
        mask = rule.mask(ds)
        assert len(mask) == len(ds.tables[rule.table])
        assert mask[0], f"{code} did not flag the broken record"


def test_an_invalid_nhs_number_is_blanked_and_reported_not_the_patient_dropped():
    ds = tiny()
    rules.REGISTRY["IDSREJ006"].bad(ds)         # P1 gets an invalid NHS number
    res = rules.screen(ds)
    assert res.file_failures == []
    assert ("IDS001MPI", "NHSNumber", "IDSREJ006", ("P1",)) in {(b.table, b.column, b.rule_code, b.record_ids)
                                                                 for b in res.blanked}
    mpi = ds.tables["IDS001MPI"]
    assert "P1" in set(mpi["LocalPatientId"]) and mpi.loc[mpi["LocalPatientId"] == "P1", "NHSNumber"].isna().all()
    assert "R1" in set(ds.tables["IDS101Referral"]["ServiceRequestId"])
    assert res.failures.get("IDS00111") == 1                    # the blank is then a warning, as nationally
    assert not rules.nhs_invalid(mpi["NHSNumber"]).any()
    items = res.blanked_items
    assert [(q.record_type, q.record_id, q.reason_code) for q in items] == [("IDS001MPI", "P1", "IDSREJ006")]
    assert items[0].reason.startswith("blanked NHSNumber")
    left = {c for c, out in rules.evaluate(ds).items() if np.asarray(out).any()}
    assert all(rules.REGISTRY[c].severity == "WARNING" for c in left)


def test_duplicate_nhs_numbers_are_blanked_on_both_patients():
    ds = tiny()
    rules.REGISTRY["IDSREJ009"].bad(ds)
    res = rules.screen(ds)
    dup = {r for b in res.blanked if b.rule_code == "IDSREJ009" for r in b.record_ids}
    assert dup == {"P1", "P2"} and len(ds.tables["IDS001MPI"]) == 3


def test_a_duplicated_local_patient_id_removes_the_records():
    ds = tiny()
    rules.REGISTRY["IDSREJ010"].bad(ds)
    res = rules.screen(ds)
    assert {q.record_id for q in res.quarantined if q.reason_code == "IDSREJ010"} == {"P1", "P2"}


def test_all_records_failing_is_a_file_rejection():
    ds = tiny()
    ds.tables["IDS101Referral"]["OrgIDComm"] = pd.Series([None] * 3, dtype="string[pyarrow]")
    res = rules.screen(ds)
    assert "IDSREJ101" in res.file_failures and "IDSREJ003" in res.file_failures


def test_nhs_invalid_agrees_with_the_shared_check():
    from caldicott.records.nhs_numbers import valid_mask

    rng = np.random.default_rng(3)
    nums = pd.Series([f"{n:010d}" for n in rng.integers(0, 10**10, 5000)] + ["1234554321", "0000000000", "12", None],
                     dtype="string[pyarrow]")
    present = nums.notna().to_numpy()
    assert (rules.nhs_invalid(nums)[present] == ~valid_mask(nums)[present]).all()


def test_every_child_table_has_its_national_no_parent_code():
    """The reject-group code a record takes when its parent went: the catalogue's "No valid IDS001/IDS101 group
    transmitted" rule of each table."""
    want = {"IDS002GP": "IDS00220", "IDS004EmpStatus": "IDS00401", "IDS007DisabilityType": "IDS00701",
            "IDS011SocPerCircumstances": "IDS01101", "IDS012OverseasVisitorChargCat": "IDS01201",
            "IDS101Referral": "IDS10101", "IDS105OnwardReferral": "IDS10510", "IDS108WaitingTimePauses": "IDS10801",
            "IDS201CareContact": "IDS20142", "IDS202CareActivity": "IDS20224", "IDS205InternetTherLog": "IDS20501",
            "IDS602LongTermCondition": "IDS60201", "IDS603PresentingComplaints": "IDS60301",
            "IDS606CodedScoreAssessmentRefer": "IDS60612", "IDS607CodedScoreAssessmentAct": "IDS60708",
            "IDS803CareCluster": "IDS80301"}
    assert {t: c for t, c in rules.ORPHAN_CODE.items() if t in want} == want
    for code in want.values():
        severity, _, message = rules.CATALOGUE[code]
        assert severity == "REJECT_GROUP" and message.startswith("No valid IDS"), code
