"""A valid minimal data set of all 21 tables, in NHS England's v2.1 names, built directly (not by the builder).

Rule tests use it so that rules for tables the builder does not produce yet can be tested now. Every column of
``iapt_v2_1_fields.tsv`` is present with a value that passes every rule; each frame has the hidden ``_rid``.
Three patients (P1..P3), one referral each (R1..R3), two contacts with activities and scores, one row in each of the
other tables.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from caldicott.dataset.builder import Dataset, Period

PERIOD = Period.month(2026, 9)

_ROWS: dict[str, list[dict]] = {
    "IDS000Header": [dict(DatSetVer="2.1", OrgIDProv="ZZZ01", OrgIDSubmit="ZZZ01", PrimSystemInUse="Caldicott",
                          ReportingPeriodStartDate="2026-09-01", ReportingPeriodEndDate="2026-09-30",
                          DateTimeDatSetCreate="2026-10-02 09:00:00", _rid="header")],
    "IDS001MPI": [dict(LocalPatientId=f"P{i}", OrgIDLocalPatientId="ZZZ01", NHSNumber=nhs, NHSNumberStatus="01",
                       PersonBirthDate=birth, Postcode=pc, Gender=g, GenderIdentity="1", GenderIdentitySameAtBirth="Y",
                       EthnicCategory=e, EthnicCategory2021="A1", ExBAFIndicator="03", LanguageCodePreferred="en",
                       EduEstabTypeIAPT="Z", _rid=f"P{i}")
                  for i, nhs, birth, pc, g, e in [(1, "9990000018", "1980-01-02", "LS1 1AB", "1", "A"),
                                                  (2, "9990000026", "1975-05-06", "BD7 2CD", "2", "H"),
                                                  (3, "9990000034", "2000-12-31", "YO31 9ZZ", "9", "Z")]],
    "IDS002GP": [dict(LocalPatientId=f"P{i}", GMPCodeReg="Z84000", StartDateGMPRegistration="2010-01-01",
                      EndDateGMPRegistration=None, _rid=f"P{i}") for i in (1, 2, 3)],
    "IDS003AccommStatus": [dict(LocalPatientId="P1", AccommodationType="01", SettledAccommodationInd="Y",
                                AccommodationTypeDate="2026-09-02", AccommodationTypeStartDate="2020-01-01",
                                AccommodationTypeEndDate=None, _rid="ACC1")],
    "IDS004EmpStatus": [dict(LocalPatientId="P1", EmployStatus="01", EmployStatusRecDate="2026-09-02",
                             WeekHoursWorked="01", SelfEmployInd="N", SickAbsenceInd="N", SSPInd="N", BenefitRecInd="N",
                             ESAInd="N", UCInd="N", PIPInd="N", EmpSupportInd="Y", EmpSupportReferral="2026-09-03",
                             EmpSupportDischargeDate=None, _rid="EMP1")],
    "IDS007DisabilityType": [dict(LocalPatientId="P1", DisabCode="NN", _rid="DIS1")],
    "IDS011SocPerCircumstances": [dict(LocalPatientId="P1", SocPerCircumstance="160538000",
                                       SocPerCircumstanceRecDate="2026-09-02", _rid="SOC1")],
    "IDS012OverseasVisitorChargCat": [dict(LocalPatientId="P1", OvsVisChCat="A", OvsVisChCatAppDate="2026-09-02",
                                           _rid="OVS1")],
    "IDS101Referral": [dict(ServiceRequestId=f"R{i}", LocalPatientId=f"P{i}", OrgIDComm="ZC1",
                            ReferralRequestReceivedDate=rec, SourceOfReferralIAPT=src, OnsetDate="2026-01",
                            PrevDiagCondInd="N", EndCode=end, ServDischDate=disch, _rid=f"R{i}")
                       for i, rec, src, end, disch in [(1, "2026-08-01", "B1", None, None),
                                                       (2, "2026-09-03", "A1", None, None),
                                                       (3, "2026-07-15", "C1", "46", "2026-09-20")]],
    "IDS105OnwardReferral": [dict(ServiceRequestId="R3", OnwardReferDate="2026-09-20", OnwardReferTime="10:00:00",
                                  OnwardReferReason="01", OrgIDReceiving="ZZZ02", _rid="ONW1")],
    "IDS108WaitingTimePauses": [dict(PauseID="PA1", ServiceRequestId="R1", PauseStartDate="2026-09-05",
                                     PauseEndDate="2026-09-08", PauseReason="01", _rid="PAUSE1")],
    "IDS201CareContact": [dict(CareContactId=f"C{i}", ServiceRequestId=f"R{i}", CareContDate=d, CareContTime="09:00:00",
                               OrgIDComm="ZC1", PlannedCareContIndicator="Y", AttendOrDNACode="5", Cancellation=None,
                               ClinContDurOfCareCont=60, IAPTLTCServiceInd="N", AppType="02", ConsMechanism="11",
                               IntEnabledTherProg=None, CareContPatientTherMode="1", NumGroupTherParticipants=None,
                               NumGroupTherFacilitators=None, PsychMed="ZZ", ActLocTypeCode="A01",
                               SiteIDOfTreat="ZZZ0101", LanguageCodeTreat="en", InterpreterPresentInd="X",
                               _rid=f"C{i}")
                          for i, d in [(1, "2026-09-04"), (2, "2026-09-10"), (3, "2026-09-11")]],
    "IDS202CareActivity": [dict(CareActId=f"C{i}-1", CareContactId=f"C{i}", CarePersLocalId="CL1",
                                ClinContactDurOfCareAct=60, CodeProcAndProcStatus=None, FindSchemeInUse=None,
                                CodeFind=None, CodeObs=None, ObsValue=None, UnitMeasure=None, _rid=f"C{i}-1")
                           for i in (1, 2, 3)],
    "IDS205InternetTherLog": [dict(ServiceRequestId="R1", StartDateIntEnabledTherLog="2026-09-02",
                                   EndDateIntEnabledTherLog="2026-09-09", IntEnabledTherProg="SilverCloud",
                                   DurationIntEnabledTher=30, CarePersLocalId="CL1", IntegratedSoftwareInd="Y",
                                   _rid="NET1")],
    "IDS601MedHistPrevDiag": [dict(LocalPatientId="P1", DiagSchemeInUse="02", PrevDiag="F32X",
                                   DiagDate="2019-01-01", _rid="PREV1")],
    "IDS602LongTermCondition": [dict(ServiceRequestId="R1", FindSchemeInUse="01", LongTermCondition="E119",
                                     _rid="LTC1")],
    "IDS603PresentingComplaints": [dict(ServiceRequestId="R2", FindSchemeInUse="01", PresComp="F411",
                                        PresCompCodSig="1", PresCompDate="2026-09-03", _rid="PRES1")],
    "IDS606CodedScoreAssessmentRefer": [dict(ServiceRequestId="R2", CodedAssToolType=tool, PersScore=score,
                                             AssToolCompDate="2026-09-05", AssToolCompTime="10:00:00", _rid=rid)
                                        for tool, score, rid in [("720433000", "20", "A5"), ("445455005", "15", "A6")]],
    "IDS607CodedScoreAssessmentAct": [dict(CareActId=act, CodedAssToolType=tool, PersScore=score, _rid=rid)
                                      for act, tool, score, rid in [("C1-1", "720433000", "14", "A1"),
                                                                    ("C1-1", "445455005", "11", "A2"),
                                                                    ("C3-1", "720433000", "12", "A3")]],
    "IDS803CareCluster": [dict(LocalPatientId="P1", AMHCareClustCodeFin="02", StartDateCareClust="2026-09-02",
                               StartTimeCareClust="10:00:00", EndDateCareClust=None, EndTimeCareClust=None,
                               _rid="CLUS1")],
    "IDS902CarePersQual": [dict(CarePersLocalId="CL1", QualAttainLevelIAPT="10", QualAwardedDate="2015-06-01",
                                QualPlannedCompletionDate=None, _rid="QUAL1")],
}


def _fields() -> dict[str, dict[str, str]]:
    from caldicott.dataset.rules import NATIONAL_FIELDS

    return {t: {f: typ for f, (typ, _key) in fs.items()} for t, fs in NATIONAL_FIELDS.items()}


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Rows as the builder types them: dates as datetime64[s], integers Int64, text (times too) Arrow strings."""
    types = _fields()[table]
    out = {}
    for col, typ in types.items():
        values = [r.get(col) for r in rows]
        if typ == "date" or (typ == "datetime" and table == "IDS000Header"):
            out[col] = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601").astype("datetime64[s]")
        elif typ == "int":
            out[col] = pd.Series(values, dtype="Int64")
        else:
            out[col] = pd.Series(values, dtype="string[pyarrow]")
    out["_rid"] = pd.Series([r["_rid"] for r in rows], dtype="string[pyarrow]")
    return pd.DataFrame(out)


def dataset(tables: tuple[str, ...] | None = None, version: str = "2.1") -> Dataset:
    """The valid minimal data set (all 21 tables, or those named)."""
    names = tables or tuple(_ROWS)
    return Dataset(PERIOD, version, {t: frame(t, _ROWS[t]) for t in names})


def rows(table: str) -> list[dict]:
    return [dict(r) for r in _ROWS[table]]


CREATED = dt.datetime(2026, 10, 2, 9)
