"""Every v2.1 table from a tiny records source of its own (not the generator): each table's rows selected for the
period (inside / outside), every field under its national name, fields the service does not record empty, codes
with their leading zeros, dates as dates, London dates and times of UTC instants, and the cascade removing the new
child tables' rows with their referral or patient.

Period: September 2026 (BST, so London midnight is 23:00 UTC the day before)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from caldicott.dataset import builder
from caldicott.dataset.builder import COLUMNS, Period, SourceMonth, build, cascade, drop, read_source
from caldicott.db import make_engine, sqlite_url
from caldicott.records import schema
from sqlalchemy import insert

SEPT = Period.month(2026, 9)
D = dt.date
T = dt.datetime


def _patient(pid: str, **kw) -> dict:
    return {"local_patient_id": pid, "nhs_number": None, "given_name": "Test", "family_name": "Patient",
            "birth_date": D(1990, 1, 1), "postcode": "LS1 1AA", "gender": "2", "ethnic_category": "A",
            "gp_practice_code": "B86001", **kw}


def _referral(rid: str, pid: str, received: dt.date, **kw) -> dict:
    return {"service_request_id": rid, "local_patient_id": pid, "source_of_referral": "01",
            "commissioner_code": "03R", "received_date": received, **kw}


def _contact(cid: str, rid: str, at: dt.datetime, **kw) -> dict:
    return {"care_contact_id": cid, "service_request_id": rid, "contact_at": at, "app_type": "02",
            "attend_code": "5", "cons_mechanism": "01", "duration_minutes": 50, **kw}


ROWS: dict[str, list[dict]] = {
    "patient": [
        _patient("P1", gender_identity="2", gender_same_at_birth="Y", ethnic_category_2021="A1",
                 ex_armed_forces="02", preferred_language="en", education_establishment="01"),
        _patient("P2"),                                                  # only a referral closed before September
        _patient("P3", nhs_number=None, gender="1"),                     # a second open patient (cascade)
    ],
    "referral": [
        _referral("R1", "P1", D(2026, 9, 2), presenting_problem_code="F41.1", presenting_problem_significance="1",
                  onset_month="2026-05", previous_diagnosed_condition="Y"),
        _referral("R2", "P2", D(2026, 6, 1), discharge_date=D(2026, 8, 15), end_code="46"),
        _referral("R3", "P3", D(2026, 7, 1), commissioner_code="01X"),
    ],
    "care_contact": [
        _contact("C1", "R1", T(2026, 9, 10, 9, 0), clinician_id="T1", planned="Y", short_notice_cancellation="N",
                 ltc_service="N", digital_programme="05", therapy_mode="01", group_participants=6,
                 group_facilitators=2, psychotropic_medication="02", activity_location="A01",
                 site_code="RR801", treatment_language="en", interpreter_present="1",
                 procedure_code="1111811000000109", finding_scheme="04", finding_code="35489007",
                 observation_code="27113001", observation_value="070", observation_unit="kg"),
        _contact("C2", "R1", T(2026, 8, 31, 23, 30)),                  # 00:30 BST 1 Sept: September
        _contact("C3", "R1", T(2026, 9, 30, 23, 30)),                  # 00:30 BST 1 Oct: October
        _contact("C4", "R3", T(2026, 9, 12, 10, 0), clinician_id="T2", attend_code="5"),
    ],
    "coded_assessment": [
        {"assessment_id": "A1", "service_request_id": "R1", "care_contact_id": "C1", "tool_code": "720433000",
         "score": 12, "score_text": None, "assessed_at": T(2026, 9, 10, 9, 0)},
        {"assessment_id": "A2", "service_request_id": "R1", "care_contact_id": "C1", "tool_code": "747891000000106",
         "score": None, "score_text": "Y", "assessed_at": T(2026, 9, 10, 9, 0)},
        {"assessment_id": "A3", "service_request_id": "R1", "care_contact_id": None, "tool_code": "445455005",
         "score": 7, "score_text": None, "assessed_at": T(2026, 9, 3, 8, 15)},
    ],
    "accommodation_status": [
        {"accommodation_id": "AC1", "local_patient_id": "P1", "accommodation_type": "01", "settled": "Y",
         "recorded_date": D(2026, 9, 1), "start_date": D(2025, 1, 1), "end_date": D(2026, 10, 15)},  # end blanked
        {"accommodation_id": "AC2", "local_patient_id": "P1", "accommodation_type": "02",
         "recorded_date": D(2026, 10, 2)},                                                      # recorded later
        {"accommodation_id": "AC3", "local_patient_id": "P1", "accommodation_type": "03",
         "recorded_date": D(2020, 1, 1), "start_date": D(2020, 1, 1), "end_date": D(2026, 8, 1)},  # ended before
        {"accommodation_id": "AC4", "local_patient_id": "P2", "accommodation_type": "01"},        # not in IDS001
    ],
    "employment_status": [
        {"employment_id": "E1", "local_patient_id": "P1", "employment_status": "01", "recorded_date": D(2026, 9, 5),
         "weekly_hours": "02", "esa": "N", "employment_support_discharge_date": D(2026, 11, 1)},
        {"employment_id": "E2", "local_patient_id": "P1", "employment_status": "02", "recorded_date": D(2026, 10, 5)},
    ],
    "disability": [
        {"disability_id": "D1", "local_patient_id": "P1", "disability_code": "04"},
        {"disability_id": "D2", "local_patient_id": "P2", "disability_code": "05"},
        {"disability_id": "D3", "local_patient_id": "P3", "disability_code": "06"},
    ],
    "social_circumstance": [
        {"circumstance_id": "S1", "local_patient_id": "P1", "snomed_code": "766822004",
         "recorded_date": D(2026, 1, 1)},
        {"circumstance_id": "S2", "local_patient_id": "P1", "snomed_code": "766822004",
         "recorded_date": D(2026, 11, 1)},
    ],
    "overseas_visitor": [
        {"visitor_id": "O1", "local_patient_id": "P1", "charging_category": "A", "applicable_date": D(2020, 1, 1)},
        {"visitor_id": "O2", "local_patient_id": "P2", "charging_category": "B", "applicable_date": D(2020, 1, 1)},
    ],
    "previous_diagnosis": [
        {"diagnosis_id": "PD1", "local_patient_id": "P1", "scheme": "01", "code": "F32.1",
         "diagnosis_date": D(2019, 5, 1)},
        {"diagnosis_id": "PD2", "local_patient_id": "P1", "scheme": "01", "code": "F40.0",
         "diagnosis_date": D(2026, 12, 1)},
    ],
    "care_cluster": [
        {"cluster_id": "CL1", "local_patient_id": "P1", "cluster_code": "02", "start_at": T(2026, 8, 1, 9, 0),
         "end_at": T(2026, 9, 30, 23, 30)},                      # ends 00:30 BST 1 Oct: still assigned at the end
        {"cluster_id": "CL2", "local_patient_id": "P1", "cluster_code": "03", "start_at": T(2026, 1, 1, 9, 0),
         "end_at": T(2026, 8, 31, 22, 0)},                      # 23:00 BST 31 Aug: ended before
        {"cluster_id": "CL3", "local_patient_id": "P1", "cluster_code": "04", "start_at": T(2026, 9, 30, 23, 0)},
        {"cluster_id": "CL4", "local_patient_id": "P3", "cluster_code": "05", "start_at": T(2026, 9, 15, 12, 0),
         "end_at": T(2026, 9, 20, 8, 5)},
    ],
    "onward_referral": [
        {"onward_referral_id": "OR1", "service_request_id": "R1", "referred_at": T(2026, 9, 30, 22, 30),
         "reason": "01", "receiving_org_code": "RR8"},                       # 23:30 BST 30 Sept
        {"onward_referral_id": "OR2", "service_request_id": "R1", "referred_at": T(2026, 9, 30, 23, 30),
         "reason": "02"},                                                    # 00:30 BST 1 Oct: October
        {"onward_referral_id": "OR3", "service_request_id": "R2", "referred_at": T(2026, 9, 5, 9, 0),
         "reason": "03"},                                                    # referral not open in September
    ],
    "waiting_time_pause": [
        {"pause_id": "WP1", "service_request_id": "R1", "start_date": D(2026, 8, 25), "end_date": D(2026, 9, 3),
         "reason": "01"},
        {"pause_id": "WP2", "service_request_id": "R1", "start_date": D(2026, 9, 20), "end_date": D(2026, 10, 10),
         "reason": "02"},                                                    # end after the period: blanked
        {"pause_id": "WP3", "service_request_id": "R1", "start_date": D(2026, 8, 1), "end_date": D(2026, 8, 31)},
        {"pause_id": "WP4", "service_request_id": "R1", "start_date": D(2026, 10, 1)},
        {"pause_id": "WP5", "service_request_id": "R3", "start_date": D(2026, 9, 1), "reason": "03"},
    ],
    "internet_therapy_log": [
        {"log_id": "L1", "service_request_id": "R1", "start_date": D(2026, 9, 1), "programme": "05",
         "duration_minutes": 30, "care_pers_local_id": "T3", "integrated_software": "Y"},
        {"log_id": "L2", "service_request_id": "R1", "start_date": D(2026, 7, 1), "end_date": D(2026, 8, 31),
         "programme": "05", "care_pers_local_id": "T8"},
    ],
    "long_term_condition": [
        {"condition_id": "LT1", "service_request_id": "R1", "scheme": "04", "code": "44054006"},
        {"condition_id": "LT2", "service_request_id": "R2", "scheme": "04", "code": "195967001"},
        {"condition_id": "LT3", "service_request_id": "R3", "scheme": "04", "code": "13645005"},
    ],
    "care_personnel_qualification": [
        {"qualification_id": "Q1", "care_pers_local_id": "T1", "level": "02", "awarded_date": D(2015, 6, 1)},
        {"qualification_id": "Q2", "care_pers_local_id": "T3", "level": "03", "planned_completion_date":
            D(2027, 1, 1)},
        {"qualification_id": "Q3", "care_pers_local_id": "T8", "level": "04"},        # only on an August log
        {"qualification_id": "Q4", "care_pers_local_id": "T1", "level": "05", "awarded_date": D(2026, 10, 20)},
        {"qualification_id": "Q5", "care_pers_local_id": "T9", "level": "02"},        # named nowhere
        {"qualification_id": "Q6", "care_pers_local_id": "T2", "level": "01"},
    ],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-records") / "records.db"
    engine = make_engine(sqlite_url(path))
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        for table, rows in ROWS.items():
            cols = sorted({k for r in rows for k in r})
            conn.execute(insert(schema.metadata.tables[table]), [{c: r.get(c) for c in cols} for r in rows])
    return engine


@pytest.fixture(scope="module")
def month(source):
    return build(read_source(source, SEPT), SEPT, org_provider="ZZZ01")


def _rids(ds, table: str) -> set[str]:
    return set(ds.tables[table]["_rid"].astype(str))


def _row(ds, table: str, rid: str) -> dict:
    df = ds.tables[table]
    return df[df["_rid"].astype(str) == rid].iloc[0].to_dict()


def test_every_table_every_national_field_in_order(month):
    assert list(month.tables) == list(COLUMNS) and len(COLUMNS) == 21
    assert sum(len(c) for c in COLUMNS.values()) == 140
    for name, df in month.tables.items():
        assert list(df.columns) == [*COLUMNS[name], "_rid"], name


@pytest.mark.parametrize(("table", "inside"), [
    ("IDS001MPI", {"P1", "P3"}),
    ("IDS101Referral", {"R1", "R3"}),
    ("IDS201CareContact", {"C1", "C2", "C4"}),
    ("IDS003AccommStatus", {"AC1"}),
    ("IDS004EmpStatus", {"E1"}),
    ("IDS007DisabilityType", {"D1", "D3"}),
    ("IDS011SocPerCircumstances", {"S1"}),
    ("IDS012OverseasVisitorChargCat", {"O1"}),
    ("IDS601MedHistPrevDiag", {"PD1"}),
    ("IDS803CareCluster", {"CL1", "CL4"}),
    ("IDS105OnwardReferral", {"OR1"}),
    ("IDS108WaitingTimePauses", {"WP1", "WP2", "WP5"}),
    ("IDS205InternetTherLog", {"L1"}),
    ("IDS602LongTermCondition", {"LT1", "LT3"}),
    ("IDS902CarePersQual", {"Q1", "Q2", "Q6"}),
])
def test_each_table_selects_the_period(month, table, inside):
    """Inside: the period's rows of the file's patients / referrals / personnel; every other row stays out."""
    assert _rids(month, table) == inside


def test_patient_fields_and_leading_zeros(month):
    p1 = _row(month, "IDS001MPI", "P1")
    assert (p1["GenderIdentity"], p1["GenderIdentitySameAtBirth"], p1["EthnicCategory2021"]) == ("2", "Y", "A1")
    assert (p1["ExBAFIndicator"], p1["LanguageCodePreferred"], p1["EduEstabTypeIAPT"]) == ("02", "en", "01")
    p3 = _row(month, "IDS001MPI", "P3")
    assert pd.isna(p3["GenderIdentity"]) and pd.isna(p3["EthnicCategory2021"])    # not recorded: empty
    r1 = _row(month, "IDS101Referral", "R1")
    assert (r1["OrgIDComm"], r1["OnsetDate"], r1["PrevDiagCondInd"]) == ("03R", "2026-05", "Y")
    pres = month.tables["IDS603PresentingComplaints"]
    assert pres[["ServiceRequestId", "FindSchemeInUse", "PresComp", "PresCompCodSig"]].astype(str).values.tolist() \
        == [["R1", "01", "F411", "1"]]                               # ICD-10 in the 4-character form
    e1 = _row(month, "IDS004EmpStatus", "E1")
    assert (e1["EmployStatus"], e1["WeekHoursWorked"], e1["ESAInd"]) == ("01", "02", "N")
    assert pd.isna(e1["SelfEmployInd"]) and pd.isna(e1["EmpSupportDischargeDate"])     # after the period: blank


def test_contact_and_activity_fields(month):
    c1 = _row(month, "IDS201CareContact", "C1")
    assert c1["OrgIDComm"] == "03R"                                                    # from its referral
    assert _row(month, "IDS201CareContact", "C4")["OrgIDComm"] == "01X"
    assert (c1["PlannedCareContIndicator"], c1["Cancellation"], c1["IAPTLTCServiceInd"]) == ("Y", "N", "N")
    assert (c1["IntEnabledTherProg"], c1["CareContPatientTherMode"], c1["PsychMed"]) == ("05", "01", "02")
    assert (c1["NumGroupTherParticipants"], c1["NumGroupTherFacilitators"]) == (6, 2)
    assert (c1["ActLocTypeCode"], c1["SiteIDOfTreat"], c1["LanguageCodeTreat"], c1["InterpreterPresentInd"]) == \
        ("A01", "RR801", "en", "1")
    assert (c1["CareContDate"], c1["CareContTime"]) == (pd.Timestamp("2026-09-10"), "10:00:00")
    c2 = _row(month, "IDS201CareContact", "C2")
    assert (c2["CareContDate"], c2["CareContTime"]) == (pd.Timestamp("2026-09-01"), "00:30:00")
    assert pd.isna(c2["PlannedCareContIndicator"]) and pd.isna(c2["NumGroupTherParticipants"])
    act = _row(month, "IDS202CareActivity", "C1-1")
    assert act["CarePersLocalId"] == "T1" and "CareProfLocalId" not in month.tables["IDS202CareActivity"]
    assert (act["CodeProcAndProcStatus"], act["FindSchemeInUse"], act["CodeFind"]) == \
        ("1111811000000109", "04", "35489007")
    assert (act["CodeObs"], act["ObsValue"], act["UnitMeasure"]) == ("27113001", "070", "kg")


def test_scores_text_or_integer(month):
    act = month.tables["IDS607CodedScoreAssessmentAct"]
    assert dict(zip(act["_rid"].astype(str), act["PersScore"].astype(str), strict=True)) == {"A1": "12", "A2": "Y"}
    refer = _row(month, "IDS606CodedScoreAssessmentRefer", "A3")
    assert (refer["PersScore"], refer["AssToolCompDate"], refer["AssToolCompTime"]) == \
        ("7", pd.Timestamp("2026-09-03"), "09:15:00")


def test_onward_referral_london_date_and_time(month):
    o = _row(month, "IDS105OnwardReferral", "OR1")
    assert (o["OnwardReferDate"], o["OnwardReferTime"]) == (pd.Timestamp("2026-09-30"), "23:30:00")
    assert (o["ServiceRequestId"], o["OnwardReferReason"], o["OrgIDReceiving"]) == ("R1", "01", "RR8")


def test_end_dates_after_the_period_are_blank(month):
    assert pd.isna(_row(month, "IDS108WaitingTimePauses", "WP2")["PauseEndDate"])
    wp1 = _row(month, "IDS108WaitingTimePauses", "WP1")
    assert (wp1["PauseID"], wp1["PauseStartDate"], wp1["PauseEndDate"]) == \
        ("WP1", pd.Timestamp("2026-08-25"), pd.Timestamp("2026-09-03"))
    ac1 = _row(month, "IDS003AccommStatus", "AC1")
    assert pd.isna(ac1["AccommodationTypeEndDate"]) and ac1["AccommodationTypeDate"] == pd.Timestamp("2026-09-01")
    cl1 = _row(month, "IDS803CareCluster", "CL1")
    assert (cl1["StartDateCareClust"], cl1["StartTimeCareClust"]) == (pd.Timestamp("2026-08-01"), "10:00:00")
    assert pd.isna(cl1["EndDateCareClust"]) and pd.isna(cl1["EndTimeCareClust"])
    cl4 = _row(month, "IDS803CareCluster", "CL4")
    assert (cl4["EndDateCareClust"], cl4["EndTimeCareClust"]) == (pd.Timestamp("2026-09-20"), "09:05:00")
    log = _row(month, "IDS205InternetTherLog", "L1")
    assert pd.isna(log["EndDateIntEnabledTherLog"]) and log["DurationIntEnabledTher"] == 30
    assert (log["IntEnabledTherProg"], log["CarePersLocalId"], log["IntegratedSoftwareInd"]) == ("05", "T3", "Y")


def test_dates_are_dates_and_numbers_numbers(month):
    """In the frames: dates as datetime64 (the writer makes them Arrow dates), counts as Int64; text otherwise."""
    types = dict(builder.idb.national_fields("2.1").items())
    for name, df in month.tables.items():
        for field, typ in types[name]:
            s = df[field]
            if typ == "date" or field == "DateTimeDatSetCreate":
                assert s.dtype.kind == "M", (name, field)
            elif typ == "int":
                assert str(s.dtype) == "Int64", (name, field)
            else:
                assert isinstance(s.dtype, pd.CategoricalDtype) or str(s.dtype) == "string", (name, field, s.dtype)


def test_every_table_builds_from_an_empty_source_month():
    """A source without the new tables (or any of their columns) still builds every table, empty."""
    ds = build(SourceMonth(*(pd.DataFrame(columns=cols) for cols in (
        ["local_patient_id", "nhs_number", "birth_date", "postcode", "gender", "ethnic_category", "gp_practice_code"],
        ["service_request_id", "local_patient_id", "commissioner_code", "received_date", "source_of_referral",
         "discharge_date", "end_code"],
        ["care_contact_id", "service_request_id", "contact_at", "duration_minutes", "app_type", "attend_code",
         "cons_mechanism"],
        ["assessment_id", "service_request_id", "care_contact_id", "tool_code", "score", "assessed_at"]))),
        SEPT, org_provider="ZZZ01")
    assert list(ds.tables) == list(COLUMNS)
    assert {t for t, n in ds.counts().items() if n} == {"IDS000Header"}


def test_a_consumed_source_builds_the_same_tables_and_is_left_empty(source):
    """build(consume=True), as the pipeline calls it to let each source frame go once its tables are built (peak
    memory at national scale), gives exactly the tables of the default build, and empties the caller's source."""
    src, created = read_source(source, SEPT), T(2026, 10, 2, 9, 0)
    kept = build(read_source(source, SEPT), SEPT, org_provider="ZZZ01", created_at=created)
    consumed = build(src, SEPT, org_provider="ZZZ01", consume=True, created_at=created)
    assert list(consumed.tables) == list(kept.tables)
    for name, table in kept.tables.items():
        pd.testing.assert_frame_equal(consumed.tables[name], table, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(consumed.history, kept.history, check_exact=True)
    assert all(n == 0 for n in src.sizes().values())
    assert sum(kept.counts().values()) > 20


def test_dropping_a_referral_removes_its_rows_and_its_patients(source):
    ds = build(read_source(source, SEPT), SEPT, org_provider="ZZZ01")
    removed = drop(ds, "IDS101Referral", ["R1"])
    for table, rids in {"IDS105OnwardReferral": {"OR1"}, "IDS108WaitingTimePauses": {"WP1", "WP2"},
                        "IDS205InternetTherLog": {"L1"}, "IDS602LongTermCondition": {"LT1"},
                        "IDS003AccommStatus": {"AC1"}, "IDS004EmpStatus": {"E1"}, "IDS007DisabilityType": {"D1"},
                        "IDS011SocPerCircumstances": {"S1"}, "IDS012OverseasVisitorChargCat": {"O1"},
                        "IDS601MedHistPrevDiag": {"PD1"}, "IDS803CareCluster": {"CL1"}, "IDS001MPI": {"P1"}}.items():
        assert set(removed[table].astype(str)) == rids, table
        assert not _rids(ds, table) & rids, table
    # the other patient's and referral's rows stay
    assert _rids(ds, "IDS007DisabilityType") == {"D3"} and _rids(ds, "IDS108WaitingTimePauses") == {"WP5"}
    assert _rids(ds, "IDS803CareCluster") == {"CL4"} and _rids(ds, "IDS602LongTermCondition") == {"LT3"}
    assert _rids(ds, "IDS902CarePersQual") == {"Q1", "Q2", "Q6"}        # personnel hang off no patient


def test_dropping_a_patient_removes_its_referrals_and_every_child(source):
    ds = build(read_source(source, SEPT), SEPT, org_provider="ZZZ01")
    removed = drop(ds, "IDS001MPI", ["P3"])
    assert set(removed["IDS101Referral"].astype(str)) == {"R3"}
    for table, rids in {"IDS007DisabilityType": {"D3"}, "IDS803CareCluster": {"CL4"}, "IDS002GP": {"P3"},
                        "IDS108WaitingTimePauses": {"WP5"}, "IDS602LongTermCondition": {"LT3"},
                        "IDS201CareContact": {"C4"}, "IDS202CareActivity": {"C4-1"}}.items():
        assert set(removed[table].astype(str)) == rids, table
    assert _rids(ds, "IDS007DisabilityType") == {"D1"} and _rids(ds, "IDS101Referral") == {"R1"}


def test_cascade_drops_children_whose_parent_was_never_sent(month):
    """A referral-level or patient-level row with no parent in the file goes, with its _rid returned."""
    ds = month.copy()
    mask = np.zeros(len(ds.tables["IDS101Referral"]), bool)
    mask[ds.tables["IDS101Referral"]["ServiceRequestId"].astype(str).to_numpy() == "R3"] = True
    out = cascade(ds, {"IDS101Referral": mask})
    assert set(out["IDS108WaitingTimePauses"].astype(str)) == {"WP5"}
    assert set(out["IDS007DisabilityType"].astype(str)) == {"D3"}
    assert set(out["IDS001MPI"].astype(str)) == {"P3"}


def test_icd10_codes_are_written_in_the_four_character_form():
    """NHS Digital's ICD-10 convention: no dot, a 3-character code filled with X (IDS60309/IDS60310 want 4-6)."""
    from caldicott.dataset.builder import icd10_code

    codes = pd.Series(["F32", "F41.1", "f41.0", "F411", "F43.10", None, "35489007", "F32"])
    scheme = pd.Series(["01", "01", "01", "01", "01", "01", "04", None])
    got = icd10_code(codes, scheme).astype(object).where(lambda s: s.notna(), None).tolist()
    assert got == ["F32X", "F411", "F410", "F411", "F4310", None, "35489007", "F32"]
    assert icd10_code(pd.Series(["F32", "F41.1"]), "01").tolist() == ["F32X", "F411"]
    assert icd10_code(pd.Series(["F32"]), "04").tolist() == ["F32"]          # only ICD-10 is touched


def test_icd10_is_normalised_in_the_built_tables(month):
    assert set(month.tables["IDS603PresentingComplaints"]["PresComp"]) == {"F411"}      # source F41.1
    prev = month.tables["IDS601MedHistPrevDiag"]
    assert set(prev.loc[prev["DiagSchemeInUse"] == "01", "PrevDiag"]) <= {"F321", "F400"}
    assert not prev["PrevDiag"].str.contains(".", regex=False).any()
