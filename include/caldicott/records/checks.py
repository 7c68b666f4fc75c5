"""Record-level checks every flow shares: is this record usable at all?

Each check is vectorised over a DataFrame read from the source and returns the offending rows as
:class:`~caldicott.state.quarantine.Quarantined` items (opaque ids and a reason code), so a flow can
quarantine them and carry on with the rest (invariant 4). Flow-specific rules (IAPT validation
codes, letter addressing) build on these in their own modules.

Reason codes are stable: the README's runbook lists them, and on-call staff search for them.
"""

from __future__ import annotations

import pandas as pd

from caldicott.records.nhs_numbers import valid_mask
from caldicott.records.schema import SCORE_RANGES
from caldicott.state.quarantine import Quarantined

POSTCODE_RE = r"[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}"

REASONS = {
    "invalid_nhs_number": "NHS number missing, not ten digits, or its check digit is wrong",
    "duplicate_nhs_number": "the same NHS number is held for more than one local patient",
    "invalid_postcode": "postcode is not in the form 'outward inward' with one space",
    "missing_gp_practice": "no registered GP practice is recorded",
    "unknown_gp_practice": "the registered GP practice is not in the practice table",
    "discharge_before_referral": "discharge date is before the referral was received",
    "score_out_of_range": "a coded score is outside its tool's range",
    "contact_before_referral": "a care contact is dated before the referral was received",
    "unknown_referrer": "the referring organisation is not known to the service",
    "missing_birth_date": "birth date missing or in the future",
    "unreadable_value": "a stored value cannot be read as its column's type (an impossible date, text in a number)",
}


def _items(ids: pd.Series, record_type: str, code: str) -> list[Quarantined]:
    return [Quarantined(record_type, str(i), code, REASONS[code]) for i in ids]


def patient_problems(patients: pd.DataFrame, practice_codes: pd.Series | None = None,
                     *, need_gp: bool = False) -> list[Quarantined]:
    """Problems with patient rows: NHS number, duplicates, postcode, birth date, (optionally) GP practice."""
    out: list[Quarantined] = []
    ids = patients["local_patient_id"]
    ok_nhs = valid_mask(patients["nhs_number"])
    out += _items(ids[~ok_nhs], "patient", "invalid_nhs_number")
    dup = patients["nhs_number"].notna() & patients["nhs_number"].duplicated(keep=False)
    out += _items(ids[dup.to_numpy() & ok_nhs], "patient", "duplicate_nhs_number")
    pc = patients["postcode"].astype("string")
    ok_pc = pc.str.fullmatch(POSTCODE_RE).fillna(False).to_numpy(dtype=bool)
    out += _items(ids[~ok_pc], "patient", "invalid_postcode")
    bd = pd.to_datetime(patients["birth_date"], errors="coerce", format="mixed")
    bad_bd = bd.isna() | (bd > pd.Timestamp.now())
    out += _items(ids[bad_bd.to_numpy()], "patient", "missing_birth_date")
    if need_gp:
        gp = patients["gp_practice_code"]
        missing = gp.isna() | (gp.astype("string").str.strip() == "")
        out += _items(ids[missing.to_numpy()], "patient", "missing_gp_practice")
        if practice_codes is not None:
            unknown = ~missing & ~gp.isin(set(practice_codes))
            out += _items(ids[unknown.to_numpy()], "patient", "unknown_gp_practice")
    return out


def referral_problems(referrals: pd.DataFrame, known_orgs: pd.Series | None = None) -> list[Quarantined]:
    """Discharge before receipt; (optionally) a referrer organisation the service does not know."""
    out: list[Quarantined] = []
    ids = referrals["service_request_id"]
    rec = pd.to_datetime(referrals["received_date"])
    dis = pd.to_datetime(referrals["discharge_date"])
    out += _items(ids[(dis < rec).to_numpy()], "referral", "discharge_before_referral")
    if known_orgs is not None:
        org = referrals["referrer_org_code"]
        unknown = org.notna() & ~org.isin(set(known_orgs))
        out += _items(ids[unknown.to_numpy()], "referral", "unknown_referrer")
    return out


def contact_problems(contacts: pd.DataFrame, referrals: pd.DataFrame) -> list[Quarantined]:
    """Contacts dated (in London local time) before their referral was received."""
    received = referrals.set_index("service_request_id")["received_date"]
    rec = pd.to_datetime(contacts["service_request_id"].map(received))
    local_day = (pd.to_datetime(contacts["contact_at"]).dt.tz_localize("UTC")
                 .dt.tz_convert("Europe/London").dt.tz_localize(None).dt.normalize())
    before = (local_day < rec).to_numpy()
    return _items(contacts["care_contact_id"][before], "care_contact", "contact_before_referral")


def score_problems(assessments: pd.DataFrame) -> list[Quarantined]:
    """Scores outside their tool's range (PHQ-9 0-27, GAD-7 0-21, WSAS items 0-8)."""
    lo = assessments["tool_code"].map({k: v[0] for k, v in SCORE_RANGES.items()})
    hi = assessments["tool_code"].map({k: v[1] for k, v in SCORE_RANGES.items()})
    score = pd.to_numeric(assessments["score"], errors="coerce")
    bad = (score < lo) | (score > hi) | score.isna()
    bad &= lo.notna()
    return _items(assessments["assessment_id"][bad.to_numpy()], "coded_assessment", "score_out_of_range")


def ids_of(items: list[Quarantined], record_type: str) -> set[str]:
    """The record ids of one type among ``items`` (to drop them from a batch)."""
    return {q.record_id for q in items if q.record_type == record_type}


__all__ = ["REASONS", "contact_problems", "ids_of", "patient_problems", "referral_problems", "score_problems"]
