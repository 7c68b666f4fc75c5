"""Synthetic clinical records: deterministic, fast, realistic enough, and deliberately a little wrong.

Run ``python -m caldicott.records.synth --patients 2000 --seed 7 --url sqlite:///var/demo/records.db``.

Every value is invented. NHS numbers are in the 999 synthetic range and pass the check digit; names,
postcodes and e-mail addresses are drawn from small made-up lists. A small share of records is bad on
purpose (see :data:`BAD_KINDS`) so that each flow must quarantine rather than crash; which ids are bad
is written to a JSON manifest beside the database, so tests can assert that exactly those were
quarantined. The manifest holds opaque ids only.

Everything is drawn from ``numpy.random.default_rng(seed)`` with vectorised operations: 100,000
patients (about 115,000 referrals, 800,000 contacts, 1.9 million scores) take seconds, not minutes.
RSA keys cannot be seeded, so practice certificates are cached in ``--keys-dir`` and reused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete

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


@dataclass
class SynthResult:
    """What was generated: the frames (table name -> DataFrame) and the manifest of bad ids."""

    frames: dict[str, pd.DataFrame]
    bad: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0
    patients: int = 0

    def manifest(self) -> dict:
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
        "mesh_mailbox": np.where(channel == "mesh", "X26ABC2", None),
        "certificate_pem": None,
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
    email = np.where(copy_channel == "email",
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
                        np.where(src == SOURCE_PROVIDER, rng.choice(prov_codes, n_ref), None))
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
        "assessment_plan": np.where(assessed, rng.choice(np.array(PLANS), n_ref), None),
        "discharge_date": np.where(discharged, _dates(start, disch_off).astype(object), None),
        "end_code": np.where(discharged, end_code, None),
        "discharge_recommendations": np.where(discharged & assessed, rng.choice(np.array(RECOMMENDATIONS), n_ref),
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
        "cons_mechanism": rng.choice(np.array(["01", "02", "04", "06"]), n_c, p=[0.3, 0.45, 0.2, 0.05]),
        "therapy_type": np.where(c_seq == 0, None, rng.choice(np.array(["01", "02", "05", "10"]), n_c)),
        "clinician_id": np.char.add("CL", rng.integers(100, 160, n_c).astype(str)),
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

    frames = {
        "gp_practice": practices, "organisation": organisations, "patient": pat, "referral": ref,
        "care_contact": cc, "coded_assessment": ca, "contract": contracts,
    }
    return SynthResult(frames=frames, bad={k: sorted(v) for k, v in bad.items()}, seed=seed, patients=patients)


def _inject_faults(rng, n_bad, pat, ref, cc, ca, bad) -> None:
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


# ---- writing ----------------------------------------------------------------------------------------

_ORDER = ["gp_practice", "organisation", "patient", "referral", "care_contact", "coded_assessment", "contract"]


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


def _column_values(df: pd.DataFrame, table) -> list[list]:
    cols = []
    for col in table.columns:
        # a bulk load bypasses SQLAlchemy's defaults: a column the frame does not carry gets its scalar default
        default = col.default.arg if col.default is not None and col.default.is_scalar else None
        s = df[col.name] if col.name in df else pd.Series([default] * len(df))
        type_name = type(col.type).__name__
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


def _copy_frame(dialect: str, cur, name: str, df: pd.DataFrame) -> None:
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
