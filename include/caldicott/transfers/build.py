"""Which patient reports a day needs, and what each says: read from the records source, nothing else.

A day's reports are its onward referrals (``onward_referral``, IDS105) whose ``referred_at`` (UTC) falls in the
London day. Each becomes a :class:`TransferData` holding the report's content, already cut to the fields the policy
allows (:mod:`caldicott.policy.transfers`), plus the routing facts (the receiving organisation's row, the patient's
GP practice, consent and copy channel) that decide who gets it. Nothing here sends.

The treatment figures reuse the GP letters' arithmetic (:mod:`caldicott.letters.build`: attended / missed contacts,
first and last PHQ-9, GAD-7 and WSAS, recovery and reliable improvement from :mod:`caldicott.letters.outcomes`), so
a transfer report and a discharge letter about the same referral say the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Engine, Table, select

from caldicott.letters import build as letters_build
from caldicott.policy import transfers as policy
from caldicott.records import queries, schema
from caldicott.records.nhs_numbers import valid_mask
from caldicott.transfers import codes

#: one source row (or a content section) as column -> value
Row = dict[str, Any]


@dataclass
class TransferData:
    """One onward referral's report content and routing facts (in memory only; never in XCom or logs)."""

    onward_id: str
    referral_id: str
    day: dt.date
    patient: Row                 # the whole row: routing (consent, copy channel) reads it; rendering gets minimum()
    practice: dict[str, Any] | None         # the patient's GP practice row, for the GP copy
    receiver: dict[str, Any] | None         # the receiving organisation's row
    contact: dict[str, Any] | None          # the named contact (care_personnel)
    report: dict[str, Any] = field(default_factory=dict[str, Any])   # the content, minimum-necessary fields only
    problems: list[str] = field(default_factory=list)

    def problem_record(self, problem: str) -> tuple[str, str]:
        """``(record_type, record_id)`` a problem quarantines."""
        if problem in ("invalid_nhs_number",):
            return "patient", str(self.patient.get("local_patient_id") or "")
        if problem == "receiver_unknown":
            return "onward_referral", self.onward_id
        if problem == "referral_unknown":
            return "onward_referral", self.onward_id
        return "onward_referral", self.onward_id


def find_transfers(engine: Engine, start: dt.date, end: dt.date) -> list[tuple[str, str, dt.date]]:
    """``(onward_referral_id, service_request_id, London date)`` for every onward referral in ``[start, end)``."""
    lo, hi = letters_build.utc_bounds(start, end)
    t = schema.onward_referral
    rows = queries.read(engine, select(t.c.onward_referral_id, t.c.service_request_id, t.c.referred_at).where(
        t.c.referred_at >= lo, t.c.referred_at < hi), on_unreadable=lambda row, cols: None)
    out = []
    for oid, rid, at in zip(rows["onward_referral_id"], rows["service_request_id"], rows["referred_at"], strict=True):
        local = start if _na(at) else pd.Timestamp(at).tz_localize("UTC").tz_convert(letters_build.LONDON).date()
        out.append((str(oid), str(rid), local))
    return sorted(out)


def _na(v: Any) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _clean(row: Mapping[Hashable, Any]) -> Row:
    return {str(k): (None if _na(v) else v) for k, v in row.items()}   # keys: SQL column names (already str)


def _by(frame: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    return {str(r[key]): _clean(r) for r in frame.to_dict("records")}


def _rows_in(engine: Engine, table: Table, column: ColumnElement[Any], ids: Sequence[str],
             note: queries.OnUnreadable) -> pd.DataFrame:
    return letters_build._in_chunks(engine, table, column, list(ids), on_unreadable=note)


def load_transfers(engine: Engine, keys: Iterable[tuple[str, str, dt.date]]) -> list[TransferData]:
    """The content of each report in ``keys`` (a few queries whatever the count)."""
    keys = list(keys)
    if not keys:
        return []
    bad: set[str] = set()   # onward referral ids whose content could not be read (quarantined, not guessed)

    onward_ids = sorted({k[0] for k in keys})
    onward = _by(_rows_in(engine, schema.onward_referral, schema.onward_referral.c.onward_referral_id, onward_ids,
                          lambda row, cols: bad.add(str(row["onward_referral_id"]))), "onward_referral_id")
    ref_ids = sorted({k[1] for k in keys})
    bad_refs: set[str] = set()

    def ref_note(row: dict[str, Any], _cols: list[str]) -> None:
        bad_refs.add(str(row["service_request_id"]))

    refs = _by(_rows_in(engine, schema.referral, schema.referral.c.service_request_id, ref_ids, ref_note),
               "service_request_id")
    bad_pats: set[str] = set()
    pats = _by(queries.patients(engine, sorted({str(r["local_patient_id"]) for r in refs.values()}),
                                on_unreadable=lambda row, _c: bad_pats.add(str(row["local_patient_id"]))),
               "local_patient_id")
    practices = {str(r["ods_code"]): _clean(r) for r in queries.table(engine, "gp_practice").to_dict("records")}
    orgs = {str(r["ods_code"]): _clean(r) for r in queries.table(engine, "organisation").to_dict("records")}
    people = {str(r["care_pers_local_id"]): _clean(r)
              for r in queries.table(engine, "care_personnel").to_dict("records")}
    contacts = _rows_in(engine, schema.care_contact, schema.care_contact.c.service_request_id, ref_ids, ref_note)
    contacts = contacts.drop(columns=["clinical_summary"])   # never read further: no session notes leave
    scores = _rows_in(engine, schema.coded_assessment, schema.coded_assessment.c.service_request_id, ref_ids,
                      ref_note)
    scores = scores[scores["score"].notna()] if len(scores) else scores
    logs = _rows_in(engine, schema.internet_therapy_log, schema.internet_therapy_log.c.service_request_id, ref_ids,
                    ref_note)
    contacts_by = letters_build._rows_by_referral(contacts)
    scores_by = letters_build._rows_by_referral(scores)
    logs_by = letters_build._rows_by_referral(logs)

    out: list[TransferData] = []
    for oid, rid, day in keys:
        o = onward.get(oid)
        ref = refs.get(rid)
        if o is None:
            continue
        if ref is None:
            out.append(TransferData(oid, rid, day, {}, None, None, None, problems=["referral_unknown"]))
            continue
        patient = pats.get(str(ref["local_patient_id"])) or {}
        receiver = orgs.get(str(o.get("receiving_org_code") or ""))
        contact = people.get(str(o.get("contact_care_pers_id") or ""))
        data = TransferData(oid, rid, day, patient, practices.get(str(patient.get("gp_practice_code") or "")),
                            receiver, contact)
        if oid in bad or rid in bad_refs or str(patient.get("local_patient_id")) in bad_pats or not patient:
            data.problems.append("unreadable_value")
            out.append(data)
            continue
        if not bool(valid_mask(pd.Series([patient.get("nhs_number")]))[0]):
            data.problems.append("invalid_nhs_number")
        if receiver is None:
            data.problems.append("receiver_unknown")
        data.report = report_content(o, ref, patient, receiver, contact, contacts_by.get(rid), scores_by.get(rid),
                                     logs_by.get(rid))
        out.append(data)
    return out


def report_content(onward: Row, referral: Row, patient: Row, receiver: Row | None, contact: Row | None,
                   contacts: list[Row] | None, scores: list[Row] | None, logs: list[Row] | None) -> Row:
    """The report's content: each section cut to :data:`caldicott.policy.transfers.REPORT_FIELDS`."""
    contacts, scores, logs = contacts or [], scores or [], logs or []
    outcome = letters_build._discharge_outcome(contacts, scores, referral.get("end_code"))
    attended = [c for c in contacts if c.get("attend_code") in letters_build.ATTENDED]
    times = sorted(pd.Timestamp(c["contact_at"]) for c in attended if not _na(c.get("contact_at")))
    therapy = sorted({str(c["therapy_type"]) for c in attended if c.get("therapy_type")})
    digital = sorted({str(c["digital_programme"]) for c in contacts if c.get("digital_programme")}
                     | {str(r["programme"]) for r in logs if r.get("programme")})
    treatment = {"attended": outcome["attended"], "missed": outcome["missed"],
                 "therapy_types": [codes.display("therapy_type", t) for t in therapy],
                 "digital_programmes": [codes.display("digital_programme", p) for p in digital],
                 "first_contact": times[0].date() if times else None,
                 "last_contact": times[-1].date() if times else None}
    onward_row = {"referred_at": onward.get("referred_at"),
                  "reason": codes.display("onward_refer_reason", onward.get("reason")),
                  "receiving_org_code": onward.get("receiving_org_code")}
    return {
        "patient": policy.minimum("patient", patient),
        "referral": policy.minimum("referral", referral),
        "onward": policy.minimum("onward", onward_row),
        "treatment": policy.minimum("treatment", treatment),
        "scores": policy.minimum("scores", outcome),
        # what the scores mean: the letters' wording, computed from the figures above (no extra source field)
        "meaning": {"recovery": outcome["recovery_text"], "reliable_improvement": outcome["reliable_improvement_text"]},
        "contact": policy.minimum("contact", contact),
        "receiver": policy.minimum("receiver", receiver),
    }
