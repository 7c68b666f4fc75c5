"""Synthetic clinical records: deterministic, fast, realistic enough, and deliberately a little wrong.

Run ``python -m caldicott.records.synth --patients 2000 --seed 7 --url sqlite:///var/demo/records.db``.

Every value is invented. NHS numbers are in the 999 synthetic range and pass the check digit; names,
postcodes and e-mail addresses are drawn from small made-up lists. A small share of records is bad on
purpose (see :data:`BAD_KINDS`) so that each flow must quarantine rather than crash; which ids are bad
is written to a JSON manifest beside the database, so tests can assert that exactly those were
quarantined. The manifest holds opaque ids only.

Everything is drawn from ``numpy.random.default_rng(seed)`` with vectorised operations: 100,000
patients (about 118,000 referrals, 716,000 contacts, 2.5 million scores) take seconds, not minutes.
RSA keys cannot be seeded, so practice and receiving-provider certificates are cached in ``--keys-dir``
and reused.

The facts only the national v2.1 data set and the transfer of care need (accommodation, employment,
disability, social circumstances, overseas visitors, previous diagnoses, care clusters, care personnel
and their qualifications, onward referrals and the providers that receive them, waiting-time pauses,
long-term conditions, internet-enabled therapy, the contacts' care-activity codes, scale items beyond
PHQ-9/GAD-7/WSAS) are drawn from a second generator, ``default_rng([seed, 21])``, so they never move a
record the older tables already had. Each new table has a deliberate fault kind of its own in
:data:`BAD_KINDS`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Engine, Table, delete

from caldicott.crypto.keys import cached_identity
from caldicott.db import make_engine
from caldicott.policy.referrer_updates import COLUMN_SET, FHIR_FORMAT
from caldicott.records import schema
from caldicott.records.nhs_numbers import synthetic_numbers
from caldicott.records.schema import SNOMED

log = logging.getLogger(__name__)

BAD_KINDS = (
    "invalid_nhs_number",      # check digit wrong: rejects a whole data set file; not usable for NDOP
    "postcode_without_space",  # IAPT rejects the file; letters still need a usable address
    "missing_gp_practice",     # no registered practice: no GP letter can be addressed
    "discharge_before_referral",
    "score_out_of_range",      # e.g. PHQ-9 of 31
    "duplicate_nhs_number",    # two local patients share a number: rejects a whole data set file
    "contact_before_referral",
    "unknown_referrer",        # referral names an organisation the service does not know
    "practice_without_certificate",  # smime-email practice with no certificate: letters held
    "practice_unknown_channel",      # a delivery channel Caldicott does not support
    # --- v2.1 data set tables (issue 12): one kind per table, plus two on the new scales --------------------
    "accommodation_ends_before_start",   # IDS003 accommodation type end date before its start date
    "employment_status_invalid_code",    # IDS004 EmployStatus outside IDS00407
    "disability_code_invalid",           # IDS007 DisabCode outside IDS00707
    "circumstance_not_snomed",           # IDS011 SocPerCircumstance that is not a SNOMED CT concept id
    "overseas_visitor_invalid_category",  # IDS012 OvsVisChCat outside IDS01207
    "previous_diagnosis_code_too_short",  # IDS601 ICD-10 PrevDiag of 3 characters (4-6 required)
    "care_cluster_ends_before_start",    # IDS803 end before start
    "care_personnel_blank_name",         # a clinician with no name to put on a letter or report
    "qualification_unknown_person",      # IDS902 qualification for a CarePersLocalId the service does not know
    "onward_referral_unknown_org",       # IDS105 OrgIDReceiving that is no organisation the service knows
    "pause_ends_before_start",           # IDS108 pause end before its start
    "ltc_invalid_scheme",                # IDS602 FindSchemeInUse outside IDS60206
    "internet_therapy_invalid_programme",  # IDS205 IntEnabledTherProg that is no programme code
    "scale_score_wrong_format",          # a score not in its scale's format ('abc' for a numeric item)
    "scale_score_out_of_range",          # a non-PHQ/GAD/WSAS item outside its scale's range (e.g. PDSS 35)
)

GIVEN = np.array([
    "Amelia", "Olivia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Sophia", "Grace", "Freya", "Aisha", "Zara",
    "Priya", "Siobhan", "Niamh", "Chloe", "Oliver", "George", "Noah", "Arthur", "Leo", "Muhammad", "Harry",
    "Oscar", "Jack", "Charlie", "Ravi", "Tomasz", "Kwame", "Dylan", "Rhys", "Callum", "Zoë", "Seán",
])
FAMILY = np.array([
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson",
    "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall",
    "Khan", "Patel", "Begum", "Nowak", "Okafor", "Mensah", "O'Brien", "Ní Bhriain", "Lewis", "Clarke",
])
OUTWARD = np.array(["LS1", "LS6", "BD7", "HX1", "WF3", "S10", "M14", "OL9", "YO31", "HG2", "HD1", "DN4"])
STREETS = np.array(["Mill Lane", "Station Road", "Church Street", "Park Avenue", "Victoria Road",
                    "Albert Terrace", "Moor View", "Canal Side", "Beech Grove", "High Street"])
INWARD_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
ETHNIC = np.array(list("ABCDEFGHJKLMNPRSZ"))
ETHNIC_P = np.array([72, 2, 4, 1, 1, 1, 1, 5, 3, 1, 1, 1, 1, 1, 1, 1, 3], dtype=float)

PROBLEMS = [  # (words, ICD-10)
    ("Depressive episode", "F32"), ("Generalised anxiety disorder", "F41.1"),
    ("Mixed anxiety and depressive disorder", "F41.2"), ("Panic disorder", "F41.0"),
    ("Social phobia", "F40.1"), ("Obsessive-compulsive disorder", "F42"),
    ("Post-traumatic stress disorder", "F43.1"), ("Health anxiety", "F45.2"),
]
PROBLEM_P = np.array([30, 25, 20, 7, 6, 4, 5, 3], dtype=float)
PLANS = [
    "Guided self-help (CBT-based), six to eight telephone sessions.",
    "High-intensity CBT, weekly sessions for up to twelve weeks.",
    "Counselling for depression, weekly face-to-face sessions.",
    "Computerised CBT with fortnightly practitioner review.",
    "Group psychoeducation course followed by review.",
]
RECOMMENDATIONS = [
    "Continue relapse-prevention plan; re-refer if symptoms return.",
    "Review antidepressant medication with the GP in four weeks.",
    "Patient may self-refer again at any time.",
    "Consider referral to secondary care if risk increases.",
]
SUMMARIES = [
    "Reviewed thought records; set behavioural activation goals for the week.",
    "Worked on worry time and problem solving; patient practised the exercise in session.",
    "Explored sleep routine; agreed a wind-down plan and a fixed waking time.",
    "Graded exposure hierarchy built; first step planned before next session.",
    "Relapse prevention blueprint drafted together.",
    "Discussed low mood and withdrawal; activity scheduling introduced.",
]

#: Every fifth contract from the second (CT002, CT007, CT012, ...) has its session file in ``fhir-r4-v1``, the
#: rest in ``csv-v1``: a fixed minority, so every source (the demo's three contracts included: CT002, SFTP,
#: without summaries) delivers a FHIR file, and a large one mixes FHIR with SFTP / MESH and with / without
#: summaries. Derived from the index, not drawn: no random draw moves, so the other records stay as they were.
FHIR_CONTRACT_EVERY, FHIR_CONTRACT_FIRST = 5, 1

# SourceOfReferralIAPT codes used here (IAPT v2 data dictionary): B1 self, A1 GP, and a provider route.
SOURCE_SELF, SOURCE_GP, SOURCE_PROVIDER = "B1", "A1", "C1"

# ---- v2.1 data set facts (issue 12) -------------------------------------------------------------------------
# Codes are NHS England's permitted values (the value-set rule code is named on each; the lists are those of
# iapt_v2_0_value_sets.tsv, bundled with the data set code) or, for fields no value-set rule covers, the NHS Data
# Dictionary element named in iapt_v2_1_fields.tsv. Kept here as small constants rather than read from the data
# set's bundled files, so the records source does not depend on the data set package; tests check every code
# generated against the bundled files.

#: GENDER IDENTITY CODE: 1 male, 2 female, 3 non-binary, 4 other (not listed), X not known, Z not stated.
GENDER_IDENTITY = ("1", "2", "3", "4", "X", "Z")
#: GENDER IDENTITY SAME AT BIRTH INDICATOR: Y, N, X not known, Z not stated.
GENDER_SAME_AT_BIRTH = ("Y", "N", "X", "Z")
#: IDS00160 ExBAFIndicator.
EX_ARMED_FORCES, EX_ARMED_FORCES_P = np.array(["02", "05", "03", "UU", "ZZ"]), [0.88, 0.03, 0.02, 0.04, 0.03]
#: IDS00139 / IDS20163: ISO 639-1 codes of the languages other than English this service sees most.
OTHER_LANGUAGES = np.array(["pl", "ur", "pa", "bn", "ar", "so", "ro", "pt", "gu", "ti", "fa", "ku", "zh", "lt"])
#: ACCOMMODATION TYPE (IDS003; no value-set rule): 01 owner occupier, 02 tenant (local authority / registered
#: social housing), 03 tenant (private landlord), 04 living with family, 05 living with friends, 12 rough sleeper,
#: 14 sofa surfing, 15 staying with friends or family as a short-term guest. The last three are not settled.
ACCOMMODATION = np.array(["01", "02", "03", "04", "05", "12", "14", "15"])
ACCOMMODATION_P = np.array([38, 18, 22, 14, 4, 1, 2, 1], dtype=float)
UNSETTLED_ACCOMMODATION = ("12", "14", "15")
#: IDS00407 EmployStatus: 01 employed, 02 unemployed and seeking work, 03 student, 04 long-term sick or disabled,
#: 05 homemaker, 06 not working or seeking work, 07 unpaid voluntary work, 08 retired, ZZ not stated.
EMPLOYMENT = np.array(["01", "02", "03", "04", "05", "06", "07", "08", "ZZ"])
EMPLOYMENT_P = np.array([48, 12, 5, 10, 6, 8, 1, 7, 3], dtype=float)
#: IDS00411 WeekHoursWorked for the employed (01..04 bands).
WEEK_HOURS = np.array(["01", "02", "03", "04"])
#: IDS00707 DisabCode: 01..10 a disability, NN none, ZZ not stated.
DISABILITY_CODES = np.array([f"{i:02d}" for i in range(1, 11)])
#: IDS011 sexual orientation (SNOMED CT findings): heterosexual, homosexual, bisexual, sexually attracted to
#: neither male nor female sex.
SEXUAL_ORIENTATION = np.array(["20430005", "38628009", "42035005", "765288000"])
SEXUAL_ORIENTATION_P = [0.88, 0.05, 0.05, 0.02]
#: IDS011 religion or belief (SNOMED CT person concepts of the UK religious-affiliation subset).
RELIGION = np.array(["309884000", "309885004", "309687009", "160567004", "160538000"])
RELIGION_P = [0.45, 0.08, 0.03, 0.14, 0.30]
#: IDS01207 OvsVisChCat.
OVERSEAS_CATEGORY = np.array(["A", "B", "C", "D", "E", "F", "P", "9"])
#: IDS601 previous diagnoses: ICD-10 (scheme 01, 4-6 characters) and SNOMED CT (scheme 04) disorders.
PREV_DIAG_ICD10 = np.array(["F321", "F329", "F330", "F331", "F411", "F412", "F410", "F401", "F431", "F452", "F429"])
PREV_DIAG_SNOMED = np.array(["35489007", "21897009", "197480006", "47505003", "191736004", "371631005",
                             "25501002"])
#: IDS80309 AMHCareClustCodeFin; a talking-therapies service assigns the non-psychotic clusters (01..08) mostly.
CARE_CLUSTERS = np.array(["01", "02", "03", "04", "05", "06", "07", "08", "11", "12"])
#: IDS90205 QualAttainLevelIAPT.
QUALIFICATION_LEVELS = ("10", "11", "12", "13", "14", "15", "16", "17", "30", "31")
#: Care personnel roles, with the qualification levels each holds (IDS90205) and its share of the staff.
ROLES = (
    ("Psychological wellbeing practitioner", ("10", "11"), 0.35),
    ("High intensity therapist", ("12", "13"), 0.30),
    ("Counsellor", ("14",), 0.12),
    ("Trainee psychological wellbeing practitioner", ("30",), 0.08),
    ("Trainee high intensity therapist", ("31",), 0.05),
    ("Clinical psychologist", ("15", "16"), 0.06),
    ("Employment adviser", ("17",), 0.04),
)
#: IDS10507 OnwardReferReason.
ONWARD_REASONS = np.array(["01", "02", "03", "04", "05", "06", "96", "98", "99"])
ONWARD_REASONS_P = np.array([30, 25, 12, 10, 8, 5, 4, 3, 3], dtype=float)
#: IDS10815 PauseReason.
PAUSE_REASONS = np.array(["01", "02", "03"])
#: IDS602 long-term physical health conditions: SNOMED CT (scheme 04) disorders and ICD-10 (scheme 01).
LTC_SNOMED = np.array(["44054006", "195967001", "13645005", "38341003", "69896004", "10743008", "24700007",
                       "84757009", "82423001", "84114007", "53741008"])
LTC_ICD10 = np.array(["E119", "J459", "J449", "K580", "M069"])
#: IDS205 / IDS201 INTERNET ENABLED THERAPY PROGRAMME: the programme codes this service records (two-character
#: codes of the NHS Data Dictionary element; the service offers these programmes).
INTERNET_PROGRAMMES = np.array(["01", "02", "03", "04", "05", "06"])
INTERNET_PROGRAMMES_P = [0.40, 0.20, 0.15, 0.10, 0.10, 0.05]
#: IDS20161 PsychMed.
PSYCH_MED, PSYCH_MED_P = np.array(["01", "02", "03", "UU", "ZZ"]), [0.35, 0.10, 0.40, 0.10, 0.05]
#: IDS20165 InterpreterPresentInd for a patient who prefers another language.
INTERPRETER, INTERPRETER_P = np.array(["1", "2", "3", "4"]), [0.55, 0.25, 0.12, 0.08]
#: IDS20122 ActLocTypeCode: B01 primary care health centre (face to face); A01 patient's home (remote contacts,
#: where the patient is); A03 patient's workplace.
LOCATION_FACE_TO_FACE, LOCATION_FACE_TO_FACE_P = np.array(["B01", "A01", "A03"]), [0.85, 0.10, 0.05]
#: The service's own treatment sites (SiteIDOfTreat, invented ODS site codes).
SITES = np.array(["ZS001", "ZS002", "ZS003", "ZS004"])
#: IDS202 coded procedures (SNOMED CT): cognitive and behavioural therapy.
PROCEDURES = np.array(["228557008", "304891004"])
#: IDS202 coded findings per presenting problem (same order as PROBLEMS): SNOMED CT (04) and ICD-10 (01).
FINDING_SNOMED = np.array(["35489007", "21897009", "197480006", "371631005", "25501002", "191736004",
                           "47505003", "197480006"])
FINDING_ICD10 = np.array(["F329", "F411", "F412", "F410", "F401", "F429", "F431", "F452"])
#: IDS202 coded observations (SNOMED CT) with their UCUM units and plausible ranges: body weight, body height.
OBSERVATIONS = (("27113001", "kg", 48, 120), ("50373000", "cm", 150, 196))

#: Anxiety-disorder-specific measures per presenting problem (index into PROBLEMS): SNOMED CT code, lo, hi.
#: Panic: PDSS; social phobia: SPIN; OCD: OCI; PTSD: PCL-5; health anxiety: HAI; GAD: PSWQ (for some).
ADSM = {3: ("450326007", 0, 28), 4: ("445552006", 0, 68), 5: ("450324005", 0, 168),
        6: ("491581000000104", 0, 80), 7: ("446793008", 0, 54), 1: ("446517006", 16, 80)}
#: A-PEQ (patient experience, assessment) items: four answered Y/N (two also NA) in score_text, one scored 0-4.
PEQ_TEXT = (("747861000000100", ("Y", "N")), ("747871000000107", ("Y", "N")),
            ("747881000000109", ("Y", "N", "NA")), ("904691000000103", ("Y", "N", "NA")))
PEQ_SCORED = "747891000000106"

#: Delivery channels for patient reports to the providers that take patients on (transfer of care).
PROVIDER_MESH_WORKFLOW = "GPFED_CONSULT_REPORT"

RISK_NOTES = np.array([
    "No current thoughts of self-harm; protective factors: family, work, faith.",
    "Passive thoughts of death reported at assessment, no plan or intent; safety plan agreed.",
    "Historic self-harm (over five years ago); none since. Risk to others not identified.",
    "Low risk to self and others; alcohol use above guidance, discussed.",
    "Fleeting suicidal ideation when low, no plan; crisis numbers given and understood.",
    "No risk to self or others identified at any contact.",
])


@dataclass
class SynthResult:
    """What was generated: the frames (table name -> DataFrame) and the manifest of bad ids."""

    frames: dict[str, pd.DataFrame]
    bad: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0
    patients: int = 0

    def manifest(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "patients": self.patients,
            "counts": {name: len(df) for name, df in self.frames.items()},
            "bad": self.bad,
        }


def _dates(start: dt.date, days: np.ndarray) -> np.ndarray:
    return (np.datetime64(start) + days.astype("timedelta64[D]")).astype("datetime64[D]")


def generate(
    patients: int,
    seed: int = 7,
    *,
    start: dt.date = dt.date(2020, 4, 1),
    end: dt.date = dt.date(2026, 10, 31),
    keys_dir: Path | None = None,
    bad_share: float = 0.01,
) -> SynthResult:
    """Generate a whole synthetic service. Same ``patients`` and ``seed`` give the same rows.

    ``start``..``end`` bounds referral dates (weighted towards the end so recent months are busy);
    events after ``end`` are not recorded (referrals still open at ``end`` stay open). ``bad_share``
    is the share of patients/referrals given each kind of deliberate fault (at least one of each
    once there are 50 patients).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    rng = np.random.default_rng(seed)
    bad: dict[str, list[str]] = {k: [] for k in BAD_KINDS}
    n_bad = max(1 if patients >= 50 else 0, int(patients * bad_share))
    span = (end - start).days

    # ---- organisations: practices, providers that refer in, a commissioner ------------------
    n_prac = max(6, patients // 1500)
    prac_codes = np.array([f"Z{84000 + i:05d}" for i in range(n_prac)])
    channel = np.where(rng.random(n_prac) < 0.6, "smime-email", "mesh")
    channel[0], channel[1] = "smime-email", "mesh"  # every demo exercises both channels
    practices = pd.DataFrame({
        "ods_code": prac_codes,
        "name": [f"Synthetic Practice {i + 1}" for i in range(n_prac)],
        "email": [f"practice.{c.lower()}@nhs.example" for c in prac_codes],
        "channel": channel,
        "mesh_mailbox": _where(channel == "mesh", "X26ABC2", None),
        "certificate_pem": None,
        "country": "GB",
    })
    if patients >= 50:
        no_cert = n_prac - 1  # the last practice: smime-email without a certificate
        odd_chan = n_prac - 2
        practices.loc[no_cert, "channel"] = "smime-email"
        practices.loc[odd_chan, "channel"] = "fax"
        bad["practice_without_certificate"].append(prac_codes[no_cert])
        bad["practice_unknown_channel"].append(prac_codes[odd_chan])
    else:
        no_cert = -1
    if keys_dir is not None:
        certs = []
        for i, code in enumerate(prac_codes):
            certs.append(None if i == no_cert else cached_identity(keys_dir, code).cert_pem.decode())
        practices["certificate_pem"] = certs
    n_prov = max(3, patients // 5000)
    prov_codes = np.array([f"ZP{i:03d}" for i in range(n_prov)])
    organisations = pd.concat([
        pd.DataFrame({"ods_code": prac_codes, "name": practices["name"], "kind": "gp"}),
        pd.DataFrame({"ods_code": prov_codes, "name": [f"Synthetic Provider {i + 1}" for i in range(n_prov)],
                      "kind": "provider"}),
        pd.DataFrame({"ods_code": ["ZC1"], "name": ["Synthetic ICB"], "kind": "commissioner"}),
    ], ignore_index=True)
    organisations["country"] = "GB"

    # ---- patients ----------------------------------------------------------------------------
    ids = np.char.add("P", np.char.zfill(np.arange(1, patients + 1).astype(str), 7))
    nhs = synthetic_numbers(rng, patients).astype(object)
    given = rng.choice(GIVEN, patients)
    family = rng.choice(FAMILY, patients)
    age_days = (rng.integers(18, 80, patients) * 365.25 + rng.integers(0, 365, patients)).astype(int)
    birth = _dates(end, -age_days)
    inward = (rng.integers(1, 10, patients).astype(str).astype(object)
              + rng.choice(INWARD_LETTERS, patients).astype(object)
              + rng.choice(INWARD_LETTERS, patients).astype(object))
    postcode = rng.choice(OUTWARD, patients).astype(object) + " " + inward
    house = rng.integers(1, 200, patients).astype(str).astype(object)
    address = house + " " + rng.choice(STREETS, patients).astype(object)
    gender = rng.choice(np.array(["1", "2", "9"]), patients, p=[0.38, 0.61, 0.01])
    ethnic = rng.choice(ETHNIC, patients, p=ETHNIC_P / ETHNIC_P.sum())
    practice = rng.choice(prac_codes, patients)
    consent = rng.random(patients) >= 0.07
    copy_channel = rng.choice(np.array(["email", "post"]), patients, p=[0.72, 0.28]).astype(object)
    email = _where(copy_channel == "email",
                     np.char.add(np.char.add("patient.", np.char.lower(ids)), "@patients.example"), None)
    pat = pd.DataFrame({
        "local_patient_id": ids, "nhs_number": nhs, "given_name": given, "family_name": family,
        "birth_date": birth, "postcode": postcode, "address_line": address, "gender": gender,
        "ethnic_category": ethnic, "email": email, "patient_certificate_pem": None,
        "copy_channel": copy_channel, "gp_practice_code": practice, "gp_sharing_consent": consent,
        "gp_sharing_consent_date": None, "dataset_objection_pre2020": None, "dataset_objection_date": None,
    })
    # a handful of patients hold their own S/MIME certificate
    if keys_dir is not None:
        smime_idx = rng.choice(patients, size=min(5, max(1, patients // 400)), replace=False)
        for i in smime_idx:
            pat.at[i, "copy_channel"] = "smime"
            pat.at[i, "email"] = f"patient.{ids[i].lower()}@patients.example"
            pat.at[i, "patient_certificate_pem"] = cached_identity(keys_dir, ids[i]).cert_pem.decode()

    # ---- referrals ---------------------------------------------------------------------------
    per_patient = rng.choice(np.array([1, 2, 3]), patients, p=[0.85, 0.12, 0.03])
    ref_pat_idx = np.repeat(np.arange(patients), per_patient)
    n_ref = len(ref_pat_idx)
    # skew towards recent dates (a growing service): square-root of a uniform draw
    received_off = (np.sqrt(rng.random(n_ref)) * span).astype(int)
    received = _dates(start, received_off)
    src = rng.choice(np.array([SOURCE_SELF, SOURCE_GP, SOURCE_PROVIDER]), n_ref, p=[0.6, 0.3, 0.1])
    referrer = np.where(src == SOURCE_GP, practice[ref_pat_idx],
                        _where(src == SOURCE_PROVIDER, rng.choice(prov_codes, n_ref), None))
    problem_idx = rng.choice(len(PROBLEMS), n_ref, p=PROBLEM_P / PROBLEM_P.sum())
    ref_ids = np.char.add("R", np.char.zfill(np.arange(1, n_ref + 1).astype(str), 8))

    # assessment 5-40 days after receipt for 90%; treatment sessions weekly after that
    assessed = rng.random(n_ref) < 0.9
    assess_off = received_off + rng.integers(5, 40, n_ref)
    sessions = np.clip(rng.poisson(7, n_ref), 1, 16)
    dropout = rng.random(n_ref) < 0.2
    sessions = np.where(dropout, np.maximum(1, sessions // 3), sessions) * assessed
    last_off = assess_off + sessions * 7 + rng.integers(0, 5, n_ref)
    disch_off = last_off + rng.integers(1, 15, n_ref)
    discharged = disch_off <= span
    discharged |= (~assessed) & (received_off + 60 <= span)
    disch_off = np.where(~assessed, received_off + rng.integers(20, 60, n_ref), disch_off)
    end_code = np.where(~assessed, rng.choice(np.array(["10", "12", "14"]), n_ref),
                        np.where(sessions <= 1, "13", np.where(dropout, rng.choice(np.array(["47", "48"]), n_ref),
                                                               "46")))
    ref = pd.DataFrame({
        "service_request_id": ref_ids,
        "local_patient_id": ids[ref_pat_idx],
        "referrer_org_code": referrer,
        "source_of_referral": src,
        "commissioner_code": "ZC1",
        "received_date": received,
        "presenting_problem": [PROBLEMS[i][0] for i in problem_idx],
        "presenting_problem_code": [PROBLEMS[i][1] for i in problem_idx],
        "assessment_plan": _where(assessed, rng.choice(np.array(PLANS), n_ref), None),
        "discharge_date": _where(discharged, _dates(start, disch_off).astype(object), None),
        "end_code": _where(discharged, end_code, None),
        "discharge_recommendations": _where(discharged & assessed, rng.choice(np.array(RECOMMENDATIONS), n_ref),
                                              None),
    })

    # ---- care contacts: one assessment (01) then `sessions` treatment contacts (02) ---------------
    n_contacts = assessed.astype(int) + sessions
    c_ref = np.repeat(np.arange(n_ref), n_contacts)
    c_seq = np.arange(len(c_ref)) - np.repeat(np.cumsum(n_contacts) - n_contacts, n_contacts)
    c_day = assess_off[c_ref] + c_seq * 7 + rng.integers(-1, 2, len(c_ref)) * (c_seq > 0)
    keep = c_day <= span
    c_ref, c_seq, c_day = c_ref[keep], c_seq[keep], c_day[keep]
    n_c = len(c_ref)
    minutes = rng.choice(np.array([9 * 60, 10 * 60, 11 * 60, 13 * 60, 14 * 60, 16 * 60, 17 * 60 + 30]), n_c)
    local_dt = _dates(start, c_day).astype("datetime64[m]") + minutes.astype("timedelta64[m]")
    # local wall-clock -> UTC instant (Europe/London), so reporting-period boundaries are honest
    contact_at = (pd.DatetimeIndex(local_dt).tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward")
                  .tz_convert("UTC").tz_localize(None))
    attend = rng.choice(np.array(["5", "6", "3", "2", "4"]), n_c, p=[0.82, 0.05, 0.08, 0.03, 0.02])
    attend = np.where(c_seq == 0, np.where(attend == "3", "5", attend), attend)  # assessments mostly attended
    cid = np.char.add("C", np.char.zfill(np.arange(1, n_c + 1).astype(str), 9))
    cc = pd.DataFrame({
        "care_contact_id": cid,
        "service_request_id": ref_ids[c_ref],
        "contact_at": contact_at,
        "duration_minutes": np.where(c_seq == 0, 60, rng.choice(np.array([30, 45, 60]), n_c)),
        "app_type": np.where(c_seq == 0, "01", "02"),
        "attend_code": attend,
        "cons_mechanism": (mech := rng.choice(np.array(["01", "02", "04", "06"]), n_c, p=[0.3, 0.45, 0.2, 0.05])),
        "therapy_type": _where(c_seq == 0, None, rng.choice(np.array(["01", "02", "05", "10"]), n_c)),
        "clinician_id": (clinician := np.char.add("CL", rng.integers(100, 160, n_c).astype(str))),
        "clinical_summary": rng.choice(np.array(SUMMARIES), n_c),
    })

    # ---- scores: PHQ-9 and GAD-7 at each attended contact; WSAS at the first and last ------------
    attended = np.isin(attend, ["5", "6"])
    a_idx = np.flatnonzero(attended)
    start_phq = np.clip(rng.normal(16, 5, n_ref), 3, 27)
    start_gad = np.clip(rng.normal(13, 4, n_ref), 2, 21)
    improves = rng.random(n_ref) < 0.55
    end_factor = np.where(improves, rng.uniform(0.2, 0.5, n_ref), rng.uniform(0.75, 1.1, n_ref))
    frac = c_seq[a_idx] / np.maximum(1, sessions[c_ref[a_idx]])
    f = 1 - frac * (1 - end_factor[c_ref[a_idx]])
    phq = np.clip(np.rint(start_phq[c_ref[a_idx]] * f + rng.normal(0, 1.2, len(a_idx))), 0, 27).astype(int)
    gad = np.clip(np.rint(start_gad[c_ref[a_idx]] * f + rng.normal(0, 1.0, len(a_idx))), 0, 21).astype(int)
    first_or_last = (c_seq[a_idx] == 0) | (c_seq[a_idx] == sessions[c_ref[a_idx]])
    w_idx = a_idx[first_or_last]
    wsas_codes = [SNOMED[k] for k in SNOMED if k.startswith("WSAS")]
    w_base = np.clip(np.rint(5 * f[first_or_last]), 0, 8).astype(int)
    score_frames = [
        pd.DataFrame({"contact": a_idx, "tool_code": SNOMED["PHQ9"], "score": phq}),
        pd.DataFrame({"contact": a_idx, "tool_code": SNOMED["GAD7"], "score": gad}),
        *[pd.DataFrame({"contact": w_idx, "tool_code": code,
                        "score": np.clip(w_base + rng.integers(-1, 2, len(w_idx)), 0, 8)})
          for code in wsas_codes],
    ]
    sc = pd.concat(score_frames, ignore_index=True).sort_values(["contact", "tool_code"], kind="stable")
    ca = pd.DataFrame({
        "assessment_id": np.char.add("A", np.char.zfill(np.arange(1, len(sc) + 1).astype(str), 10)),
        "service_request_id": ref_ids[c_ref[sc["contact"].to_numpy()]],
        "care_contact_id": cid[sc["contact"].to_numpy()],
        "tool_code": sc["tool_code"].to_numpy(),
        "score": sc["score"].to_numpy(),
        "assessed_at": contact_at[sc["contact"].to_numpy()],
    })

    # ---- patients' earlier objections (data set v1.5) --------------------------------------------
    first_ref = ref.groupby("local_patient_id", sort=False)["received_date"].min()
    early = pat["local_patient_id"].map(first_ref) < np.datetime64("2020-09-01")
    objects = early & (rng.random(patients) < 0.05)
    pat.loc[objects, "dataset_objection_pre2020"] = True
    pat.loc[objects, "dataset_objection_date"] = pat.loc[objects, "local_patient_id"].map(first_ref)
    pat.loc[~consent, "gp_sharing_consent_date"] = pat.loc[~consent, "local_patient_id"].map(first_ref)

    # ---- contracts: the providers that refer in want session updates ------------------------------
    contracts = pd.DataFrame({
        "contract_id": [f"CT{i + 1:03d}" for i in range(n_prov)],
        "referrer_org_code": prov_codes,
        "name": [f"Session updates for Synthetic Provider {i + 1}" for i in range(n_prov)],
        "active": True,
        "transport": ["mesh" if i % 3 == 2 else "sftp" for i in range(n_prov)],
        "connection_id": ["caldicott_sftp_referrer" if i % 3 != 2 else None for i in range(n_prov)],
        "remote_path": [f"/inbound/{c.lower()}" if i % 3 != 2 else None for i, c in enumerate(prov_codes)],
        "mesh_mailbox": ["X26ABC3" if i % 3 == 2 else None for i in range(n_prov)],
        "mesh_workflow": ["IAPT_SESSION_UPDATE" if i % 3 == 2 else None for i in range(n_prov)],
        "file_format": [FHIR_FORMAT if i % FHIR_CONTRACT_EVERY == FHIR_CONTRACT_FIRST else COLUMN_SET
                        for i in range(n_prov)],
        "include_summaries": [i % 2 == 0 for i in range(n_prov)],
        "include_activity": True,
        "certificate_pem": None,
    })

    # ---- deliberate faults ---------------------------------------------------------------------
    if n_bad:
        _inject_faults(rng, n_bad, pat, ref, cc, ca, bad)

    # ---- the v2.1 data set's further facts, from a generator of their own (the records above stay as they were)
    core = _Core(start=start, span=span, ref_pat_idx=ref_pat_idx, received_off=received_off, assess_off=assess_off,
                 assessed=assessed, sessions=sessions, disch_off=disch_off, discharged=discharged,
                 end_code=end_code, problem_idx=problem_idx, c_ref=c_ref, c_seq=c_seq, c_day=c_day,
                 contact_at=contact_at, attended=attended, improve=f, a_idx=a_idx, ref_ids=ref_ids, cid=cid,
                 attend=attend, mech=mech, clinician=clinician)
    rng21 = np.random.default_rng([seed, 21])
    v21 = _v21_facts(rng21, core, pat, ref, cc, ca, end=end, keys_dir=keys_dir)
    receivers = v21.pop("receivers")
    if n_bad:
        _inject_v21_faults(rng21, n_bad, v21, receivers, bad)
    organisations = pd.concat([organisations, receivers], ignore_index=True)
    ca["score_text"] = None
    ca = pd.concat([ca, v21.pop("extra_scores")], ignore_index=True)

    frames = {
        "gp_practice": practices, "organisation": organisations, "patient": pat, "referral": ref,
        "care_contact": cc, "coded_assessment": ca, "contract": contracts, **v21,
    }
    return SynthResult(frames=frames, bad={k: sorted(v) for k, v in bad.items()}, seed=seed, patients=patients)


def _inject_faults(rng: np.random.Generator, n_bad: int, pat: pd.DataFrame, ref: pd.DataFrame, cc: pd.DataFrame,
                   ca: pd.DataFrame, bad: dict[str, list[str]]) -> None:
    """Spoil a few records of each kind, recording their ids (the ids are opaque, never patient data)."""
    # disjoint patients for patient-level faults, so a test can name the reason for each
    pool = rng.permutation(len(pat))
    take = iter(np.array_split(pool[: n_bad * 4], 4))

    i = next(take)
    nums = pat.loc[i, "nhs_number"].astype(str)
    pat.loc[i, "nhs_number"] = nums.str[:9] + ((nums.str[9].astype(int) + 1) % 10).astype(str)
    bad["invalid_nhs_number"] = pat.loc[i, "local_patient_id"].tolist()

    i = next(take)
    pat.loc[i, "postcode"] = pat.loc[i, "postcode"].str.replace(" ", "", regex=False)
    bad["postcode_without_space"] = pat.loc[i, "local_patient_id"].tolist()

    i = next(take)
    pat.loc[i, "gp_practice_code"] = None
    bad["missing_gp_practice"] = pat.loc[i, "local_patient_id"].tolist()

    i = next(take)
    # the second of each pair takes the first's number; both are listed (either may be quarantined)
    half = len(i) // 2 or 1
    src, dst = i[:half], i[half: half * 2] if len(i) > 1 else i[:0]
    pat.loc[dst, "nhs_number"] = pat.loc[src[: len(dst)], "nhs_number"].to_numpy()
    bad["duplicate_nhs_number"] = pat.loc[np.concatenate([src[: len(dst)], dst]), "local_patient_id"].tolist()

    done = ref["discharge_date"].notna().to_numpy()
    r = rng.choice(np.flatnonzero(done), size=min(n_bad, done.sum()), replace=False)
    ref.loc[r, "discharge_date"] = (ref.loc[r, "received_date"] - np.timedelta64(10, "D")).astype(object)
    bad["discharge_before_referral"] = ref.loc[r, "service_request_id"].tolist()

    r = rng.choice(len(ref), size=n_bad, replace=False)
    ref.loc[r, "referrer_org_code"] = "ZUNKNOWN"
    ref.loc[r, "source_of_referral"] = SOURCE_PROVIDER
    bad["unknown_referrer"] = ref.loc[r, "service_request_id"].tolist()

    phq = np.flatnonzero((ca["tool_code"] == SNOMED["PHQ9"]).to_numpy())
    a = rng.choice(phq, size=min(n_bad, len(phq)), replace=False)
    ca.loc[a, "score"] = 31
    bad["score_out_of_range"] = ca.loc[a, "assessment_id"].tolist()

    c = rng.choice(len(cc), size=min(n_bad, len(cc)), replace=False)
    rec = ref.set_index("service_request_id")["received_date"]
    before = pd.to_datetime(cc.loc[c, "service_request_id"].map(rec)) - pd.Timedelta(days=3)
    cc.loc[c, "contact_at"] = before.to_numpy() + np.timedelta64(10, "h")
    bad["contact_before_referral"] = cc.loc[c, "care_contact_id"].tolist()


@dataclass
class _Core:
    """The arrays the v2.1 facts are derived from (days are offsets from ``start``; indexes into the frames)."""

    start: dt.date
    span: int
    ref_pat_idx: np.ndarray     # referral -> patient index
    received_off: np.ndarray
    assess_off: np.ndarray
    assessed: np.ndarray
    sessions: np.ndarray
    disch_off: np.ndarray
    discharged: np.ndarray
    end_code: np.ndarray
    problem_idx: np.ndarray
    c_ref: np.ndarray           # contact -> referral index
    c_seq: np.ndarray
    c_day: np.ndarray
    contact_at: pd.DatetimeIndex
    attended: np.ndarray
    improve: np.ndarray         # per attended contact (a_idx order): fraction of the starting severity left
    a_idx: np.ndarray
    ref_ids: np.ndarray         # service_request_id per referral
    cid: np.ndarray             # care_contact_id per contact
    attend: np.ndarray          # attend_code per contact (as generated, before any fault)
    mech: np.ndarray            # cons_mechanism per contact
    clinician: np.ndarray       # clinician_id per contact


def _ids(prefix: str, n: int, width: int, first: int = 1) -> np.ndarray:
    """Opaque ids ``prefix`` + zero-padded ``first``, ``first + 1``, ... (``n`` of them)."""
    if n == 0:   # numpy's zfill cannot size an empty array
        return np.array([], dtype=str)
    return np.char.add(prefix, np.char.zfill(np.arange(first, first + n).astype(str), width))


def _utc(start: dt.date, days: np.ndarray, minutes: np.ndarray) -> pd.DatetimeIndex:
    """Local (Europe/London) wall-clock day offsets and minutes past midnight -> naive UTC instants."""
    local = _dates(start, days).astype("datetime64[m]") + minutes.astype("timedelta64[m]")
    return (pd.DatetimeIndex(local).tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward")
            .tz_convert("UTC").tz_localize(None))


def _between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A day in ``lo..hi`` inclusive (``hi`` raised to ``lo`` where it is below)."""
    hi = np.maximum(hi, lo)
    out: np.ndarray = lo + (rng.random(len(lo)) * (hi - lo + 1)).astype(int)
    return out


def _where(cond: Any, yes: Any, no: Any) -> np.ndarray:
    """``np.where``, for choices that may be None (an object array): numpy's stubs leave None out of ArrayLike."""
    out: np.ndarray = np.where(cond, yes, no)
    return out


def _cat(values: np.ndarray, categories: np.ndarray, keep: np.ndarray | None = None) -> pd.Categorical:
    """``values`` (a numpy string array) as a categorical of ``categories``; null where ``keep`` is False or the
    value is not one of them. Cheap at any size: no Python string object per row."""
    cats = np.unique(np.asarray(categories).astype(str))
    codes = np.minimum(np.searchsorted(cats, values), len(cats) - 1)
    ok = cats[codes] == values
    if keep is not None:
        ok &= keep
    cat_codes: npt.NDArray[np.intp] = np.where(ok, codes, -1)
    return pd.Categorical.from_codes(cat_codes, categories=pd.Index(cats))


def _masked_int(values: np.ndarray, keep: np.ndarray) -> pd.arrays.IntegerArray:
    """``values`` as a nullable integer column, null where ``keep`` is False."""
    out = pd.array(values, dtype="Int64")
    out[~keep] = pd.NA
    return out


def _receiving_providers(patients: int, keys_dir: Path | None) -> pd.DataFrame:
    """The providers patients are referred on to, each with how it wants its patient reports.

    Most take them over MESH, some by S/MIME e-mail, some over SFTP; deliberately, the first (ZR001) has no
    usable channel (its reports must be held) and the second (ZR002) processes data in the United States, not a
    UK-adequate country (the release gateway must refuse it whatever the channel). Channels are fixed by
    position, not drawn, so every source, whatever its seed or size, has each kind."""
    n = max(8, patients // 4000)
    codes = np.array([f"ZR{i + 1:03d}" for i in range(n)])
    chan = np.array(["mesh", "mesh", "mesh", "smime-email", "sftp"])[np.arange(n) % 5].astype(object)
    chan[0], chan[1], chan[2], chan[3], chan[4] = None, "smime-email", "mesh", "smime-email", "sftp"
    country = np.full(n, "GB", dtype=object)
    country[1] = "US"
    low = np.char.lower(codes)
    mesh = chan == "mesh"
    mail = chan == "smime-email"
    sftp = chan == "sftp"
    certs: list[str | None] = [None] * n
    if keys_dir is not None:
        certs = [cached_identity(keys_dir, c).cert_pem.decode() if (mail[i] or sftp[i]) else None
                 for i, c in enumerate(codes)]
    return pd.DataFrame({
        "ods_code": codes,
        "name": [f"Synthetic Receiving Provider {i + 1}" for i in range(n)],
        "kind": "provider",
        "country": country,
        "channel": chan,
        "mesh_mailbox": _where(mesh, np.char.add("X26R", np.char.zfill(np.arange(1, n + 1).astype(str), 3)),
                                 None),
        "mesh_workflow": _where(mesh, PROVIDER_MESH_WORKFLOW, None),
        "email": _where(mail, np.char.add(np.char.add("transfers.", low),
                                            np.where(country == "US", "@provider-us.example", "@nhs.example")),
                          None),
        "certificate_pem": certs,
        "connection_id": _where(sftp, np.char.add("caldicott_provider_", low), None),
        "remote_path": _where(sftp, np.char.add("/inbound/transfers/", low), None),
    })


def _care_personnel(rng: np.random.Generator, clinician_ids: np.ndarray, end: dt.date
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A care_personnel row for every clinician id the contacts name, and their qualifications (IDS902)."""
    ids = np.unique(clinician_ids)
    n = len(ids)
    role_idx = rng.choice(len(ROLES), n, p=[r[2] for r in ROLES])
    given, family = rng.choice(GIVEN, n), rng.choice(FAMILY, n)
    people = pd.DataFrame({
        "care_pers_local_id": ids,
        "display_name": np.char.add(np.char.add(given.astype(str), " "), family.astype(str)),
        "role": [ROLES[i][0] for i in role_idx],
        "email": np.char.add(np.char.lower(ids), "@talking-therapies.nhs.example"),
        # Ofcom's drama range for Leeds (0113 496 0000-0999): never a real number
        "telephone": np.char.add("0113 496 0", np.char.zfill(rng.integers(0, 1000, n).astype(str), 3)),
    })
    levels = [ROLES[i][1] for i in role_idx]
    q_pers = np.repeat(np.arange(n), [len(lv) for lv in levels])
    q_level = np.array([lv for lvs in levels for lv in lvs])
    trainee = np.isin(q_level, ["30", "31"])
    awarded_off = -rng.integers(200, 365 * 12, len(q_pers))
    planned_off = rng.integers(60, 400, len(q_pers))
    quals = pd.DataFrame({
        "qualification_id": _ids("Q", len(q_pers), 6),
        "care_pers_local_id": ids[q_pers],
        "level": q_level,
        "awarded_date": _where(trainee, None, _dates(end, awarded_off).astype(object)),
        "planned_completion_date": _where(trainee, _dates(end, planned_off).astype(object), None),
    })
    return people, quals


def _v21_facts(rng: np.random.Generator, core: _Core, pat: pd.DataFrame, ref: pd.DataFrame, cc: pd.DataFrame,
               ca: pd.DataFrame, *, end: dt.date, keys_dir: Path | None) -> dict[str, pd.DataFrame]:
    """Every fact the v2.1 data set and the transfer of care need beyond the letters' ones.

    Fills the new columns of ``pat``, ``ref`` and ``cc`` in place, appends scale items to ``ca`` and returns the
    new tables. Drawn from its own generator (not the one the older tables use), so adding facts here never moves
    a record the letters, updates or data set tests already know. Dates come from the referral's own offsets
    (received, assessed, discharged), so every fact sits inside the life of the referral it belongs to."""
    c = core
    start, span = c.start, c.span
    n_pat, n_ref, n_c = len(pat), len(ref), len(cc)
    life_end = np.where(c.discharged, np.minimum(c.disch_off, span), span)
    first_ref = np.r_[0, np.flatnonzero(np.diff(c.ref_pat_idx)) + 1]      # each patient's first referral
    f_recv = c.received_off[first_ref]
    earliest = np.minimum.reduceat(c.received_off, first_ref)     # each patient's first day with the service
    f_end = life_end[first_ref]
    out: dict[str, pd.DataFrame] = {}

    # ---- patient (IDS001 beyond the basics) -----------------------------------------------------------------
    gender = pat["gender"].to_numpy().astype(str)
    gi = np.where(gender == "1", "1", np.where(gender == "2", "2", "X")).astype(object)
    u = rng.random(n_pat)
    gi[u < 0.010] = "3"
    gi[(u >= 0.010) & (u < 0.013)] = "4"
    gi[(u >= 0.013) & (u < 0.033)] = "Z"
    unrecorded = rng.random(n_pat) < 0.08
    gi[unrecorded] = None
    same = rng.choice(np.array(["Y", "Z", "X"]), n_pat, p=[0.96, 0.03, 0.01]).astype(object)
    same[np.isin(gi, ["3", "4"]) & (rng.random(n_pat) < 0.6)] = "N"
    same[unrecorded] = None
    age = (np.datetime64(end) - pat["birth_date"].to_numpy().astype("datetime64[D]")).astype(int) / 365.25
    young = age < 25
    edu = np.where(young & (rng.random(n_pat) < 0.6), rng.choice(np.array(["1", "2", "3", "4"]), n_pat),
                   rng.choice(np.array(["8", "X", "Z"]), n_pat, p=[0.8, 0.1, 0.1]))
    lang = np.where(rng.random(n_pat) < 0.9, "en", rng.choice(OTHER_LANGUAGES, n_pat))
    pat["gender_identity"] = gi
    pat["gender_same_at_birth"] = same
    # ETHNIC CATEGORY 2021 is a pilot ("P") item of the v2.1 data set: the service does not record it yet
    pat["ethnic_category_2021"] = None
    pat["ex_armed_forces"] = rng.choice(EX_ARMED_FORCES, n_pat, p=EX_ARMED_FORCES_P)
    pat["preferred_language"] = lang
    pat["education_establishment"] = edu
    pids = pat["local_patient_id"].to_numpy()

    # ---- IDS003 accommodation: 80% of patients, a few with an earlier, ended status --------------------------
    has = np.flatnonzero(rng.random(n_pat) < 0.8)
    typ = rng.choice(ACCOMMODATION, len(has), p=ACCOMMODATION_P / ACCOMMODATION_P.sum())
    settled = np.where(np.isin(typ, UNSETTLED_ACCOMMODATION), "N", "Y").astype(object)
    settled[rng.random(len(has)) < 0.03] = "Z"
    rec = _between(rng, f_recv[has], np.minimum(f_recv[has] + 14, f_end[has]))
    began = rec - rng.integers(90, 365 * 15, len(has))
    prev = rng.random(len(has)) < 0.05
    p_began = began[prev] - rng.integers(365, 365 * 5, prev.sum())
    acc = pd.concat([
        pd.DataFrame({"local_patient_id": pids[has], "accommodation_type": typ, "settled": settled,
                      "recorded_date": _dates(start, rec), "start_date": _dates(start, began), "end_date": None}),
        pd.DataFrame({"local_patient_id": pids[has[prev]],
                      "accommodation_type": rng.choice(ACCOMMODATION[:5], prev.sum()), "settled": "Y",
                      "recorded_date": _dates(start, rec[prev]), "start_date": _dates(start, p_began),
                      "end_date": _dates(start, began[prev] - 1)}),
    ], ignore_index=True).sort_values(["local_patient_id", "start_date"], kind="stable", ignore_index=True)
    acc.insert(0, "accommodation_id", _ids("ACC", len(acc), 8))
    out["accommodation_status"] = acc

    # ---- IDS004 employment and benefits: recorded at assessment for 88% of referrals -------------------------
    er = np.flatnonzero(rng.random(n_ref) < 0.88)
    m = len(er)
    status = rng.choice(EMPLOYMENT, m, p=EMPLOYMENT_P / EMPLOYMENT_P.sum())
    employed = status == "01"
    out_of_work = np.isin(status, ["02", "04", "05", "06"])
    seen = np.where(c.assessed[er], np.minimum(c.assess_off[er], life_end[er]), c.received_off[er])
    sick = employed & (rng.random(m) < 0.2)
    benefit = np.where(rng.random(m) < np.select([employed, out_of_work, status == "08", status == "03"],
                                                 [0.15, 0.75, 0.30, 0.20], 0.25), "Y", "N").astype(object)
    benefit[rng.random(m) < 0.03] = "U"
    benefit[rng.random(m) < 0.02] = "Z"
    yes = benefit == "Y"
    unknown = np.isin(benefit, ["U", "Z"])

    def _ind(p_yes: np.ndarray | float) -> np.ndarray:
        return np.where(unknown, "U", np.where(yes & (rng.random(m) < p_yes), "Y", "N"))

    # IDS00432 also permits NA (not applicable): students and the retired
    support = np.where(np.isin(status, ["03", "08"]), "NA",
                       np.where(rng.random(m) < np.where(employed | out_of_work, 0.12, 0.04), "Y", "N"))
    sup_ref = _between(rng, seen, np.minimum(seen + 14, life_end[er]))
    sup_dis = sup_ref + rng.integers(30, 120, m)
    sup_y = support == "Y"
    out["employment_status"] = pd.DataFrame({
        "employment_id": _ids("EMP", m, 8),
        "local_patient_id": pids[c.ref_pat_idx[er]],
        "employment_status": status,
        "recorded_date": _dates(start, seen),
        "weekly_hours": _where(employed, rng.choice(WEEK_HOURS, m, p=[0.55, 0.25, 0.12, 0.08]), None),
        "self_employed": _where(employed, np.where(rng.random(m) < 0.12, "Y", "N"), None),
        "sickness_absence": _where(employed, np.where(sick, "Y", "N"), None),
        "statutory_sick_pay": _where(employed, np.where(sick & (rng.random(m) < 0.6), "Y", "N"), None),
        "benefit_receipt": benefit,
        "esa": _ind(np.where(status == "04", 0.6, 0.15)),
        "universal_credit": _ind(0.6),
        "pip": _ind(np.where(status == "04", 0.5, 0.12)),
        "employment_support": support,
        "employment_support_referral_date": _where(sup_y, _dates(start, sup_ref).astype(object), None),
        "employment_support_discharge_date": _where(sup_y & (sup_dis <= life_end[er]),
                                                      _dates(start, sup_dis).astype(object), None),
    })

    # ---- IDS007 disability: a code for 15% (one or two), NN (none) for 35%, ZZ (not stated) for 3% -----------
    u = rng.random(n_pat)
    disabled = np.flatnonzero(u < 0.15)
    two = rng.random(len(disabled)) < 0.25
    d_pat = np.concatenate([disabled, disabled[two], np.flatnonzero((u >= 0.15) & (u < 0.50)),
                            np.flatnonzero((u >= 0.50) & (u < 0.53))])
    d_code = np.concatenate([rng.choice(DISABILITY_CODES, len(disabled) + two.sum()),
                             np.full(((u >= 0.15) & (u < 0.50)).sum(), "NN"),
                             np.full(((u >= 0.50) & (u < 0.53)).sum(), "ZZ")])
    dis = pd.DataFrame({"local_patient_id": pids[d_pat], "disability_code": d_code})
    dis = dis.drop_duplicates().sort_values("local_patient_id", kind="stable", ignore_index=True)
    dis.insert(0, "disability_id", _ids("DIS", len(dis), 8))
    out["disability"] = dis

    # ---- IDS011 sexual orientation (70%) and religion (55%), SNOMED CT ---------------------------------------
    so = np.flatnonzero(rng.random(n_pat) < 0.70)
    rl = np.flatnonzero(rng.random(n_pat) < 0.55)
    s_pat = np.concatenate([so, rl])
    soc = pd.DataFrame({
        "local_patient_id": pids[s_pat],
        "snomed_code": np.concatenate([rng.choice(SEXUAL_ORIENTATION, len(so), p=SEXUAL_ORIENTATION_P),
                                       rng.choice(RELIGION, len(rl), p=RELIGION_P)]),
        "recorded_date": _dates(start, _between(rng, f_recv[s_pat], np.minimum(f_recv[s_pat] + 14, f_end[s_pat]))),
    }).sort_values("local_patient_id", kind="stable", ignore_index=True)
    soc.insert(0, "circumstance_id", _ids("SOC", len(soc), 8))
    out["social_circumstance"] = soc

    # ---- IDS012 overseas visitor charging category: a few patients -------------------------------------------
    ov = np.flatnonzero(rng.random(n_pat) < 0.008)
    out["overseas_visitor"] = pd.DataFrame({
        "visitor_id": _ids("OVS", len(ov), 6),
        "local_patient_id": pids[ov],
        "charging_category": rng.choice(OVERSEAS_CATEGORY, len(ov)),
        "applicable_date": _dates(start, f_recv[ov]),
    })

    # ---- IDS601 previous diagnoses (20% of patients), before their first referral -----------------------------
    pd_pat = np.flatnonzero(rng.random(n_pat) < 0.20)
    pd_pat = np.concatenate([pd_pat, pd_pat[rng.random(len(pd_pat)) < 0.3]])
    icd = rng.random(len(pd_pat)) < 0.6
    diag = pd.DataFrame({
        "local_patient_id": pids[pd_pat],
        "scheme": np.where(icd, "01", "04"),
        "code": np.where(icd, rng.choice(PREV_DIAG_ICD10, len(pd_pat)), rng.choice(PREV_DIAG_SNOMED, len(pd_pat))),
        "diagnosis_date": _dates(start, earliest[pd_pat] - rng.integers(60, 365 * 10, len(pd_pat))),
    }).sort_values(["local_patient_id", "diagnosis_date"], kind="stable", ignore_index=True)
    diag.insert(0, "diagnosis_id", _ids("DX", len(diag), 8))
    out["previous_diagnosis"] = diag
    diagnosed_before = np.zeros(n_pat, dtype=bool)
    diagnosed_before[pd_pat] = True

    # ---- IDS803 care clusters: a few assessed referrals, start < end inside the referral ----------------------
    cl = np.flatnonzero(c.assessed & (life_end - c.assess_off >= 3) & (rng.random(n_ref) < 0.03))
    cl_start = _between(rng, c.assess_off[cl], np.minimum(c.assess_off[cl] + 7, life_end[cl] - 2))
    cl_end = _between(rng, cl_start + 1, life_end[cl])
    open_ = ~c.discharged[cl] & (rng.random(len(cl)) < 0.5)
    s_at = _utc(start, cl_start, rng.integers(9 * 60, 17 * 60, len(cl)))
    e_at = _utc(start, cl_end, rng.integers(9 * 60, 17 * 60, len(cl)))
    out["care_cluster"] = pd.DataFrame({
        "cluster_id": _ids("CLU", len(cl), 6),
        "local_patient_id": pids[c.ref_pat_idx[cl]],
        "cluster_code": rng.choice(CARE_CLUSTERS, len(cl)),
        "start_at": s_at,
        "end_at": pd.Series(e_at).where(~open_, None).to_numpy(),
    })

    # ---- care personnel and qualifications (IDS902): everyone the contacts name ------------------------------
    people, quals = _care_personnel(rng, c.clinician, end)
    out["care_personnel"], out["care_personnel_qualification"] = people, quals

    # ---- referral (IDS101 / IDS603 additions) -------------------------------------------------------------
    onset_off = c.received_off - rng.integers(14, 365 * 3, n_ref)
    onset = _dates(start, onset_off).astype("datetime64[M]").astype(str)
    prev_cond = np.where(diagnosed_before[c.ref_pat_idx], "Y", "N").astype(object)
    prev_cond[rng.random(n_ref) < 0.04] = "U"
    prev_cond[rng.random(n_ref) < 0.02] = "Z"
    ref["presenting_problem_significance"] = _where(ref["presenting_problem_code"].notna(),
                                                      np.where(rng.random(n_ref) < 0.95, "1", "2"), None)
    ref["onset_month"] = _where(rng.random(n_ref) < 0.85, onset, None)
    ref["previous_diagnosed_condition"] = prev_cond
    ref["risk_summary"] = None

    # ---- IDS105 onward referrals and the providers that receive them --------------------------------------
    receivers = _receiving_providers(n_pat, keys_dir)
    out["receivers"] = receivers
    done = c.discharged & (c.disch_off <= span)
    want = done & ((c.end_code == "13") | (rng.random(n_ref) < 0.06))
    # every discharge month with two or more discharges has two onward referrals or more, so the deliberately
    # unreachable provider (ZR001) and the non-adequate one (ZR002) each receive one in every month
    d_idx = np.flatnonzero(done)
    d_month = _dates(start, c.disch_off[d_idx]).astype("datetime64[M]")
    key = rng.random(len(d_idx))
    order = np.lexsort((key, d_month))
    rank = np.empty(len(d_idx), dtype=int)
    rank[order] = pd.Series(d_month[order]).groupby(d_month[order]).cumcount().to_numpy()
    want[d_idx[rank < 2]] = True
    o_ref = np.flatnonzero(want)
    # a month with a single discharge (the service's first months) refers that patient to both providers
    o_m = _dates(start, c.disch_off[o_ref]).astype("datetime64[M]")
    months, counts = np.unique(o_m, return_counts=True)
    o_ref = np.sort(np.concatenate([o_ref, o_ref[np.isin(o_m, months[counts == 1])]]))
    n_o = len(o_ref)
    # on the day of discharge or a few days before, never before receipt nor in an earlier month than the discharge
    d_days = _dates(start, c.disch_off[o_ref])
    month_first = (d_days.astype("datetime64[M]").astype("datetime64[D]") - np.datetime64(start)).astype(int)
    o_day = np.maximum(np.maximum(c.received_off[o_ref], month_first),
                       c.disch_off[o_ref] - rng.choice(np.array([0, 0, 0, 1, 2, 3]), n_o))
    o_at = _utc(start, o_day, rng.integers(9 * 60, 17 * 60, n_o))
    o_month = _dates(start, o_day).astype("datetime64[M]")
    o_order = np.lexsort((rng.random(n_o), o_month))
    o_rank = np.empty(n_o, dtype=int)
    o_rank[o_order] = pd.Series(o_month[o_order]).groupby(o_month[o_order]).cumcount().to_numpy()
    codes = receivers["ods_code"].to_numpy()
    receiving = np.where(o_rank == 0, codes[0], np.where(o_rank == 1, codes[1],
                                                         rng.choice(codes[2:], n_o)))
    # the clinician of each referral's last contact (contacts are in referral order): the receiver's named contact
    last = np.flatnonzero(np.r_[c.c_ref[1:] != c.c_ref[:-1], True]) if n_c else np.array([], dtype=int)
    last_clin = rng.choice(people["care_pers_local_id"].to_numpy(), n_ref).astype(object)  # who triaged the rest
    last_clin[c.c_ref[last]] = c.clinician[last]
    o_ids = c.ref_ids[o_ref]
    onward = pd.DataFrame({
        "onward_referral_id": _ids("ONW", n_o, 7),
        "service_request_id": o_ids,
        "referred_at": o_at,
        "reason": np.where(c.end_code[o_ref] == "13", rng.choice(np.array(["01", "02"]), n_o),
                           rng.choice(ONWARD_REASONS, n_o, p=ONWARD_REASONS_P / ONWARD_REASONS_P.sum())),
        "receiving_org_code": receiving,
        "contact_care_pers_id": last_clin[o_ref],
    })
    out["onward_referral"] = onward
    ref.loc[o_ref, "risk_summary"] = rng.choice(RISK_NOTES, n_o)

    # ---- IDS108 waiting-time pauses: inside the wait for assessment ------------------------------------------
    wait = c.assess_off - c.received_off
    pz = np.flatnonzero(c.assessed & (wait >= 14) & (c.assess_off <= span) & (rng.random(n_ref) < 0.15))
    pz_start = c.received_off[pz] + rng.integers(1, 5, len(pz))
    pz_end = _between(rng, pz_start + 3, c.assess_off[pz] - 1)
    out["waiting_time_pause"] = pd.DataFrame({
        "pause_id": _ids("PAU", len(pz), 7),
        "service_request_id": c.ref_ids[pz],
        "start_date": _dates(start, pz_start),
        "end_date": _dates(start, pz_end),
        "reason": rng.choice(PAUSE_REASONS, len(pz), p=[0.6, 0.3, 0.1]),
    })

    # ---- IDS602 long-term conditions (22% of referrals); their contacts are in the integrated LTC service -----
    lt = np.flatnonzero(rng.random(n_ref) < 0.22)
    lt = np.sort(np.concatenate([lt, lt[rng.random(len(lt)) < 0.25]]))
    snomed = rng.random(len(lt)) < 0.8
    out["long_term_condition"] = pd.DataFrame({
        "service_request_id": c.ref_ids[lt],
        "scheme": np.where(snomed, "04", "01"),
        "code": np.where(snomed, rng.choice(LTC_SNOMED, len(lt)), rng.choice(LTC_ICD10, len(lt))),
    }).drop_duplicates(ignore_index=True)
    out["long_term_condition"].insert(0, "condition_id", _ids("LTC", len(out["long_term_condition"]), 8))
    ltc_ref = np.zeros(n_ref, dtype=bool)
    ltc_ref[lt] = True

    # ---- IDS205 internet-enabled therapy: 35% of treated referrals, 1-3 logs between assessment and discharge --
    treated = c.assessed & (c.sessions > 0)
    window_lo = c.assess_off + 1
    window_hi = life_end
    dg = np.flatnonzero(treated & (window_hi - window_lo >= 7) & (rng.random(n_ref) < 0.35))
    digital = np.zeros(n_ref, dtype=bool)
    digital[dg] = True
    prog = rng.choice(INTERNET_PROGRAMMES, n_ref, p=INTERNET_PROGRAMMES_P)
    n_logs = rng.choice(np.array([1, 2, 3]), len(dg), p=[0.5, 0.35, 0.15])
    l_ref = np.repeat(dg, n_logs)
    l_k = np.arange(len(l_ref)) - np.repeat(np.cumsum(n_logs) - n_logs, n_logs)
    seg = (window_hi[l_ref] - window_lo[l_ref] + 1) // np.repeat(n_logs, n_logs)
    l_start = window_lo[l_ref] + seg * l_k + (rng.random(len(l_ref)) * np.maximum(seg // 3, 1)).astype(int)
    l_end = np.minimum(l_start + rng.integers(6, 29, len(l_ref)), window_lo[l_ref] + seg * (l_k + 1) - 1)
    l_end = np.maximum(l_end, l_start)
    still_open = ~c.discharged[l_ref] & (l_k == np.repeat(n_logs, n_logs) - 1) & (rng.random(len(l_ref)) < 0.5)
    out["internet_therapy_log"] = pd.DataFrame({
        "log_id": _ids("ITL", len(l_ref), 8),
        "service_request_id": c.ref_ids[l_ref],
        "start_date": _dates(start, l_start),
        "end_date": _where(still_open, None, _dates(start, l_end).astype(object)),
        "programme": prog[l_ref],
        "duration_minutes": rng.choice(np.array([10, 15, 20, 30, 45, 60]), len(l_ref)),
        "care_pers_local_id": last_clin[l_ref],
        "integrated_software": np.where(rng.random(len(l_ref)) < 0.7, "Y", "N"),
    })

    # ---- care contacts (IDS201 / IDS202 additions) ----------------------------------------------------------
    cr = c.c_ref
    treat = c.c_seq > 0
    attend, mech = c.attend, c.mech
    group_ref = treated & ~digital & (rng.random(n_ref) < 0.10)
    couple_ref = treated & ~digital & ~group_ref & (rng.random(n_ref) < 0.01)
    mode = np.where(treat & group_ref[cr], "3", np.where(treat & couple_ref[cr], "2", "1"))
    in_group = mode == "3"
    p_lang = lang[c.ref_pat_idx[cr]]
    other_lang = p_lang != "en"
    face = mech == "01"
    show_lang = other_lang | (rng.random(n_c) < 0.4)
    proc = treat & (rng.random(n_c) < 0.3)
    find = ~treat & (rng.random(n_c) < 0.6)
    find_icd = rng.random(n_c) < 0.3
    obs_k = rng.integers(0, len(OBSERVATIONS), n_c)
    obs = ~treat & (rng.random(n_c) < 0.1)
    obs_lo = np.array([o[2] for o in OBSERVATIONS])[obs_k]
    obs_hi = np.array([o[3] for o in OBSERVATIONS])[obs_k]
    pidx = c.problem_idx[cr]
    # built as fixed-width numpy strings and stored as categoricals: 800,000 contacts x 16 columns of Python
    # strings would double the generator's time, for columns of a handful of codes each
    yes_no = np.array(["Y", "N"])
    cc["planned"] = _cat(np.where(rng.random(n_c) < 0.95, "Y", "N"), yes_no)
    cc["short_notice_cancellation"] = _cat(np.where(np.isin(attend, ["2", "4"]) & (rng.random(n_c) < 0.6), "Y", "N"),
                                           yes_no)
    cc["ltc_service"] = _cat(np.where(ltc_ref[cr], "Y", "N"), yes_no)
    cc["digital_programme"] = _cat(prog[cr], INTERNET_PROGRAMMES, treat & digital[cr] & (rng.random(n_c) < 0.8))
    cc["therapy_mode"] = _cat(mode, np.array(["1", "2", "3"]))
    cc["group_participants"] = _masked_int(rng.integers(5, 15, n_c), in_group)
    cc["group_facilitators"] = _masked_int(rng.integers(1, 4, n_c), in_group)
    cc["psychotropic_medication"] = _cat(rng.choice(PSYCH_MED, n_ref, p=PSYCH_MED_P)[cr], PSYCH_MED)
    cc["activity_location"] = _cat(np.where(face, rng.choice(LOCATION_FACE_TO_FACE, n_c, p=LOCATION_FACE_TO_FACE_P),
                                            "A01"), LOCATION_FACE_TO_FACE)
    cc["site_code"] = _cat(np.where(face, rng.choice(SITES, n_c), SITES[0]), SITES)
    languages = np.concatenate([["en"], OTHER_LANGUAGES])
    cc["treatment_language"] = _cat(np.where(other_lang & (rng.random(n_c) < 0.85), p_lang, "en"), languages,
                                    show_lang)
    cc["interpreter_present"] = _cat(rng.choice(INTERPRETER, n_c, p=INTERPRETER_P), INTERPRETER, other_lang)
    cc["procedure_code"] = _cat(rng.choice(PROCEDURES, n_c), PROCEDURES, proc)
    cc["finding_scheme"] = _cat(np.where(find_icd, "01", "04"), np.array(["01", "04"]), find)
    cc["finding_code"] = _cat(np.where(find_icd, FINDING_ICD10[pidx], FINDING_SNOMED[pidx]),
                              np.concatenate([FINDING_ICD10, FINDING_SNOMED]), find)
    obs_codes = np.array([o[0] for o in OBSERVATIONS])
    obs_units = np.array([o[1] for o in OBSERVATIONS])
    obs_value = (obs_lo + rng.random(n_c) * (obs_hi - obs_lo)).round(0).astype(int)
    cc["observation_code"] = _cat(obs_codes[obs_k], obs_codes, obs)
    cc["observation_value"] = _cat(obs_value.astype(str), np.arange(obs_lo.min(), obs_hi.max() + 1).astype(str), obs)
    cc["observation_unit"] = _cat(obs_units[obs_k], obs_units, obs)

    # ---- scale items beyond PHQ-9/GAD-7/WSAS: an anxiety-disorder-specific measure at the first and last
    # attended contacts (the problem's own, as national guidance asks) and the A-PEQ at the last ------------------
    a_idx = c.a_idx
    a_ref = cr[a_idx]
    first_or_last = (c.c_seq[a_idx] == 0) | (c.c_seq[a_idx] == c.sessions[a_ref])
    frames = []
    for prob, (code, lo, hi) in ADSM.items():
        sel = first_or_last & (c.problem_idx[a_ref] == prob)
        if prob == 1:   # PSWQ for some GAD referrals only
            sel &= rng.random(len(a_idx)) < 0.4
        if not sel.any():
            continue
        sev = np.clip(rng.normal(0.65, 0.12, n_ref), 0.3, 0.95)[a_ref[sel]]
        val = lo + (hi - lo) * sev * c.improve[sel] + rng.normal(0, (hi - lo) * 0.03, sel.sum())
        frames.append(pd.DataFrame({"contact": a_idx[sel], "tool_code": code,
                                    "score": np.clip(np.rint(val), lo, hi).astype(int), "score_text": None}))
    last = (c.c_seq[a_idx] == c.sessions[a_ref]) & (c.c_seq[a_idx] > 0) & c.discharged[a_ref]
    last &= rng.random(len(a_idx)) < 0.6
    peq_c = a_idx[last]
    for code, answers in PEQ_TEXT:
        p = [0.85, 0.15] if len(answers) == 2 else [0.8, 0.12, 0.08]
        frames.append(pd.DataFrame({"contact": peq_c, "tool_code": code, "score": None,
                                    "score_text": rng.choice(np.array(answers), len(peq_c), p=p)}))
    frames.append(pd.DataFrame({"contact": peq_c, "tool_code": PEQ_SCORED,
                                "score": rng.choice(np.arange(5), len(peq_c), p=[0.02, 0.03, 0.1, 0.35, 0.5]),
                                "score_text": None}))
    extra = pd.concat(frames, ignore_index=True).sort_values(["contact", "tool_code"], kind="stable",
                                                             ignore_index=True)
    ex_c = extra["contact"].to_numpy()
    out["extra_scores"] = pd.DataFrame({
        "assessment_id": _ids("A", len(extra), 10, first=len(ca) + 1),
        "service_request_id": c.ref_ids[cr[ex_c]],
        "care_contact_id": c.cid[ex_c],
        "tool_code": extra["tool_code"].to_numpy(),
        "score": pd.array(extra["score"].to_numpy(), dtype="Int64"),
        "score_text": extra["score_text"].to_numpy(),
        "assessed_at": c.contact_at[ex_c],
    })
    return out


def _pick(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` of ``candidates`` (row positions), sorted, without replacement."""
    k = min(k, len(candidates))
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]


def _inject_v21_faults(rng: np.random.Generator, n_bad: int, t: dict[str, pd.DataFrame],
                       receivers: pd.DataFrame, bad: dict[str, list[str]]) -> None:
    """One kind of bad record per v2.1 table (and two on the new scales), listed by opaque id like the others.

    Small tables (clusters, visitors, staff) lose only a share of their rows, so most of each stays usable."""
    def few(n: int) -> int:
        return max(1, min(n_bad, n // 4))

    acc = t["accommodation_status"]
    r = _pick(rng, np.flatnonzero(acc["end_date"].isna().to_numpy()), n_bad)
    acc.loc[r, "end_date"] = (pd.to_datetime(acc.loc[r, "start_date"]) - pd.Timedelta(days=30)).to_numpy()
    bad["accommodation_ends_before_start"] = acc.loc[r, "accommodation_id"].tolist()

    emp = t["employment_status"]
    r = _pick(rng, np.arange(len(emp)), n_bad)
    emp.loc[r, "employment_status"] = "10"          # IDS00407 stops at 08 (and ZZ)
    bad["employment_status_invalid_code"] = emp.loc[r, "employment_id"].tolist()

    dis = t["disability"]
    r = _pick(rng, np.arange(len(dis)), n_bad)
    dis.loc[r, "disability_code"] = "11"            # IDS00707 stops at 10 (and NN, XX, ZZ)
    bad["disability_code_invalid"] = dis.loc[r, "disability_id"].tolist()

    soc = t["social_circumstance"]
    r = _pick(rng, np.arange(len(soc)), n_bad)
    soc.loc[r, "snomed_code"] = "heterosexual"      # words where a SNOMED CT concept id belongs
    bad["circumstance_not_snomed"] = soc.loc[r, "circumstance_id"].tolist()

    ovs = t["overseas_visitor"]
    r = _pick(rng, np.arange(len(ovs)), few(len(ovs)))
    ovs.loc[r, "charging_category"] = "G"           # not in IDS01207
    bad["overseas_visitor_invalid_category"] = ovs.loc[r, "visitor_id"].tolist()

    dx = t["previous_diagnosis"]
    r = _pick(rng, np.flatnonzero((dx["scheme"] == "01").to_numpy()), n_bad)
    dx.loc[r, "code"] = dx.loc[r, "code"].str[:3]   # ICD-10 needs 4-6 characters
    bad["previous_diagnosis_code_too_short"] = dx.loc[r, "diagnosis_id"].tolist()

    clu = t["care_cluster"]
    r = _pick(rng, np.arange(len(clu)), few(len(clu)))
    clu.loc[r, "end_at"] = (pd.to_datetime(clu.loc[r, "start_at"]) - pd.Timedelta(days=2)).to_numpy()
    bad["care_cluster_ends_before_start"] = clu.loc[r, "cluster_id"].tolist()

    staff = t["care_personnel"]
    r = _pick(rng, np.arange(len(staff)), 1)
    staff.loc[r, "display_name"] = ""
    bad["care_personnel_blank_name"] = staff.loc[r, "care_pers_local_id"].tolist()

    quals = t["care_personnel_qualification"]
    k = max(1, min(n_bad, 3))
    ghosts = pd.DataFrame({
        "qualification_id": _ids("Q", k, 6, first=len(quals) + 1),
        "care_pers_local_id": [f"CL9{i:02d}" for i in range(k)],   # clinician ids run CL100..CL159
        "level": "12", "awarded_date": np.datetime64("2019-07-01"), "planned_completion_date": None,
    })
    t["care_personnel_qualification"] = pd.concat([quals, ghosts], ignore_index=True)
    bad["qualification_unknown_person"] = ghosts["qualification_id"].tolist()

    onw = t["onward_referral"]
    deliberate = receivers["ods_code"].to_numpy()[:2]       # keep ZR001/ZR002's monthly referrals as they are
    r = _pick(rng, np.flatnonzero(~onw["receiving_org_code"].isin(deliberate).to_numpy()), few(len(onw)))
    onw.loc[r, "receiving_org_code"] = "ZR999"
    bad["onward_referral_unknown_org"] = onw.loc[r, "onward_referral_id"].tolist()

    pau = t["waiting_time_pause"]
    r = _pick(rng, np.arange(len(pau)), few(len(pau)))
    pau.loc[r, "end_date"] = (pd.to_datetime(pau.loc[r, "start_date"]) - pd.Timedelta(days=5)).to_numpy()
    bad["pause_ends_before_start"] = pau.loc[r, "pause_id"].tolist()

    ltc = t["long_term_condition"]
    r = _pick(rng, np.arange(len(ltc)), n_bad)
    ltc.loc[r, "scheme"] = "02"                     # IDS60206 allows 01 and 04
    bad["ltc_invalid_scheme"] = ltc.loc[r, "condition_id"].tolist()

    itl = t["internet_therapy_log"]
    r = _pick(rng, np.arange(len(itl)), n_bad)
    itl.loc[r, "programme"] = "ZQ"
    bad["internet_therapy_invalid_programme"] = itl.loc[r, "log_id"].tolist()

    sc = t["extra_scores"]
    adsm = {code: hi for code, _lo, hi in ADSM.values()}
    rows = np.flatnonzero(sc["tool_code"].isin(adsm).to_numpy())
    r = _pick(rng, rows, few(len(rows)))
    sc.loc[r, "score"] = pd.NA
    sc.loc[r, "score_text"] = "abc"                 # a numeric item's score must be digits
    bad["scale_score_wrong_format"] = sc.loc[r, "assessment_id"].tolist()
    r = _pick(rng, np.setdiff1d(rows, r), few(len(rows)))
    sc.loc[r, "score"] = sc.loc[r, "tool_code"].map(adsm).to_numpy() + 7
    bad["scale_score_out_of_range"] = sc.loc[r, "assessment_id"].tolist()


# ---- writing ----------------------------------------------------------------------------------------

#: Tables in load order, parents first (deleted in reverse).
_ORDER = ["gp_practice", "organisation", "care_personnel", "care_personnel_qualification", "patient",
          "accommodation_status", "employment_status", "disability", "social_circumstance", "overseas_visitor",
          "previous_diagnosis", "care_cluster", "referral", "onward_referral", "waiting_time_pause",
          "long_term_condition", "internet_therapy_log", "care_contact", "coded_assessment", "contract"]


def write(result: SynthResult, engine: Engine, *, manifest_path: Path | None = None) -> None:
    """Replace the records in ``engine``'s database with ``result`` (schema created if missing).

    SQLite is written with the DB-API's ``executemany`` in one transaction; PostgreSQL with COPY.
    Both are an order of magnitude faster than ORM inserts, which matters at 100k patients.
    """
    schema.metadata.create_all(engine)
    indexes = [idx for name in _ORDER for idx in schema.metadata.tables[name].indexes]
    with engine.begin() as conn:
        for name in reversed(_ORDER):
            conn.execute(delete(schema.metadata.tables[name]))
        for idx in indexes:  # a bulk load is faster without secondary indexes; rebuilt below
            idx.drop(conn)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("PRAGMA synchronous=OFF")  # one transaction; a crash just means re-seeding
        for name in _ORDER:
            _copy_frame(engine.dialect.name, cur, name, result.frames[name])
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        for idx in indexes:
            idx.create(conn)
    if manifest_path is not None:
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(result.manifest(), indent=1, sort_keys=True))


def _column_values(df: pd.DataFrame, table: Table) -> list[list[Any]]:
    cols: list[list[Any]] = []
    for col in table.columns:
        # a bulk load bypasses SQLAlchemy's defaults: a column the frame does not carry gets its scalar default
        # (cast: a scalar default is a ScalarElementColumnDefault, which has .arg; sqlalchemy does not export it)
        default = cast(Any, col.default).arg if col.default is not None and col.default.is_scalar else None
        s = df[col.name] if col.name in df else pd.Series([default] * len(df))
        type_name = type(col.type).__name__
        vals: pd.Series
        if type_name == "DateTime":
            vals = pd.to_datetime(s).dt.strftime("%Y-%m-%d %H:%M:%S.%f")
        elif type_name == "Date":
            vals = pd.to_datetime(s).dt.strftime("%Y-%m-%d")
        elif type_name == "Boolean":
            vals = s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v))
        elif type_name == "Integer":
            vals = s.astype("Int64")
        else:
            vals = s
        vals = vals.astype(object).where(pd.notna(vals), None)
        cols.append(vals.tolist())
    return cols


def _copy_frame(dialect: str, cur: Any, name: str, df: pd.DataFrame) -> None:   # cur: a DB-API cursor
    table = schema.metadata.tables[name]
    cols = _column_values(df, table)
    rows = list(zip(*cols, strict=True)) if cols else []
    names = [c.name for c in table.columns]
    if dialect == "postgresql":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        for row in rows:
            w.writerow(["\\N" if v is None else v for v in row])
        buf.seek(0)
        sql = f"COPY {name} ({', '.join(names)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
        if hasattr(cur, "copy_expert"):  # psycopg2
            cur.copy_expert(sql, buf)
        else:  # psycopg 3
            with cur.copy(sql) as cp:
                cp.write(buf.getvalue())
    else:
        marks = ", ".join("?" for _ in names)
        cur.executemany(f"INSERT INTO {name} ({', '.join(names)}) VALUES ({marks})", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000, help="number of patients (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="seed: the same seed gives the same records (default 7)")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the records database to (re)fill")
    parser.add_argument("--keys-dir", type=Path, help="where synthetic peers' keys and certificates are cached")
    parser.add_argument("--manifest", type=Path, help="JSON manifest of counts and deliberately bad ids")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2020, 4, 1),
                        help="first referral date, YYYY-MM-DD (default 2020-04-01)")
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2026, 10, 31),
                        help="last referral date, YYYY-MM-DD (default 2026-10-31)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    result = generate(args.patients, args.seed, start=args.start, end=args.end, keys_dir=args.keys_dir)
    t1 = time.perf_counter()
    write(result, make_engine(args.url), manifest_path=args.manifest)
    t2 = time.perf_counter()
    counts = ", ".join(f"{k}={len(v)}" for k, v in result.frames.items())
    log.info("synthetic records: %s (generated in %.1fs, written in %.1fs)", counts, t1 - t0, t2 - t1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
