"""Build the monthly IAPT / NHS Talking Therapies data set tables for one reporting period.

The builder maps the records source (:mod:`caldicott.records.schema`) onto all 21 tables of NHS England's v2.1
intermediate database (``IDS000Header`` ... ``IDS902CarePersQual``), every field named, ordered and typed as NHS
England's list has it (``iapt_v2_1_fields.tsv``, read by :mod:`caldicott.dataset.idb`: :data:`COLUMNS` is that
list, so builder and national layout cannot drift). The frames carry v2.1's names whatever the version; the
writer lays them out as the version's national tables (v2.0: its own names and fields, see
:mod:`caldicott.dataset.idb`). A field the service does not record is built empty (null), never invented.

Whole-column pandas / pyarrow operations only: a national-size month (a million open referrals) must build in
seconds, so there is no per-row Python anywhere here.

Reporting periods are Europe/London calendar months. Instants in the source (``care_contact.contact_at``,
``coded_assessment.assessed_at``, ``onward_referral.referred_at``, ``care_cluster.start_at``/``end_at``) are UTC,
so the period ``[first, next_first)`` in London is turned into a UTC half-open interval before reading, and each
instant is written as its London date and time: a contact at 2026-05-31T23:30Z is 00:30 BST on 1 June and belongs
to June.

What each table holds for the period (selected in SQL by :func:`read_source`; the nesting is NHS England's: a
referral carries its patient and everything below):

* IDS101 referrals open at some point in the period (received before its end, not discharged before its start);
  IDS001 / IDS002 their patients;
* patient-level IDS003 / IDS004 / IDS007 / IDS011 / IDS012 / IDS601 / IDS803: the rows of the IDS001 patients,
  less any that had not started by the end of the period (a status, diagnosis or charging category recorded or
  applying only after it) or, where the row has an end, ended before it started (IDS003, IDS803);
* referral-level, for the IDS101 referrals: IDS201 contacts in the period (IDS202: one care activity per attended
  or scored contact); IDS105 onward referrals made in the period; IDS108 waiting-time pauses and IDS205
  internet-enabled therapy logs overlapping it; IDS602 long-term conditions; IDS603 presenting complaints of
  referrals received in the period; IDS606 / IDS607 scores taken in the period;
* IDS902: the qualifications of the care personnel named by the file's IDS202 / IDS205 rows (less any awarded
  after the period).

An end date after the period (discharge, pause, therapy log, accommodation, care cluster) is blanked: at the end of
the period the thing was still open, and the file must not report the future.

Every frame carries a hidden ``_rid`` column (the source's opaque record id) used for quarantine and
dropped by the writer; the written tables hold national columns only.
"""

from __future__ import annotations

import datetime as dt
import logging
import typing
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Column, ColumnElement, Engine, Exists, Label, String, Table, and_, cast, func, or_, select

from caldicott.dataset import idb
from caldicott.records import pg_copy, schema
from caldicott.records.queries import AnySelect, OnUnreadable, checked_columns, read

log = logging.getLogger(__name__)

LONDON = "Europe/London"
VERSIONS = ("2.0", "2.1")
DEFAULT_VERSION = "2.1"
#: "General Medical Practice Code not known" (NHS Data Dictionary default code), used when the source has none.
GP_NOT_KNOWN = "V81999"
#: SourceOfReferralIAPT codes of the source are already data set codes; AppType codes that count as treatment.
TREATMENT_APP_TYPES = ("02", "03", "04")
ATTENDED = ("5", "6")
PHQ9, GAD7 = schema.SNOMED["PHQ9"], schema.SNOMED["GAD7"]

#: One boolean per row of a table (a filter, or a check's answer).
Mask = npt.NDArray[np.bool_]
#: The integer codes of an id column (:class:`Keys`: one code space per kind, -1 for null), as
#: :func:`encode_together` gives them.
KeyCodes = npt.NDArray[np.int32]
#: Row numbers of a table (-1: none).
Rows = npt.NDArray[np.int64]
#: Any numpy scalar type (what :func:`by_code` gathers).
_Scalar = TypeVar("_Scalar", bound=np.generic)
_T = TypeVar("_T")

#: National columns of every v2.1 table, in national order (from ``iapt_v2_1_fields.tsv``), tables in number order.
COLUMNS: dict[str, list[str]] = {t: [f for f, _ in fs] for t, fs in sorted(idb.national_fields("2.1").items())}
TABLES = tuple(COLUMNS)
#: Low-cardinality code columns, held as categoricals: checks run once per distinct value, not per row.
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "IDS001MPI": ("OrgIDLocalPatientId", "NHSNumberStatus", "Gender", "GenderIdentity", "GenderIdentitySameAtBirth",
                  "EthnicCategory", "EthnicCategory2021", "ExBAFIndicator", "LanguageCodePreferred",
                  "EduEstabTypeIAPT"),
    "IDS002GP": ("GMPCodeReg",),
    "IDS003AccommStatus": ("AccommodationType", "SettledAccommodationInd"),
    "IDS004EmpStatus": ("EmployStatus", "WeekHoursWorked", "SelfEmployInd", "SickAbsenceInd", "SSPInd",
                        "BenefitRecInd", "ESAInd", "UCInd", "PIPInd", "EmpSupportInd"),
    "IDS007DisabilityType": ("DisabCode",),
    "IDS011SocPerCircumstances": ("SocPerCircumstance",),
    "IDS012OverseasVisitorChargCat": ("OvsVisChCat",),
    "IDS101Referral": ("OrgIDComm", "SourceOfReferralIAPT", "OnsetDate", "PrevDiagCondInd", "EndCode"),
    "IDS105OnwardReferral": ("OnwardReferTime", "OnwardReferReason", "OrgIDReceiving"),
    "IDS108WaitingTimePauses": ("PauseReason",),
    "IDS201CareContact": ("CareContTime", "OrgIDComm", "PlannedCareContIndicator", "AttendOrDNACode", "Cancellation",
                          "IAPTLTCServiceInd", "AppType", "ConsMechanism", "IntEnabledTherProg",
                          "CareContPatientTherMode", "PsychMed", "ActLocTypeCode", "SiteIDOfTreat",
                          "LanguageCodeTreat", "InterpreterPresentInd"),
    "IDS202CareActivity": ("CarePersLocalId", "CodeProcAndProcStatus", "FindSchemeInUse", "CodeFind", "CodeObs",
                           "UnitMeasure"),
    "IDS205InternetTherLog": ("IntEnabledTherProg", "CarePersLocalId", "IntegratedSoftwareInd"),
    "IDS601MedHistPrevDiag": ("DiagSchemeInUse", "PrevDiag"),
    "IDS602LongTermCondition": ("FindSchemeInUse", "LongTermCondition"),
    "IDS603PresentingComplaints": ("FindSchemeInUse", "PresComp", "PresCompCodSig"),
    "IDS606CodedScoreAssessmentRefer": ("CodedAssToolType", "PersScore", "AssToolCompTime"),
    "IDS607CodedScoreAssessmentAct": ("CodedAssToolType", "PersScore"),
    "IDS803CareCluster": ("AMHCareClustCodeFin", "StartTimeCareClust", "EndTimeCareClust"),
    "IDS902CarePersQual": ("CarePersLocalId", "QualAttainLevelIAPT"),
}
#: Which table each opaque record id belongs to, for quarantine entries.
RECORD_TYPE = {t: t for t in TABLES}
#: FindSchemeInUse for ICD-10 codes (the source records presenting complaints as ICD-10).
FIND_SCHEME_ICD10 = "01"
#: Tables hanging off a patient (LocalPatientId → IDS001) and off a referral (ServiceRequestId → IDS101).
PATIENT_CHILDREN = ("IDS002GP", "IDS003AccommStatus", "IDS004EmpStatus", "IDS007DisabilityType",
                    "IDS011SocPerCircumstances", "IDS012OverseasVisitorChargCat", "IDS601MedHistPrevDiag",
                    "IDS803CareCluster")
REFERRAL_CHILDREN = ("IDS105OnwardReferral", "IDS108WaitingTimePauses", "IDS201CareContact",
                     "IDS205InternetTherLog", "IDS602LongTermCondition", "IDS603PresentingComplaints",
                     "IDS606CodedScoreAssessmentRefer")


@dataclass(frozen=True)
class Period:
    """A reporting month ``[first, end)`` in London local dates."""

    first: dt.date
    end: dt.date

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        first = dt.date(year, month, 1)
        return cls(first, (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1))

    @property
    def last(self) -> dt.date:
        return self.end - dt.timedelta(days=1)

    @property
    def key(self) -> str:
        return self.first.strftime("%Y-%m")

    def utc_bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The London-midnight boundaries as naive UTC datetimes (the source stores UTC instants)."""
        b = (pd.DatetimeIndex([pd.Timestamp(self.first), pd.Timestamp(self.end)]).tz_localize(LONDON)
             .tz_convert("UTC").tz_localize(None))
        return b[0].to_pydatetime(), b[1].to_pydatetime()


@dataclass
class SourceMonth:
    """What the builder needs from the records source for one period (plain frames, source column names).

    ``history`` has one row per referral in ``referrals`` with whole-life facts the national measures
    need: ``first_treatment_at`` (UTC), ``treatment_contacts`` (attended treatment contacts ever),
    ``first_phq9``/``last_phq9``/``first_gad7``/``last_gad7`` (first and last scores, for discharges).

    The other frames are the rows of the source's data set tables already selected for the period (see the module
    doc); each defaults to empty, and a frame without some (or any) of its columns builds those fields empty, so a
    source that does not record a table yet still builds.
    """

    patients: pd.DataFrame
    referrals: pd.DataFrame
    contacts: pd.DataFrame
    assessments: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    accommodation: pd.DataFrame = field(default_factory=pd.DataFrame)          # IDS003
    employment: pd.DataFrame = field(default_factory=pd.DataFrame)             # IDS004
    disability: pd.DataFrame = field(default_factory=pd.DataFrame)             # IDS007
    circumstances: pd.DataFrame = field(default_factory=pd.DataFrame)          # IDS011
    overseas: pd.DataFrame = field(default_factory=pd.DataFrame)               # IDS012
    onward: pd.DataFrame = field(default_factory=pd.DataFrame)                 # IDS105
    pauses: pd.DataFrame = field(default_factory=pd.DataFrame)                 # IDS108
    therapy_logs: pd.DataFrame = field(default_factory=pd.DataFrame)           # IDS205
    diagnoses: pd.DataFrame = field(default_factory=pd.DataFrame)              # IDS601
    conditions: pd.DataFrame = field(default_factory=pd.DataFrame)             # IDS602
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)               # IDS803
    qualifications: pd.DataFrame = field(default_factory=pd.DataFrame)         # IDS902

    #: the frames besides the four main ones and ``history``, in field order
    EXTRA = ("accommodation", "employment", "disability", "circumstances", "overseas", "onward", "pauses",
             "therapy_logs", "diagnoses", "conditions", "clusters", "qualifications")

    def sizes(self) -> dict[str, int]:
        return {"patients": len(self.patients), "referrals": len(self.referrals), "contacts": len(self.contacts),
                "assessments": len(self.assessments), **{n: len(getattr(self, n)) for n in self.EXTRA}}

    def clear(self, *names: str) -> None:
        """Let go of the frames ``names`` (every frame when none is named), each left empty: :func:`build` with
        ``consume=True`` takes the frames over, so that this object, still referenced by its caller for the whole
        build, keeps none of them alive, and lets go of each of its own as soon as its tables are built."""
        for n in names or [f.name for f in fields(self)]:
            setattr(self, n, pd.DataFrame())


@dataclass
class Dataset:
    """The built tables (physical names, plus the hidden ``_rid``) and what went into them."""

    period: Period
    version: str
    tables: dict[str, pd.DataFrame]
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: integer codes of the id columns (see :class:`Keys`); a cache, never the source of truth
    keys: Keys = field(default_factory=lambda: Keys(), repr=False, compare=False)

    def counts(self) -> dict[str, int]:
        return {name: len(df) for name, df in self.tables.items()}

    def copy(self) -> Dataset:
        # the copies share their (immutable) Arrow data with the originals, so the cached codes stay valid
        return Dataset(self.period, self.version, {k: v.copy() for k, v in self.tables.items()}, self.history,
                       self.keys.copy())

    def keep(self, table: str, mask: Mask) -> None:
        """Keep only the rows of ``table`` where ``mask`` is True; the cached id codes follow the rows."""
        self.keys.keep(self.tables, table, np.asarray(mask, dtype=bool))


# ---- reading the source ---------------------------------------------------------------------------------

def _open_in_period(t: Table, period: Period) -> ColumnElement[bool]:
    """Referrals open at some point in the period: received before its end, not discharged before its start."""
    return and_(t.c.received_date < period.end,
                or_(t.c.discharge_date.is_(None), t.c.discharge_date >= period.first))


def _text(col: Column[Any]) -> Label[str]:
    """Read a typed column as text: a loosely typed source (SQLite) can hold values its type cannot parse, and
    the driver would raise on them; the builder parses with ``errors="coerce"`` and the rules quarantine."""
    return cast(col, String).label(col.name)


def _of_open_referral(key: Column[Any], referral_key: Column[Any], period: Period) -> Exists:
    """The row's key (``local_patient_id`` or ``service_request_id``) belongs to a referral open in the period.

    A correlated EXISTS rather than ``key IN (open referrals)``: SQLite builds the IN list (every referral received
    before the period's end, each looked up for its discharge date) afresh for each query, which cost more than
    reading a small table itself; the EXISTS probes the referral index once per row of the small table (PostgreSQL
    plans either as the same semi-join). Used for the patient- and referral-level tables; the large contact and
    score tables, selected first by their own instant, keep the IN list (measured faster there)."""
    r = schema.referral
    return select(r.c.service_request_id).where(referral_key == key, _open_in_period(r, period)).exists()


def _by_period_end(col: Column[Any], period: Period) -> ColumnElement[bool]:
    """Undated, or dated before the end of the period (a fact recorded or applying only later is not this month's)."""
    return or_(col.is_(None), col < period.end)


def _not_ended_before(col: Column[Any], start: dt.date | dt.datetime) -> ColumnElement[bool]:
    """No end, or an end on or after the period's start."""
    return or_(col.is_(None), col >= start)


#: Rows fetched and turned into a frame at a time (:func:`_read`): the driver's rows are a Python object per cell,
#: about ten times the size of the frame they become, so a national month's contact table read in one go held
#: 3.2 GiB of them at once; in steps of this many, about 1.1 GiB.
CHUNK_ROWS = 250_000


def _read(engine: Engine, query: AnySelect, on_unreadable: OnUnreadable | None = None) -> pd.DataFrame:
    """:func:`caldicott.records.queries.read`, with the frame built from the DBAPI cursor's own tuples where no
    column needs SQLite's strict conversion or a result processor (SQLAlchemy's ``Row`` objects, and pandas probing
    each for namedtuple fields, cost more than the query itself at a million rows), :data:`CHUNK_ROWS` rows at a
    time (``on_unreadable``: as :func:`~caldicott.records.queries.read`'s, for SQLite's strict conversion).
    On PostgreSQL the rows come in bulk through ``COPY`` (:mod:`caldicott.records.pg_copy`) where every
    column is one it reads. Same frame every way (tests/unit/dataset/test_read_source_equivalence.py)."""
    if checked_columns(engine, query):
        return read(engine, query, on_unreadable)
    if engine.dialect.name == "postgresql":
        copied = pg_copy.read_frame(engine, query)
        if copied is not None:
            return copied
    dialect = engine.dialect
    plain = not any(col.type.dialect_impl(dialect).result_processor(dialect, None) for col in query.selected_columns)
    parts: list[pd.DataFrame] = []
    with engine.connect() as conn:
        result = conn.execute(query)
        keys = list(result.keys())
        while True:
            rows = result.cursor.fetchmany(CHUNK_ROWS) if plain else list(map(tuple, result.fetchmany(CHUNK_ROWS)))
            if not rows:
                break
            parts.append(pd.DataFrame(rows, columns=keys))
        result.close()
    return _concat(parts, keys)


def _concat(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """The frames of one read's steps as the one frame ``pd.DataFrame(all_rows)`` would be. A step can infer a
    column's type differently from the rest (all null: ``object``; whole numbers with a null: ``float64``); such a
    column is inferred again over all its values, as one frame would have been."""
    if not parts:
        return pd.DataFrame([], columns=keys)
    if len(parts) == 1:
        return parts[0]
    frame = pd.concat(parts, ignore_index=True)
    for key in keys:
        if len({str(p[key].dtype) for p in parts}) > 1:
            values = frame[key].astype(object)          # the steps' values (a null as NaN or None)
            frame[key] = pd.Series(values.where(values.notna(), None).tolist())   # inferred as one frame would be
    return frame


def read_source(engine: Engine, period: Period) -> SourceMonth:
    """Read one period's rows from the records source (bound parameters; SQLite or PostgreSQL).

    Every date, instant and number is read as text (:func:`_text`) and parsed by the builder, so a bad value is a
    null the rules catch, not a crash. The selection per table is the module doc's.
    """
    r, c, a, p = schema.referral, schema.care_contact, schema.coded_assessment, schema.patient
    start_utc, end_utc = period.utc_bounds()
    open_ids = select(r.c.service_request_id).where(_open_in_period(r, period))
    referrals = _read(engine, select(r.c.service_request_id, r.c.local_patient_id, r.c.commissioner_code,
                                    _text(r.c.received_date), r.c.source_of_referral, _text(r.c.discharge_date),
                                    r.c.end_code, r.c.presenting_problem_code, r.c.presenting_problem_significance,
                                    r.c.onset_month, r.c.previous_diagnosed_condition)
                     .where(_open_in_period(r, period)))

    def _of_patient(key: Column[Any]) -> Exists:
        return _of_open_referral(key, r.c.local_patient_id, period)

    def _of_referral(key: Column[Any]) -> Exists:
        return _of_open_referral(key, r.c.service_request_id, period)

    # a stored flag its column cannot hold becomes a null the rules see; an unreadable pre-2020 objection flag
    # counts as an objection (fail closed: the patient is left out of the return rather than sent against a
    # possible objection), never a crash of the whole month
    unreadable_objection: set[str] = set()

    def objection_unreadable(row: dict[str, Any], columns: list[str]) -> None:
        if "dataset_objection_pre2020" in columns:
            unreadable_objection.add(str(row["local_patient_id"]))

    patients = _read(engine, select(p.c.local_patient_id, p.c.nhs_number, _text(p.c.birth_date), p.c.postcode,
                                   p.c.gender, p.c.ethnic_category, p.c.gp_practice_code, p.c.dataset_objection_pre2020,
                                   p.c.dataset_objection_date, p.c.gender_identity, p.c.gender_same_at_birth,
                                   p.c.ethnic_category_2021, p.c.ex_armed_forces, p.c.preferred_language,
                                   p.c.education_establishment)
                    .where(_of_patient(p.c.local_patient_id)), on_unreadable=objection_unreadable)
    if unreadable_objection:
        patients.loc[patients["local_patient_id"].astype(str).isin(unreadable_objection),
                     "dataset_objection_pre2020"] = True
        log.warning("%d patient(s) with an unreadable pre-2020 objection flag: treated as objecting",
                    len(unreadable_objection))
    in_period = (c.c.contact_at >= start_utc, c.c.contact_at < end_utc, c.c.service_request_id.in_(open_ids))
    contacts = _read(engine, select(c.c.care_contact_id, c.c.service_request_id, _text(c.c.contact_at),
                                   _text(c.c.duration_minutes),
                                   c.c.app_type, c.c.attend_code, c.c.cons_mechanism, c.c.clinician_id,
                                   c.c.planned, c.c.short_notice_cancellation, c.c.ltc_service, c.c.digital_programme,
                                   c.c.therapy_mode, _text(c.c.group_participants), _text(c.c.group_facilitators),
                                   c.c.psychotropic_medication, c.c.activity_location, c.c.site_code,
                                   c.c.treatment_language, c.c.interpreter_present, c.c.procedure_code,
                                   c.c.finding_scheme, c.c.finding_code, c.c.observation_code,
                                   c.c.observation_value, c.c.observation_unit)
                    .where(*in_period))
    assessments = _read(engine, select(a.c.assessment_id, a.c.service_request_id, a.c.care_contact_id, a.c.tool_code,
                                      _text(a.c.score), a.c.score_text, _text(a.c.assessed_at))
                       .where(a.c.assessed_at >= start_utc, a.c.assessed_at < end_utc,
                              a.c.service_request_id.in_(open_ids)))
    # patient-level tables: the IDS001 patients' rows that had started by the period's end
    acc, emp, dis = schema.accommodation_status, schema.employment_status, schema.disability
    soc, ovs, dia, clu = (schema.social_circumstance, schema.overseas_visitor, schema.previous_diagnosis,
                          schema.care_cluster)
    accommodation = _read(engine, select(acc.c.accommodation_id, acc.c.local_patient_id, acc.c.accommodation_type,
                                        acc.c.settled, _text(acc.c.recorded_date), _text(acc.c.start_date),
                                        _text(acc.c.end_date))
                         .where(_of_patient(acc.c.local_patient_id), _by_period_end(acc.c.recorded_date, period),
                                _by_period_end(acc.c.start_date, period),
                                _not_ended_before(acc.c.end_date, period.first)))
    employment = _read(engine, select(*(_text(col) if col.name.endswith("date") else col for col in emp.c))
                      .where(_of_patient(emp.c.local_patient_id), _by_period_end(emp.c.recorded_date, period)))
    disability = _read(engine, select(dis.c.disability_id, dis.c.local_patient_id, dis.c.disability_code)
                      .where(_of_patient(dis.c.local_patient_id)))
    circumstances = _read(engine, select(soc.c.circumstance_id, soc.c.local_patient_id, soc.c.snomed_code,
                                        _text(soc.c.recorded_date))
                         .where(_of_patient(soc.c.local_patient_id), _by_period_end(soc.c.recorded_date, period)))
    overseas = _read(engine, select(ovs.c.visitor_id, ovs.c.local_patient_id, ovs.c.charging_category,
                                   _text(ovs.c.applicable_date))
                    .where(_of_patient(ovs.c.local_patient_id), _by_period_end(ovs.c.applicable_date, period)))
    diagnoses = _read(engine, select(dia.c.diagnosis_id, dia.c.local_patient_id, dia.c.scheme, dia.c.code,
                                    _text(dia.c.diagnosis_date))
                     .where(_of_patient(dia.c.local_patient_id), _by_period_end(dia.c.diagnosis_date, period)))
    clusters = _read(engine, select(clu.c.cluster_id, clu.c.local_patient_id, clu.c.cluster_code, _text(clu.c.start_at),
                                   _text(clu.c.end_at))
                    .where(_of_patient(clu.c.local_patient_id), clu.c.start_at < end_utc,
                           _not_ended_before(clu.c.end_at, start_utc)))
    # referral-level tables: the IDS101 referrals' rows for the period
    onw, pau, itl, ltc = (schema.onward_referral, schema.waiting_time_pause, schema.internet_therapy_log,
                          schema.long_term_condition)
    onward = _read(engine, select(onw.c.onward_referral_id, onw.c.service_request_id, _text(onw.c.referred_at),
                                 onw.c.reason, onw.c.receiving_org_code)
                  .where(_of_referral(onw.c.service_request_id), onw.c.referred_at >= start_utc,
                         onw.c.referred_at < end_utc))
    pauses = _read(engine, select(pau.c.pause_id, pau.c.service_request_id, _text(pau.c.start_date),
                                 _text(pau.c.end_date), pau.c.reason)
                  .where(_of_referral(pau.c.service_request_id), pau.c.start_date < period.end,
                         _not_ended_before(pau.c.end_date, period.first)))
    logs_in_period = (_of_referral(itl.c.service_request_id), itl.c.start_date < period.end,
                      _not_ended_before(itl.c.end_date, period.first))
    therapy_logs = _read(engine, select(itl.c.log_id, itl.c.service_request_id, _text(itl.c.start_date),
                                       _text(itl.c.end_date), itl.c.programme, _text(itl.c.duration_minutes),
                                       itl.c.care_pers_local_id, itl.c.integrated_software)
                        .where(*logs_in_period))
    conditions = _read(engine, select(ltc.c.condition_id, ltc.c.service_request_id, ltc.c.scheme, ltc.c.code)
                      .where(_of_referral(ltc.c.service_request_id)))
    # IDS902: qualifications of the personnel the contacts and logs just read name (narrowed to the file's rows by
    # build); the table is one row per qualification of the service's staff, so it is read whole (less any awarded
    # after the period) and matched here rather than by a second pass over the month's contacts in SQL
    q = schema.care_personnel_qualification
    named = pd.concat([contacts["clinician_id"], therapy_logs["care_pers_local_id"]]).dropna().unique()
    qualifications = _read(engine, select(q.c.qualification_id, q.c.care_pers_local_id, q.c.level,
                                         _text(q.c.awarded_date), _text(q.c.planned_completion_date))
                          .where(_by_period_end(q.c.awarded_date, period)))
    qualifications = qualifications[qualifications["care_pers_local_id"].isin(named)].reset_index(drop=True)
    # whole-life facts for the measures: aggregated in the database, not read row by row
    treat = _read(engine, select(c.c.service_request_id,
                                func.min(cast(c.c.contact_at, String)).label("first_treatment_at"),
                                func.count().label("treatment_contacts"))
                 .where(c.c.service_request_id.in_(open_ids), c.c.attend_code.in_(ATTENDED),
                        c.c.app_type.in_(TREATMENT_APP_TYPES))
                 .group_by(c.c.service_request_id))
    discharged = select(r.c.service_request_id).where(r.c.discharge_date >= period.first,
                                                      r.c.discharge_date < period.end)
    scores = _read(engine, select(a.c.service_request_id, a.c.tool_code, _text(a.c.score), _text(a.c.assessed_at))
                  .where(a.c.service_request_id.in_(discharged), a.c.tool_code.in_([PHQ9, GAD7])))
    return SourceMonth(patients, referrals, contacts, assessments,
                       history(referrals["service_request_id"], treat, scores),
                       accommodation=accommodation, employment=employment, disability=disability,
                       circumstances=circumstances, overseas=overseas, onward=onward, pauses=pauses,
                       therapy_logs=therapy_logs, diagnoses=diagnoses, conditions=conditions, clusters=clusters,
                       qualifications=qualifications)


def history(referral_ids: pd.Series, treat: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per referral: first treatment instant, attended treatment count, first/last PHQ-9 and GAD-7."""
    h = pd.DataFrame({"service_request_id": referral_ids.astype(str).to_numpy()}).set_index("service_request_id")
    if len(treat):
        t = treat.set_index("service_request_id")
        h["first_treatment_at"] = pd.to_datetime(t["first_treatment_at"], errors="coerce",
                                                 format="ISO8601").reindex(h.index)
        h["treatment_contacts"] = t["treatment_contacts"].reindex(h.index).fillna(0).astype("int64")
    else:
        h["first_treatment_at"] = pd.NaT
        h["treatment_contacts"] = 0
    if len(scores):
        s = scores.assign(assessed_at=pd.to_datetime(scores["assessed_at"], errors="coerce", format="ISO8601"),
                          score=pd.to_numeric(scores["score"], errors="coerce")).sort_values(
            ["service_request_id", "tool_code", "assessed_at"], kind="stable")
        g = s.groupby(["service_request_id", "tool_code"], sort=False)["score"]
        first, last = g.first().unstack(), g.last().unstack()
        for code, name in ((PHQ9, "phq9"), (GAD7, "gad7")):
            h[f"first_{name}"] = first[code].reindex(h.index) if code in first else np.nan
            h[f"last_{name}"] = last[code].reindex(h.index) if code in last else np.nan
    else:
        for name in ("first_phq9", "last_phq9", "first_gad7", "last_gad7"):
            h[name] = np.nan
    return h.reset_index()


# ---- building the tables ---------------------------------------------------------------------------------

def _arrow(values: pd.Series | pd.Index | pa.Array | pa.ChunkedArray | Collection[str]
           ) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pd.Series, pd.Index)) and values.dtype.kind not in "OUS" and str(values.dtype) != "string":
        return pa.array(values.astype("string[pyarrow]"))
    arr = pa.array(values) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


def by_code(per_category: npt.NDArray[_Scalar], codes: npt.NDArray[np.integer[Any]], missing: object
            ) -> npt.NDArray[_Scalar]:
    """``per_category[codes]``, ``missing`` where the code is -1 (null): one gather, the -1 code picking an
    extra last slot (checks over a categorical run once per category, then cost one pass over the rows)."""
    per_category = np.asarray(per_category)
    # numpy types np.append's result as of any dtype; it is per_category's
    gathered: npt.NDArray[_Scalar] = np.append(per_category, np.asarray([missing], dtype=per_category.dtype))[codes]
    return gathered


def isin(s: pd.Series, values: pd.Series | pd.Index | Collection[str]) -> Mask:
    """``s.isin(values)`` as a numpy bool array, in Arrow (pandas' own is a Python loop for arrow strings)."""
    if len(s) == 0:
        return np.zeros(0, dtype=bool)
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = s.cat.categories
        hit = isin(pd.Series(cats, dtype="string[pyarrow]"), values) if len(cats) else np.zeros(0, bool)
        codes = s.cat.codes.to_numpy()
        return by_code(hit.astype(bool), codes, False)
    vals = list(values) if isinstance(values, (set, frozenset, tuple)) else values
    value_set = _arrow(pd.Series(vals, dtype="string[pyarrow]") if isinstance(vals, list) else vals)
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    out = pc.is_in(_arrow(s), value_set=value_set, skip_nulls=True)
    return np.asarray(out.to_numpy(zero_copy_only=False), dtype=bool).copy()


def index_in(keys: pd.Series, values: pd.Series) -> Rows:
    """Position of each key in ``values`` (-1 where absent), in Arrow."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    value_set = _arrow(values)
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    out = pc.index_in(_arrow(keys), value_set=value_set, skip_nulls=True).fill_null(-1)
    return np.asarray(out.to_numpy(zero_copy_only=False), dtype=np.int64)


def suffix(s: pd.Series, text: str) -> pd.Series:
    """Each value with ``text`` appended (Arrow kernel), row for row: the result keeps ``s``'s index by position
    (a Series built from a Series would realign on the index and misplace the values of a filtered column)."""
    lit = pa.scalar(text, pa.large_string())
    joined = pc.binary_join_element_wise(_arrow(s), lit, pa.scalar("", pa.large_string()))
    return pd.Series(pd.arrays.ArrowStringArray(joined), index=s.index).astype("string[pyarrow]")


def _s(values: pd.Series | npt.NDArray[Any] | Sequence[str]) -> pd.Series:
    """A nullable pyarrow-backed string column (fast vectorised regex in validation).

    A column that already holds Arrow text (pandas' default ``str`` columns) is re-wrapped without a copy.
    """
    if not isinstance(values, pd.Series):
        return pd.Series(values, dtype="string[pyarrow]")
    data = arrow_data(values)
    if data is not None and (pa.types.is_large_string(data.type) or pa.types.is_string(data.type)):
        data = data if pa.types.is_large_string(data.type) else data.cast(pa.large_string())
        return pd.Series(pd.arrays.ArrowStringArray(data), index=values.index, name=values.name)
    return values.astype("string[pyarrow]")


def _category(s: pd.Series) -> pd.Series:
    """``s.astype("category")`` of a text column from one Arrow dictionary encoding: the same categories in the
    same (sorted) order, without pandas' generic factorisation on top."""
    data = arrow_data(s)
    if data is None or not pa.types.is_large_string(data.type):
        return s.astype("category")
    if data.null_count == len(data):      # a field the source does not record: no categories, no encoding pass
        return pd.Series(pd.Categorical.from_codes(np.full(len(data), -1, dtype=np.int8), dtype=pd.CategoricalDtype(
            pd.Index([], dtype="string[pyarrow]"))), index=s.index)
    enc = pc.dictionary_encode(data.combine_chunks())
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    codes = np.where(idx >= 0, rank[np.maximum(idx, 0)], -1) if len(rank) else np.full(len(idx), -1, np.int32)
    cats = pd.Index(pd.arrays.ArrowStringArray(enc.dictionary.take(pa.array(order))), dtype="string[pyarrow]")
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(cats)), index=s.index)


def _date(values: pd.Series | Sequence[dt.date]) -> pd.Series:
    v = pd.Series(values).reset_index(drop=True)
    if v.dtype.kind == "M" and getattr(v.dtype, "tz", None) is None:
        return v.astype("datetime64[s]")          # already dates: nothing to parse
    return pd.to_datetime(v, errors="coerce", format="ISO8601").astype("datetime64[s]")


def _no_dates(n: int) -> pd.Series:
    """A date column with no dates (what ``_date`` of ``n`` Nones gives, without parsing them)."""
    return pd.Series(np.full(n, np.datetime64("NaT"), dtype="datetime64[s]"))


#: An unparseable birth date is held as this impossible date, so IDSREJ008 quarantines the record.
UNPARSEABLE_BIRTH = pd.Timestamp("2999-12-31")


def _score_text(v: pd.Series) -> pd.Series:
    """PersScore as text: integers as digits; anything else as given (the format rule quarantines it)."""
    v = pd.Series(v).reset_index(drop=True)
    if pd.api.types.is_integer_dtype(v):
        return v.astype("Int64").astype("string[pyarrow]")
    if pd.api.types.is_float_dtype(v):
        f = v.astype("Float64")
        whole = (f.round() == f).fillna(False).to_numpy(dtype=bool)
        out = f.astype("string[pyarrow]")
        out[whole] = f[whole].astype("Int64").astype("string[pyarrow]")
        return out
    num = pd.to_numeric(v, errors="coerce")
    integral = num.notna() & (num.round() == num)
    out = v.astype(object).where(v.notna(), None).astype("string[pyarrow]")
    out[integral.to_numpy(dtype=bool)] = num[integral].astype("Int64").astype("string[pyarrow]")
    return out


def _score_column(v: pd.Series | None, rows: Mask, text: pd.Series | None = None) -> pd.Series:
    """PersScore of the rows ``rows`` as the categorical the table holds: ``text`` (``score_text``, the score of a
    non-integer item as recorded: Y/N answers, decimals) where present, else the integer ``score`` as text.

    The recorded text is kept exactly (never re-formatted: "07" stays "07"). Plain integer scores (the usual case)
    are formatted once per distinct value rather than once per row; categories sorted as text, as
    ``.astype("category")`` sorts them."""
    n = int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows)
    if v is None:
        v = pd.Series([None] * len(rows), dtype=object)
    if text is not None:
        t = _s(pd.Series(text).reset_index(drop=True)[rows].reset_index(drop=True))
        if t.notna().any():
            ints = _score_text(pd.Series(v).reset_index(drop=True)[rows])
            return _category(_s(t.where(t.notna(), ints.astype("string[pyarrow]"))))
    if n == 0:
        return _category(_s(pd.Series([], dtype=object)))
    return _score_column_numbers(v, rows)


def _score_column_numbers(v: pd.Series, rows: Mask) -> pd.Series:
    """``_score_text(v)[rows]`` as a categorical (see :func:`_score_column`)."""
    v = pd.Series(v).reset_index(drop=True)
    ints = v.to_numpy()[rows] if isinstance(v.dtype, np.dtype) and v.dtype.kind in "iu" else None
    if ints is None or not len(ints) or int(ints.max()) - int(ints.min()) > 1_000_000:
        return _category(_score_text(v[rows]))
    lo = int(ints.min())
    present = np.zeros(int(ints.max()) - lo + 1, dtype=bool)
    present[ints - lo] = True
    values = np.flatnonzero(present) + lo
    text = np.array([str(x) for x in values.tolist()], dtype=object)
    order = np.argsort(text, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    slot = np.cumsum(present) - 1                     # value - lo -> index into ``values``
    codes = rank[slot[ints - lo]]
    cats = pd.Index(list(text[order]), dtype="string[pyarrow]")
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(cats)))


def _hms(local: pd.Series) -> pd.Series:
    """HH:MM:SS of naive datetimes, as a categorical of text (what ``.astype("category")`` of the text gives).

    The text is formatted once per distinct second of the day (at most 86,400), not per row: Arrow's strftime
    costs about a microsecond a row, which is seconds on a national month.
    """
    secs = local.astype("datetime64[s]").to_numpy()
    nat = np.isnat(secs)
    tod = np.where(nat, -1, secs.astype(np.int64) % 86_400)
    uniq, inverse = np.unique(tod, return_inverse=True)
    shift = int(len(uniq) > 0 and uniq[0] < 0)          # -1 (no time) sorts first: it becomes code -1
    cats = [f"{u // 3600:02d}:{u // 60 % 60:02d}:{u % 60:02d}" for u in uniq[shift:].tolist()]
    codes = inverse.reshape(-1).astype(np.int32) - shift
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(
        pd.Index(cats, dtype="string[pyarrow]"))), index=local.index)


def _local(instants: pd.Series) -> pd.Series:
    """UTC naive instants -> naive London wall-clock times."""
    s = pd.to_datetime(pd.Series(instants).reset_index(drop=True), errors="coerce", format="ISO8601")
    return s.dt.tz_localize("UTC").dt.tz_convert(LONDON).dt.tz_localize(None)


# ---- integer surrogate keys for the id columns ---------------------------------------------------------------

#: Id columns that point at one another share one integer code space (a "kind"), so that parent checks,
#: duplicate checks, look-ups and the cascade compare small integers instead of hashing id strings again in
#: every rule: hashing a million distinct strings costs ~0.1-0.3 s each time, comparing codes a millisecond.
KEY_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "patient": (("IDS001MPI", "LocalPatientId"), ("IDS101Referral", "LocalPatientId"),
                *((t, "LocalPatientId") for t in PATIENT_CHILDREN)),
    "referral": (("IDS101Referral", "ServiceRequestId"), *((t, "ServiceRequestId") for t in REFERRAL_CHILDREN)),
    "contact": (("IDS201CareContact", "CareContactId"), ("IDS202CareActivity", "CareContactId")),
    "activity": (("IDS202CareActivity", "CareActId"), ("IDS607CodedScoreAssessmentAct", "CareActId")),
}
KIND: dict[tuple[str, str], str] = {tc: kind for kind, cols in KEY_KINDS.items() for tc in cols}


def filter_rows(df: pd.DataFrame, mask: Mask) -> pd.DataFrame:
    """``df.loc[mask].reset_index(drop=True)``, column by column on the arrays (a quarter quicker than ``.loc``
    on these frames, and the screen filters every table)."""
    if df.columns.has_duplicates:
        return df.loc[mask].reset_index(drop=True)
    return pd.DataFrame({c: df[c].array[mask] for c in df.columns}, columns=df.columns)


def arrow_data(s: pd.Series) -> pa.ChunkedArray | None:
    """The immutable Arrow data behind an Arrow-backed column (None for any other column).

    Arrow arrays never change in place (pandas replaces the array on every assignment), so "the same Arrow
    object" means "the same values": that is what makes it safe to cache anything derived from a column.
    """
    data = s.array.__arrow_array__() if isinstance(s.array, pd.arrays.ArrowExtensionArray) else None
    return data if isinstance(data, pa.ChunkedArray) else None


def encode_together(arrays: list[pa.Array | pa.ChunkedArray]) -> tuple[list[KeyCodes], int]:
    """Dictionary-encode several string columns in one pass: one code space (int32), -1 for null."""
    lengths = [len(a) for a in arrays]
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    whole = pa.concat_arrays([c.cast(pa.large_string()) for c in chunks]) if chunks else \
        pa.array([], pa.large_string())
    enc = pc.dictionary_encode(whole)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return np.split(idx, np.cumsum(lengths)[:-1]), len(enc.dictionary)


class Keys:
    """Integer codes for the id columns of a data set's tables, one code space per kind (``KEY_KINDS``).

    A cache, checked on every use: an entry is valid only while the column still holds the very Arrow array it
    was computed from. Anything that replaces or edits a column (a rule's breaker in the tests, another
    module) makes the next look-up encode the kind again from the strings, so a stale code is never used.
    :meth:`keep` filters a table and its cached codes together, so screening and the cascade keep the codes
    without hashing again. Other values derived from one column (blank masks, format checks) are memoised
    the same way with :meth:`derived`.
    """

    def __init__(self) -> None:
        # the Arrow data the codes were computed from (None: a column not Arrow-backed, codes for one use)
        self._codes: dict[tuple[str, str], tuple[pa.ChunkedArray | None, KeyCodes]] = {}
        self._size: dict[str, int] = {}
        # (name, id of each column's data) -> (the columns' data, the value, row-wise); the value is whatever the
        # name's compute returned
        self._derived: dict[tuple[str | int, ...], tuple[tuple[pa.ChunkedArray, ...], object, bool]] = {}
        self._first: dict[tuple[str, str], tuple[KeyCodes, Rows]] = {}

    def clear(self) -> None:
        """Forget everything (what is asked for again is computed afresh)."""
        self._codes.clear()
        self._size.clear()
        self._derived.clear()
        self._first.clear()

    def copy(self) -> Keys:
        k = Keys()
        k._codes, k._size, k._derived, k._first = (dict(self._codes), dict(self._size), dict(self._derived),
                                                   dict(self._first))
        return k

    def put(self, tables: dict[str, pd.DataFrame], kind: str, codes: dict[tuple[str, str], KeyCodes],
            size: int) -> None:
        """Record codes computed elsewhere (the builder derives them while building; every member of the kind)."""
        for tc, c in codes.items():
            data = arrow_data(tables[tc[0]][tc[1]])
            if data is None or len(data) != len(c):
                self._codes.pop(tc, None)
            else:
                self._codes[tc] = (data, c)
        self._size[kind] = size

    def codes(self, tables: dict[str, pd.DataFrame], table: str, col: str) -> tuple[KeyCodes, int]:
        """Codes of ``tables[table][col]`` (-1 for null) and the size of its kind's code space."""
        kind = KIND[(table, col)]
        if not self._valid(tables, kind):
            self._encode_kind(tables, kind)
        return self._codes[(table, col)][1], self._size[kind]

    def _members(self, tables: dict[str, pd.DataFrame], kind: str) -> list[tuple[str, str]]:
        return [(t, c) for t, c in KEY_KINDS[kind] if t in tables and c in tables[t].columns]

    def _valid(self, tables: dict[str, pd.DataFrame], kind: str) -> bool:
        for t, c in self._members(tables, kind):
            hit = self._codes.get((t, c))
            if hit is None or hit[0] is None or hit[0] is not arrow_data(tables[t][c]):
                return False
        return kind in self._size

    def _encode_kind(self, tables: dict[str, pd.DataFrame], kind: str) -> None:
        members = self._members(tables, kind)
        codes, size = encode_together([_arrow(tables[t][c]) for t, c in members])
        for tc in KEY_KINDS[kind]:
            self._codes.pop(tc, None)
        for (t, c), cd in zip(members, codes, strict=True):
            data = arrow_data(tables[t][c])
            if data is not None:
                self._codes[(t, c)] = (data, cd)
            else:  # not Arrow-backed: nothing to check a cached copy against, so the codes are used once
                self._codes[(t, c)] = (None, cd)
        self._size[kind] = size

    def keep(self, tables: dict[str, pd.DataFrame], table: str, mask: Mask) -> None:
        """Filter ``tables[table]`` to ``mask``, carrying what is cached for its columns along with the rows: the
        key codes, and the row-wise derived values (blank masks, format checks): a value computed row by row
        on the old column, filtered, is the value on the new one."""
        old = tables[table]
        new = filter_rows(old, mask)
        tables[table] = new
        moved = {id(d): arrow_data(new[c]) for c in old.columns if (d := arrow_data(old[c])) is not None}
        for (t, c), (data, cd) in list(self._codes.items()):
            if t == table and data is not None and c in old.columns and data is arrow_data(old[c]):
                self._codes[(t, c)] = (arrow_data(new[c]), cd[mask])
        for k, (datas, value, rows) in list(self._derived.items()):
            if not any(id(d) in moved for d in datas):
                continue
            del self._derived[k]   # the old column can never be asked for again: let it go (peak memory)
            if rows and len(datas) == 1 and (d := moved[id(datas[0])]) is not None:
                # a row-wise value is an array, or (array, n) (see derived)
                carried = (value[0][mask], value[1]) if isinstance(value, tuple) else \
                    typing.cast(npt.NDArray[Any], value)[mask]
                self._derived[(k[0], id(d))] = ((d,), carried, True)

    def derived(self, name: str, series: tuple[pd.Series, ...], compute: Callable[[], _T], *, rows: bool = False
                ) -> _T:
        """``compute()`` memoised on the Arrow data of ``series`` (recomputed whenever any of them changed).

        ``rows``: the value is an array with one entry per row (or ``(array, n)``) computed row by row, so
        :meth:`keep` may filter it along with the table instead of dropping it.
        """
        datas = tuple(arrow_data(s) for s in series)
        if any(d is None for d in datas):
            return compute()
        hit = self._derived.get((name, *map(id, datas)))
        if hit is not None and all(a is b for a, b in zip(hit[0], datas, strict=True)):
            return typing.cast(_T, hit[1])   # what this name's compute returned, on these very columns
        value = compute()
        self._derived[(name, *map(id, datas))] = (datas, value, rows)
        return value

    def first_row(self, tables: dict[str, pd.DataFrame], table: str, col: str) -> Rows:
        """For each code of the kind: the first row of ``table`` holding it, or -1."""
        codes, size = self.codes(tables, table, col)
        hit = self._first.get((table, col))
        if hit is not None and hit[0] is codes:     # keyed on the codes: a re-encoded kind has new ones
            return hit[1]
        first = np.full(size, len(codes), dtype=np.int64)
        ok = codes >= 0
        np.minimum.at(first, codes[ok], np.flatnonzero(ok))
        first[first == len(codes)] = -1
        self._first[(table, col)] = (codes, first)
        return first

    def present(self, tables: dict[str, pd.DataFrame], table: str, col: str) -> Mask:
        """For each code of the kind: whether ``table[col]`` holds it."""
        codes, size = self.codes(tables, table, col)
        out = np.zeros(size, dtype=bool)
        out[codes[codes >= 0]] = True
        return out

    def isin(self, tables: dict[str, pd.DataFrame], table: str, col: str, other: str, other_col: str) -> Mask:
        """``tables[table][col].isin(tables[other][other_col])`` over codes (null is never in)."""
        codes, _ = self.codes(tables, table, col)
        present = self.present(tables, other, other_col)
        return (codes >= 0) & present[np.maximum(codes, 0)] if len(present) else np.zeros(len(codes), bool)


def _column(df: pd.DataFrame, col: str) -> pd.Series | None:
    """``df[col]`` with a fresh index, or None when the source frame has no such column (a source not recording it
    yet: the field is built empty)."""
    return pd.Series(df[col]).reset_index(drop=True) if col in df.columns else None


def icd10_code(codes: pd.Series, scheme: pd.Series | str) -> pd.Series:
    """ICD-10 codes (where ``scheme`` is ``01``, ICD-10) in NHS Digital's 4-character form: the dot removed and a
    3-character code padded with ``X`` (``F32`` -> ``F32X``, ``F41.1`` -> ``F411``), as the receiving side wants
    (IDS60309/IDS60310: 4-6 characters). This is NHS Digital's ICD-10 convention for national data sets (HES,
    SUS, MHSDS, IAPT): codes carried without the decimal point, and a code with no fourth character filled with
    ``X`` in the 4th position (NHS Data Dictionary / Hospital Episode Statistics data dictionary, "ICD-10 codes
    with no 4th character are given an X filler", e.g. ``I10X``). Other schemes and nulls are left as they are."""
    codes = _s(codes)
    if isinstance(scheme, str):
        icd = np.full(len(codes), scheme == FIND_SCHEME_ICD10)
    else:
        icd = (_s(scheme) == FIND_SCHEME_ICD10).fillna(False).to_numpy(dtype=bool)
    if not (icd & codes.notna().to_numpy()).any():
        return codes
    dotless = codes.str.strip().str.replace(".", "", regex=False).str.upper()
    padded = dotless.where(dotless.str.len() != 3, dotless + "X")
    return codes.where(~icd, padded)


def _text_of(df: pd.DataFrame, col: str) -> pd.Series:
    """A source column as nullable Arrow text (all null when absent)."""
    v = _column(df, col)
    if v is None:
        return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.nulls(len(df), pa.large_string())])))
    return _s(v)


def _date_of(df: pd.DataFrame, col: str) -> pd.Series:
    """A source date column as ``datetime64[s]`` dates (unparseable → NaT; all NaT when absent)."""
    v = _column(df, col)
    return _no_dates(len(df)) if v is None else _date(v)


def _int_of(df: pd.DataFrame, col: str) -> pd.Series:
    """A source number column as nullable ``Int64`` (unparseable → NA; all NA when absent)."""
    v = _column(df, col)
    if v is None:
        n = len(df)
        return pd.Series(pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)))
    return pd.to_numeric(v, errors="coerce").astype("Int64")


def _local_of(df: pd.DataFrame, col: str) -> pd.Series:
    """A source UTC instant column as naive London wall-clock times (all NaT when absent)."""
    v = _column(df, col)
    return _local(v if v is not None else pd.Series([None] * len(df), dtype=object))


def _until(dates: pd.Series, period: Period) -> pd.Series:
    """End dates, blank where after the period: at its end the thing was still open."""
    return dates.mask((dates >= pd.Timestamp(period.end)).to_numpy())


def _gather(values: pd.Series, rows: Rows) -> pd.Series:
    """``values[rows]`` (text), null where ``rows`` is -1, in Arrow."""
    arr = _arrow(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    idx = pa.array(np.maximum(rows, 0), type=pa.int64(), mask=rows < 0)
    return _s(pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pc.take(arr, idx)]))))


def _row_of(codes: KeyCodes, size: int) -> Rows:
    """For each code of a kind: a row of the frame ``codes`` came from that holds it (-1: none)."""
    rows = np.full(size + 1, -1, dtype=np.int64)
    ok = codes >= 0
    rows[codes[ok]] = np.flatnonzero(ok)
    return rows


def _frame(cols: dict[str, pd.Series], rid: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({**cols, "_rid": _s(rid)})


def build(src: SourceMonth, period: Period, *, org_provider: str, version: str = DEFAULT_VERSION,
          org_submitter: str | None = None, system: str = "Caldicott",
          created_at: dt.datetime | None = None, consume: bool = False) -> Dataset:
    """Map one period of source rows to all the data set tables (vectorised; no validation here).

    Every table of :data:`COLUMNS` is built, with every national field, even when the source frame is empty or
    lacks the column (then the field is empty): the file's structure never depends on what the service records.

    ``consume=True``: the caller hands ``src`` over and it is left empty (:meth:`SourceMonth.clear`; keep beforehand
    any frame still needed, e.g. ``patients`` for the pre-2020 rule). Each source frame is then let go as soon as
    its tables are built: a national month's contacts and scores (two thirds of the source) otherwise stay alive
    beside the 21 tables being assembled, which made the month's peak memory (4.1 GiB at 1 M referrals). The
    default leaves ``src`` untouched (the build lets go only of its own shallow copy), for callers that use it
    again (the bench builds one source several times).
    """
    if version not in VERSIONS:
        raise ValueError(f"data set version {version!r} is not supported (one of {', '.join(VERSIONS)})")
    if not org_provider:
        raise ValueError("org_provider (OrgIDProv, the provider's ODS code) is required: it has no default")
    created = created_at or dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    given = src
    src = SourceMonth(src.patients.reset_index(drop=True), src.referrals.reset_index(drop=True),
                      src.contacts.reset_index(drop=True), src.assessments.reset_index(drop=True), history=src.history,
                      **{n: getattr(src, n).reset_index(drop=True) for n in SourceMonth.EXTRA})
    if consume:
        given.clear()   # this local copy now holds the only references to the frames (shared, not copied)
    del given
    header = pd.DataFrame({
        "DatSetVer": _s([version]), "OrgIDProv": _s([org_provider]), "OrgIDSubmit": _s([org_submitter or org_provider]),
        "PrimSystemInUse": _s([system]), "ReportingPeriodStartDate": _date([period.first]),
        "ReportingPeriodEndDate": _date([period.last]), "DateTimeDatSetCreate": pd.Series([created]).astype(
            "datetime64[s]"), "_rid": _s(["header"])})

    # ---- patient: IDS001, IDS002 and the patient-level tables ----
    p = src.patients
    pid = _s(p["local_patient_id"])
    r = src.referrals
    ref_pid = _s(r["local_patient_id"])
    acc, emp, dis, soc, ovs, dia, clu = (src.accommodation, src.employment, src.disability, src.circumstances,
                                         src.overseas, src.diagnoses, src.clusters)
    child_pid = [_text_of(f, "local_patient_id") for f in (acc, emp, dis, soc, ovs, dia, clu)]
    (pat_codes, ref_pat_codes, *child_pat_codes), n_pat = encode_together(
        [_arrow(pid), _arrow(ref_pid), *(_arrow(x) for x in child_pid)])
    nhs = _s(p["nhs_number"])
    birth = _date(p["birth_date"])
    birth = birth.mask(birth.isna().to_numpy() & pd.Series(p["birth_date"]).notna().to_numpy(), UNPARSEABLE_BIRTH)
    mpi = pd.DataFrame({
        "LocalPatientId": pid, "OrgIDLocalPatientId": _s(np.full(len(p), org_provider, dtype=object)), "NHSNumber": nhs,
        "NHSNumberStatus": _s(np.where(nhs.notna().to_numpy(), "01", "07")), "PersonBirthDate": birth,
        "Postcode": _s(p["postcode"]), "Gender": _s(p["gender"]), "GenderIdentity": _text_of(p, "gender_identity"),
        "GenderIdentitySameAtBirth": _text_of(p, "gender_same_at_birth"), "EthnicCategory": _s(p["ethnic_category"]),
        "EthnicCategory2021": _text_of(p, "ethnic_category_2021"), "ExBAFIndicator": _text_of(p, "ex_armed_forces"),
        "LanguageCodePreferred": _text_of(p, "preferred_language"),
        "EduEstabTypeIAPT": _text_of(p, "education_establishment"), "_rid": pid})
    gp_code = _s(p["gp_practice_code"])
    gp_code = gp_code.where(gp_code.notna() & (gp_code.str.strip() != ""), GP_NOT_KNOWN)
    gp = pd.DataFrame({"LocalPatientId": pid, "GMPCodeReg": gp_code,
                       "StartDateGMPRegistration": _no_dates(len(p)), "EndDateGMPRegistration": _no_dates(len(p)),
                       "_rid": pid})
    accomm = _frame({"LocalPatientId": child_pid[0], "AccommodationType": _text_of(acc, "accommodation_type"),
                     "SettledAccommodationInd": _text_of(acc, "settled"),
                     "AccommodationTypeDate": _date_of(acc, "recorded_date"),
                     "AccommodationTypeStartDate": _date_of(acc, "start_date"),
                     "AccommodationTypeEndDate": _until(_date_of(acc, "end_date"), period)},
                    _text_of(acc, "accommodation_id"))
    employ = _frame({"LocalPatientId": child_pid[1], "EmployStatus": _text_of(emp, "employment_status"),
                     "EmployStatusRecDate": _date_of(emp, "recorded_date"),
                     "WeekHoursWorked": _text_of(emp, "weekly_hours"), "SelfEmployInd": _text_of(emp, "self_employed"),
                     "SickAbsenceInd": _text_of(emp, "sickness_absence"), "SSPInd": _text_of(emp, "statutory_sick_pay"),
                     "BenefitRecInd": _text_of(emp, "benefit_receipt"), "ESAInd": _text_of(emp, "esa"),
                     "UCInd": _text_of(emp, "universal_credit"), "PIPInd": _text_of(emp, "pip"),
                     "EmpSupportInd": _text_of(emp, "employment_support"),
                     "EmpSupportReferral": _date_of(emp, "employment_support_referral_date"),
                     "EmpSupportDischargeDate": _until(_date_of(emp, "employment_support_discharge_date"), period)},
                    _text_of(emp, "employment_id"))
    disab = _frame({"LocalPatientId": child_pid[2], "DisabCode": _text_of(dis, "disability_code")},
                   _text_of(dis, "disability_id"))
    social = _frame({"LocalPatientId": child_pid[3], "SocPerCircumstance": _text_of(soc, "snomed_code"),
                     "SocPerCircumstanceRecDate": _date_of(soc, "recorded_date")}, _text_of(soc, "circumstance_id"))
    overseas = _frame({"LocalPatientId": child_pid[4], "OvsVisChCat": _text_of(ovs, "charging_category"),
                       "OvsVisChCatAppDate": _date_of(ovs, "applicable_date")}, _text_of(ovs, "visitor_id"))
    prev_diag = _frame({"LocalPatientId": child_pid[5], "DiagSchemeInUse": _text_of(dia, "scheme"),
                        "PrevDiag": icd10_code(_text_of(dia, "code"), _text_of(dia, "scheme")),
                        "DiagDate": _date_of(dia, "diagnosis_date")},
                       _text_of(dia, "diagnosis_id"))
    clu_start, clu_end = _local_of(clu, "start_at"), _local_of(clu, "end_at")
    clu_end = clu_end.mask((clu_end >= pd.Timestamp(period.end)).to_numpy())   # still assigned at the period end
    cluster = _frame({"LocalPatientId": child_pid[6], "AMHCareClustCodeFin": _text_of(clu, "cluster_code"),
                      "StartDateCareClust": clu_start.dt.floor("D").astype("datetime64[s]"),
                      "StartTimeCareClust": _hms(clu_start),
                      "EndDateCareClust": clu_end.dt.floor("D").astype("datetime64[s]"),
                      "EndTimeCareClust": _hms(clu_end)}, _text_of(clu, "cluster_id"))
    # each source frame is let go as soon as its tables are built (with consume, these are its last references):
    # what is still alive when the contacts and scores are built below, the bulk of the month, makes the peak
    src.clear("patients", "accommodation", "employment", "disability", "circumstances", "overseas", "diagnoses",
              "clusters")
    del p, acc, emp, dis, soc, ovs, dia, clu

    # ---- referral: IDS101 and the referral-level tables ----
    rid = _s(r["service_request_id"])
    disch = _date(r["discharge_date"])
    after = (disch >= pd.Timestamp(period.end)).to_numpy()  # discharged after the period: still open at its end
    disch = disch.mask(after)
    end_code = _s(r["end_code"]).mask(after)
    received = _date(r["received_date"])
    commissioner = _s(r["commissioner_code"])
    ref = pd.DataFrame({
        "ServiceRequestId": rid, "LocalPatientId": ref_pid, "OrgIDComm": commissioner,
        "ReferralRequestReceivedDate": received, "SourceOfReferralIAPT": _s(r["source_of_referral"]),
        "OnsetDate": _text_of(r, "onset_month"), "PrevDiagCondInd": _text_of(r, "previous_diagnosed_condition"),
        "EndCode": end_code, "ServDischDate": disch, "_rid": rid})
    new = (received >= pd.Timestamp(period.first)).to_numpy()
    pres_code = icd10_code(_text_of(r, "presenting_problem_code"), FIND_SCHEME_ICD10)
    has_code = pres_code.notna().to_numpy()
    pick = new & has_code
    pres = pd.DataFrame({name: col[pick].reset_index(drop=True) for name, col in (
        ("ServiceRequestId", rid), ("FindSchemeInUse", _s(np.full(len(r), FIND_SCHEME_ICD10, dtype=object))),
        ("PresComp", pres_code), ("PresCompCodSig", _text_of(r, "presenting_problem_significance")),
        ("PresCompDate", received), ("_rid", rid))})

    onw, pau, itl, ltc = src.onward, src.pauses, src.therapy_logs, src.conditions
    child_sri = [_text_of(f, "service_request_id") for f in (onw, pau, itl, ltc)]
    onw_local = _local_of(onw, "referred_at")
    onward = _frame({"ServiceRequestId": child_sri[0],
                     "OnwardReferDate": onw_local.dt.floor("D").astype("datetime64[s]"),
                     "OnwardReferTime": _hms(onw_local), "OnwardReferReason": _text_of(onw, "reason"),
                     "OrgIDReceiving": _text_of(onw, "receiving_org_code")}, _text_of(onw, "onward_referral_id"))
    pause_id = _text_of(pau, "pause_id")
    pauses = _frame({"PauseID": pause_id, "ServiceRequestId": child_sri[1],
                     "PauseStartDate": _date_of(pau, "start_date"),
                     "PauseEndDate": _until(_date_of(pau, "end_date"), period),
                     "PauseReason": _text_of(pau, "reason")}, pause_id)
    logs = _frame({"ServiceRequestId": child_sri[2], "StartDateIntEnabledTherLog": _date_of(itl, "start_date"),
                   "EndDateIntEnabledTherLog": _until(_date_of(itl, "end_date"), period),
                   "IntEnabledTherProg": _text_of(itl, "programme"),
                   "DurationIntEnabledTher": _int_of(itl, "duration_minutes"),
                   "CarePersLocalId": _text_of(itl, "care_pers_local_id"),
                   "IntegratedSoftwareInd": _text_of(itl, "integrated_software")}, _text_of(itl, "log_id"))
    ltcs = _frame({"ServiceRequestId": child_sri[3], "FindSchemeInUse": _text_of(ltc, "scheme"),
                   "LongTermCondition": icd10_code(_text_of(ltc, "code"), _text_of(ltc, "scheme"))},
                  _text_of(ltc, "condition_id"))
    src.clear("referrals", "onward", "pauses", "therapy_logs", "conditions")
    del r, onw, pau, itl, ltc, pres_code

    # ---- contacts, activities, scores ----
    c = src.contacts
    cid = _s(c["care_contact_id"])
    cc_sri = _s(c["service_request_id"])
    a = src.assessments
    a_contact = _s(a["care_contact_id"])
    at_contact = a_contact.notna().to_numpy()
    a_sri = _s(pd.Series(a["service_request_id"])[~at_contact].reset_index(drop=True))  # only IDS606 rows
    # the id columns' integer codes, one hashing pass per kind (see Keys); CareActId is the contact id + "-1",
    # a one-to-one mapping, so activities share the contacts' codes
    (rid_codes, cc_sri_codes, a_sri_codes, *child_ref_codes), n_ref = encode_together(
        [_arrow(rid), _arrow(cc_sri), _arrow(a_sri), *(_arrow(x) for x in child_sri)])
    (cid_codes, a_cid_codes), n_con = encode_together([_arrow(cid), _arrow(a_contact[at_contact])])
    local = _local(c["contact_at"])
    contact = pd.DataFrame({
        "CareContactId": cid, "ServiceRequestId": cc_sri,
        "CareContDate": local.dt.floor("D").astype("datetime64[s]"), "CareContTime": _hms(local),
        "OrgIDComm": _gather(commissioner, _row_of(rid_codes, n_ref)[np.where(cc_sri_codes >= 0, cc_sri_codes,
                                                                              n_ref)]),
        "PlannedCareContIndicator": _text_of(c, "planned"), "AttendOrDNACode": _s(c["attend_code"]),
        "Cancellation": _text_of(c, "short_notice_cancellation"),
        "ClinContDurOfCareCont": _int_of(c, "duration_minutes"), "IAPTLTCServiceInd": _text_of(c, "ltc_service"),
        "AppType": _s(c["app_type"]), "ConsMechanism": _s(c["cons_mechanism"]),
        "IntEnabledTherProg": _text_of(c, "digital_programme"), "CareContPatientTherMode": _text_of(c, "therapy_mode"),
        "NumGroupTherParticipants": _int_of(c, "group_participants"),
        "NumGroupTherFacilitators": _int_of(c, "group_facilitators"),
        "PsychMed": _text_of(c, "psychotropic_medication"),
        "ActLocTypeCode": _text_of(c, "activity_location"), "SiteIDOfTreat": _text_of(c, "site_code"),
        "LanguageCodeTreat": _text_of(c, "treatment_language"),
        "InterpreterPresentInd": _text_of(c, "interpreter_present"), "_rid": cid})

    # one care activity per contact that was attended or holds scores; CareActId derived from the contact id
    scored = np.zeros(n_con, dtype=bool)
    scored[a_cid_codes[a_cid_codes >= 0]] = True
    attended = isin(contact["AttendOrDNACode"], list(ATTENDED))
    act_mask = attended | ((cid_codes >= 0) & scored[np.maximum(cid_codes, 0)] if n_con else False)
    act_contacts = contact[["CareContactId", "ClinContDurOfCareCont"]].loc[act_mask].reset_index(drop=True)
    act_id = suffix(act_contacts["CareContactId"], "-1")

    def at_act(frame: pd.DataFrame, col: str) -> pd.Series:   # the frame passed, not closed over: c is let go below
        return _text_of(frame, col)[act_mask].reset_index(drop=True)

    activity = pd.DataFrame({
        "CareActId": act_id, "CareContactId": _s(act_contacts["CareContactId"]),
        "CarePersLocalId": at_act(c, "clinician_id"),
        "ClinContactDurOfCareAct": act_contacts["ClinContDurOfCareCont"].reset_index(drop=True),
        "CodeProcAndProcStatus": at_act(c, "procedure_code"), "FindSchemeInUse": at_act(c, "finding_scheme"),
        "CodeFind": icd10_code(at_act(c, "finding_code"), at_act(c, "finding_scheme")),
        "CodeObs": at_act(c, "observation_code"), "ObsValue": at_act(c, "observation_value"),
        "UnitMeasure": at_act(c, "observation_unit"), "_rid": act_id})
    # the contacts are consumed: let go of them and of what was only derived from them, rather than hold them
    # beside the scores and to the end of the build
    src.clear("contacts")
    del c, local, act_contacts

    aid = _s(a["assessment_id"])
    a_local = _local(pd.Series(a["assessed_at"])[~at_contact])   # times only for IDS606 rows
    tool = _s(a["tool_code"])
    score, score_text = _column(a, "score"), _column(a, "score_text")
    refer = pd.DataFrame({
        "ServiceRequestId": a_sri,
        "CodedAssToolType": tool[~at_contact].reset_index(drop=True),
        "PersScore": _score_column(score, ~at_contact, score_text),
        "AssToolCompDate": a_local.dt.floor("D").astype("datetime64[s]"),
        "AssToolCompTime": _hms(a_local), "_rid": aid[~at_contact].reset_index(drop=True)})
    act = pd.DataFrame({
        "CareActId": suffix(a_contact[at_contact], "-1").reset_index(drop=True),
        "CodedAssToolType": tool[at_contact].reset_index(drop=True),
        "PersScore": _score_column(score, at_contact, score_text), "_rid": aid[at_contact].reset_index(drop=True)})
    # the scores are consumed too; these locals share the source frame's columns, so they go with it
    src.clear("assessments")
    del a, a_contact, a_local, aid, tool, score, score_text

    # ---- IDS902: qualifications of the personnel the file's activities and therapy logs name ----
    q = src.qualifications
    q_pers = _text_of(q, "care_pers_local_id")
    named = pd.concat([activity["CarePersLocalId"], logs["CarePersLocalId"]], ignore_index=True).dropna()
    keep_q = isin(q_pers, named.astype("string[pyarrow]")) if len(q_pers) and len(named) else np.zeros(len(q), bool)
    quals = _frame({"CarePersLocalId": q_pers, "QualAttainLevelIAPT": _text_of(q, "level"),
                    "QualAwardedDate": _date_of(q, "awarded_date"),
                    "QualPlannedCompletionDate": _date_of(q, "planned_completion_date")},
                   _text_of(q, "qualification_id")).loc[keep_q].reset_index(drop=True)

    tables = {"IDS000Header": header, "IDS001MPI": mpi, "IDS002GP": gp, "IDS003AccommStatus": accomm,
              "IDS004EmpStatus": employ, "IDS007DisabilityType": disab, "IDS011SocPerCircumstances": social,
              "IDS012OverseasVisitorChargCat": overseas, "IDS101Referral": ref, "IDS105OnwardReferral": onward,
              "IDS108WaitingTimePauses": pauses, "IDS201CareContact": contact, "IDS202CareActivity": activity,
              "IDS205InternetTherLog": logs, "IDS601MedHistPrevDiag": prev_diag, "IDS602LongTermCondition": ltcs,
              "IDS603PresentingComplaints": pres, "IDS606CodedScoreAssessmentRefer": refer,
              "IDS607CodedScoreAssessmentAct": act, "IDS803CareCluster": cluster, "IDS902CarePersQual": quals}
    hist = src.history
    # from here ``tables`` holds the only reference to each table's first version, and nothing holds the source
    # frames: the loop below puts each table's final form (code columns as categoricals) in its place, so each
    # first version, with its text codes, goes as soon as its final form is made
    del (src, q, header, mpi, gp, accomm, employ, disab, social, overseas, ref, onward, pauses, contact, activity, logs,
         prev_diag, ltcs, pres, refer, act, cluster, quals, gp_code, commissioner, end_code)
    for name in COLUMNS:
        df = tables[name].reset_index(drop=True)
        extra = sorted(set(df.columns) - {*COLUMNS[name], "_rid"})
        missing = [col for col in COLUMNS[name] if col not in df.columns]
        if extra or missing:   # a programming error: every national field is built, under its national name
            raise RuntimeError(f"{name}: built columns differ from the national list (missing {missing}, "
                               f"unknown {extra})")
        df = df[[*COLUMNS[name], "_rid"]]
        for col in CATEGORICAL.get(name, ()):
            if not isinstance(df[col].dtype, pd.CategoricalDtype):
                df[col] = _category(df[col])
        tables[name] = df
    ds = Dataset(period, version, {name: tables[name] for name in COLUMNS}, hist)
    k = ds.keys
    k.put(ds.tables, "patient", {("IDS001MPI", "LocalPatientId"): pat_codes,
                                 ("IDS002GP", "LocalPatientId"): pat_codes,
                                 ("IDS101Referral", "LocalPatientId"): ref_pat_codes,
                                 **{(t, "LocalPatientId"): cd for t, cd in zip(PATIENT_CHILDREN[1:], child_pat_codes,
                                                                               strict=True)}}, n_pat)
    k.put(ds.tables, "referral", {("IDS101Referral", "ServiceRequestId"): rid_codes,
                                  ("IDS201CareContact", "ServiceRequestId"): cc_sri_codes,
                                  ("IDS603PresentingComplaints", "ServiceRequestId"): rid_codes[pick],
                                  ("IDS606CodedScoreAssessmentRefer", "ServiceRequestId"): a_sri_codes,
                                  **{(t, "ServiceRequestId"): cd for t, cd in zip(
                                      ("IDS105OnwardReferral", "IDS108WaitingTimePauses", "IDS205InternetTherLog",
                                       "IDS602LongTermCondition"), child_ref_codes, strict=True)}}, n_ref)
    k.put(ds.tables, "contact", {("IDS201CareContact", "CareContactId"): cid_codes,
                                 ("IDS202CareActivity", "CareContactId"): cid_codes[act_mask]}, n_con)
    k.put(ds.tables, "activity", {("IDS202CareActivity", "CareActId"): cid_codes[act_mask],
                                  ("IDS607CodedScoreAssessmentAct", "CareActId"): a_cid_codes}, n_con)
    return ds


# ---- removing records with everything that hangs off them -------------------------------------------------

def cascade(ds: Dataset, gone: dict[str, Mask] | None = None) -> dict[str, pd.Series]:
    """Drop, in place, the records whose parent is gone; return the dropped ``_rid`` per table.

    Parents: IDS101 and the patient-level tables (:data:`PATIENT_CHILDREN`: IDS002/003/004/007/011/012/601/803)
    → IDS001 (LocalPatientId); the referral-level tables (:data:`REFERRAL_CHILDREN`: IDS105/108/201/205/602/603/
    606) → IDS101 (ServiceRequestId); IDS202 → IDS201 (CareContactId); IDS607 → IDS202 (CareActId). A patient left
    with no referral goes too (IDS00146), with its patient-level rows. IDS000 and IDS902 hang off no record. One
    pass in parent-to-child order then the orphaned-patient sweep reaches a fixed point.

    ``gone`` marks rows already rejected (screening's rule failures, a dropped referral): they are removed too
    but not returned. The parent checks compare the id columns' integer codes (:class:`Keys`) over the rows
    still alive, and each table is filtered once at the end, however many steps removed rows from it. A table the
    data set does not hold is skipped.
    """
    t, k = ds.tables, ds.keys
    alive = {name: np.ones(len(df), dtype=bool) for name, df in t.items()}
    for name, mask in (gone or {}).items():
        alive[name] &= ~np.asarray(mask, dtype=bool)
    dropped: dict[str, list[Mask]] = {}

    def has_parent(name: str, col: str, parent: str, parent_col: str) -> Mask:
        codes, size = k.codes(t, name, col)
        pcodes, _ = k.codes(t, parent, parent_col)
        present = np.zeros(size + 1, dtype=bool)             # slot ``size``: null, never present
        present[pcodes[alive[parent]]] = True
        present[-1] = False
        return present[np.where(codes >= 0, codes, size)]

    def keep(name: str, mask: Mask) -> None:
        lost = alive[name] & ~mask
        if lost.any():
            dropped.setdefault(name, []).append(lost)
            alive[name] &= mask

    mpi, ref, cc, act = "IDS001MPI", "IDS101Referral", "IDS201CareContact", "IDS202CareActivity"
    keep(ref, has_parent(ref, "LocalPatientId", mpi, "LocalPatientId"))
    keep(mpi, has_parent(mpi, "LocalPatientId", ref, "LocalPatientId"))
    for name in PATIENT_CHILDREN:
        if name in t:
            keep(name, has_parent(name, "LocalPatientId", mpi, "LocalPatientId"))
    for name in REFERRAL_CHILDREN:
        if name in t:
            keep(name, has_parent(name, "ServiceRequestId", ref, "ServiceRequestId"))
    keep(act, has_parent(act, "CareContactId", cc, "CareContactId"))
    keep("IDS607CodedScoreAssessmentAct", has_parent("IDS607CodedScoreAssessmentAct", "CareActId", act, "CareActId"))
    out = {name: pd.concat([t[name]["_rid"][m] for m in masks], ignore_index=True) for name, masks in dropped.items()}
    for name, mask in alive.items():
        if not mask.all():
            ds.keep(name, mask)
    return out


def drop(ds: Dataset, table: str, rids: pd.Series | Iterable[str]) -> dict[str, pd.Series]:
    """Remove the records of ``table`` whose ``_rid`` is in ``rids`` and everything depending on them."""
    df = ds.tables[table]
    mask = isin(df["_rid"], pd.Series(list(rids) if not isinstance(rids, pd.Series) else rids,
                                      dtype="string[pyarrow]"))
    removed = {table: df["_rid"][mask].reset_index(drop=True)} if mask.any() else {}
    for k, v in cascade(ds, {table: mask}).items():
        removed[k] = pd.concat([removed[k], v], ignore_index=True) if k in removed else v
    return removed
