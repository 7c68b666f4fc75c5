"""Which letters a day needs, and what each says: read from the records source, no I/O beyond it.

An interval's letters are:

* **assessment** — a referral's *first* attended (AttendOrDNACode 5 or 6) assessment contact (AppType
  ``01``) falls in the interval (London dates);
* **discharge** — the referral's ``discharge_date`` is in the interval.

Each becomes a :class:`LetterData` with everything the templates may show and the routing facts the
policy needs. Nothing here decides who receives it (:mod:`caldicott.policy.letters`) or sends it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd
from sqlalchemy import ColumnElement, Engine, Table, and_, false, select

from caldicott.letters import outcomes
from caldicott.records import queries, schema
from caldicott.records.schema import SCORE_RANGES, SNOMED

LONDON = "Europe/London"
ATTENDED = ("5", "6")
MISSED = ("3", "7")   # did not attend; arrived late and could not be seen
WSAS_CODES = [SNOMED[k] for k in SNOMED if k.startswith("WSAS")]


@dataclass
class LetterData:
    """One letter's content and routing facts (held in memory only; never in XCom or logs)."""

    referral_id: str
    event: str                         # "assessment" | "discharge"
    event_date: dt.date
    patient: dict[str, Any]
    practice: dict[str, Any] | None
    referral: dict[str, Any]
    scores: dict[str, Any] = field(default_factory=dict)      # assessment: phq9, gad7, wsas
    outcome: dict[str, Any] = field(default_factory=dict)     # discharge: attended, missed, first/last, recovery ...
    problems: list[str] = field(default_factory=list)  # record-level reason codes (quarantine)
    unreadable_in: str | None = None   # "patient" | "referral": whose stored value could not be read

    @property
    def key(self) -> tuple[str, str]:
        return self.referral_id, self.event

    def problem_record(self, problem: str) -> tuple[str, str]:
        """``(record_type, record_id)`` a problem quarantines: the referral's own faults, else the patient's."""
        if problem in ("score_out_of_range", "discharge_before_referral") or (
                problem == "unreadable_value" and self.unreadable_in == "referral"):
            return "referral", self.referral_id
        return "patient", str(self.patient["local_patient_id"])


def utc_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """London dates [start, end) as naive UTC instants (the source stores UTC)."""
    lo = pd.Timestamp(start).tz_localize(LONDON).tz_convert("UTC").tz_localize(None).to_pydatetime()
    hi = pd.Timestamp(end).tz_localize(LONDON).tz_convert("UTC").tz_localize(None).to_pydatetime()
    return lo, hi


def _in_chunks(engine: Engine, table: Table, column: ColumnElement[Any], ids: Sequence[str],
               *where: ColumnElement[bool], on_unreadable: queries.OnUnreadable | None = None) -> pd.DataFrame:
    frames = [queries.read(engine, select(table).where(column.in_(list(ids[i:i + 900])), *where), on_unreadable)
              for i in range(0, len(ids), 900)]
    return pd.concat(frames, ignore_index=True) if frames else queries.read(engine, select(table).where(false()))


def find_events(engine: Engine, start: dt.date, end: dt.date,
                referral_ids: Iterable[str] | None = None) -> list[tuple[str, str, dt.date]]:
    """``(referral_id, event, London date)`` for every letter the interval needs, sorted.

    ``referral_ids``: only those referrals' letters (a batch re-reading its own letters). Each referral's events
    depend on its own rows only, so this is exactly the whole interval's list filtered to them, without reading
    (and grouping) every referral of the interval once per batch."""
    lo, hi = utc_bounds(start, end)
    cc = schema.care_contact
    only = None if referral_ids is None else sorted(set(referral_ids))
    where = (cc.c.contact_at >= lo, cc.c.contact_at < hi, cc.c.app_type == "01", cc.c.attend_code.in_(ATTENDED))
    if only is None:
        in_day = queries.read(engine, select(cc.c.service_request_id).where(*where))
    else:
        in_day = _in_chunks(engine, cc, cc.c.service_request_id, only, *where)
    events: list[tuple[str, str, dt.date]] = []
    refs = sorted(set(in_day["service_request_id"]))
    unreadable: set[str] = set()

    def note(row: dict[str, Any], _cols: list[str]) -> None:
        unreadable.add(str(row["service_request_id"]))

    if refs:
        first = _in_chunks(engine, cc, cc.c.service_request_id, refs,
                           and_(cc.c.app_type == "01", cc.c.attend_code.in_(ATTENDED)), on_unreadable=note)
        first = first.dropna(subset=["contact_at"]).sort_values("contact_at")
        first = first.groupby("service_request_id", sort=True).first()
        for rid, row in first.iterrows():
            at = pd.Timestamp(row["contact_at"])
            if lo <= at.to_pydatetime() < hi:
                local = at.tz_localize("UTC").tz_convert(LONDON).date()
                events.append((str(rid), "assessment", local))
        # an assessment whose instant cannot be read still needs its letter accounted for: it is planned on
        # the interval's first day and quarantined by load_letters (unless an earlier one was already sent)
        for rid in sorted(unreadable - {e[0] for e in events}):   # (cast: a cell's stubs union is too wide)
            if rid not in first.index or pd.Timestamp(cast(Any, first.at[rid, "contact_at"])).to_pydatetime() >= lo:
                events.append((rid, "assessment", start))
    dis = queries.referrals_discharged(engine, start, end, on_unreadable=lambda row, cols: None)
    wanted = None if only is None else set(only)
    for rid, d in zip(dis["service_request_id"], dis["discharge_date"], strict=True):
        if wanted is not None and str(rid) not in wanted:
            continue
        events.append((str(rid), "discharge", start if d is None else pd.Timestamp(d).date()))
    return sorted(events)


def _none(v: Any) -> Any:
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _date(v: Any) -> str | None:
    v = _none(v)
    return None if v is None else pd.Timestamp(v).strftime("%-d %B %Y")


def load_letters(engine: Engine, events: Iterable[tuple[str, str, dt.date]]) -> list[LetterData]:
    """Build the content of each letter in ``events`` from the source (a few queries, whatever the count)."""
    events = list(events)
    if not events:
        return []
    ref_ids = sorted({e[0] for e in events})
    # a cell the column's type cannot hold (SQLite) quarantines the referral or patient it belongs to
    bad_refs: set[str] = set()
    bad_pats: set[str] = set()

    def ref_note(row: dict[str, Any], _cols: list[str]) -> None:
        bad_refs.add(str(row["service_request_id"]))

    refs = _in_chunks(engine, schema.referral, schema.referral.c.service_request_id, ref_ids, on_unreadable=ref_note)
    refs = refs.set_index("service_request_id")
    pats = queries.patients(engine, sorted(set(refs["local_patient_id"])),
                            on_unreadable=lambda row, _cols: bad_pats.add(str(row["local_patient_id"])))
    practices = queries.table(engine, "gp_practice").set_index("ods_code")
    contacts = _in_chunks(engine, schema.care_contact, schema.care_contact.c.service_request_id, ref_ids,
                          on_unreadable=ref_note)
    contacts = contacts.drop(columns=["clinical_summary"])   # never read further: no session notes in letters
    scores = _in_chunks(engine, schema.coded_assessment, schema.coded_assessment.c.service_request_id, ref_ids,
                        on_unreadable=ref_note)

    # record checks the letters depend on
    from caldicott.records.checks import patient_problems, score_problems

    all_nums = pats["nhs_number"]
    problems_by_patient: dict[str, list[str]] = {}
    for q in patient_problems(pats):
        if q.reason_code in ("invalid_nhs_number", "duplicate_nhs_number"):
            problems_by_patient.setdefault(q.record_id, []).append(q.reason_code)
    # a duplicate elsewhere in the source counts too: ask the source about these numbers
    dup = _duplicated_elsewhere(engine, pats)
    for pid in dup:
        problems_by_patient.setdefault(pid, []).append("duplicate_nhs_number")
    bad_scores = {q.record_id for q in score_problems(scores)} if len(scores) else set()
    bad_score_refs = set(scores.loc[scores["assessment_id"].isin(bad_scores), "service_request_id"])
    del all_nums

    pat_rows = {r["local_patient_id"]: r for r in _records(pats)}
    ref_rows = {r["service_request_id"]: r for r in _records(refs.reset_index())}
    prac_rows = {code: {"ods_code": code, **{str(k): _none(v) for k, v in row.items()}}
                 for code, row in practices.to_dict("index").items()}
    # per referral as plain rows: the per-letter arithmetic below is a handful of values, where pandas' per-call
    # overhead (a groupby per letter) cost ~10 ms a discharge letter, as much as rendering and sending it
    contacts_by_ref = _rows_by_referral(contacts)
    scores_by_ref = _rows_by_referral(scores)

    out: list[LetterData] = []
    for rid, event, day in events:
        ref = ref_rows.get(rid)
        if ref is None:
            continue
        patient = {k: _none(v) for k, v in pat_rows.get(ref["local_patient_id"], {}).items()}
        if not patient:
            continue
        practice = prac_rows.get(patient.get("gp_practice_code"))
        referral = {k: _none(ref[k]) for k in ("received_date", "presenting_problem", "presenting_problem_code",
                                               "assessment_plan", "discharge_date", "end_code",
                                               "discharge_recommendations")}
        problems = sorted(set(problems_by_patient.get(patient["local_patient_id"], [])))
        if patient["local_patient_id"] in bad_pats or rid in bad_refs:
            # its content would be built from a value that could not be read: quarantined, not guessed at
            problems.append("unreadable_value")
            out.append(LetterData(rid, event, day, patient, practice, referral, problems=problems,
                                  unreadable_in="patient" if patient["local_patient_id"] in bad_pats else "referral"))
            continue
        if rid in bad_score_refs:
            problems.append("score_out_of_range")
        rec, dis = referral["received_date"], referral["discharge_date"]
        if event == "discharge" and rec is not None and dis is not None and pd.Timestamp(dis) < pd.Timestamp(rec):
            problems.append("discharge_before_referral")
        letter = LetterData(rid, event, day, patient, practice, referral, problems=problems)
        c = contacts_by_ref.get(rid)
        s = scores_by_ref.get(rid)
        if event == "assessment":
            letter.scores = _assessment_scores(c, s)
        else:
            letter.outcome = _discharge_outcome(c, s, referral.get("end_code"))
        out.append(letter)
    return out


def _duplicated_elsewhere(engine: Engine, pats: pd.DataFrame) -> set[str]:
    nums = sorted({n for n in pats["nhs_number"].dropna().astype(str) if n})
    if not nums:
        return set()
    t = schema.patient
    same = pd.concat([queries.read(engine, select(t.c.local_patient_id, t.c.nhs_number)
                                   .where(t.c.nhs_number.in_(nums[i:i + 900]))) for i in range(0, len(nums), 900)],
                     ignore_index=True)
    counts = same.groupby("nhs_number")["local_patient_id"].nunique()
    dup_numbers = set(counts[counts > 1].index)
    return set(pats.loc[pats["nhs_number"].isin(dup_numbers), "local_patient_id"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame.to_dict("records")`` with the same values, built from ``Series.tolist`` (Python scalars, Timestamps
    for datetimes) instead of pandas' per-cell boxing, which cost as much as rendering the letters' text."""
    cols = list(frame.columns)
    return [dict(zip(cols, row, strict=True)) for row in zip(*(frame[c].tolist() for c in cols), strict=True)]


def _rows_by_referral(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in _records(frame):
        out.setdefault(row["service_request_id"], []).append(row)
    return out


def _na(v: Any) -> bool:
    return v is None or bool(pd.isna(v))


def _by_time(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Rows in time order, missing times last (as pandas sorts), ties in their source order."""
    return sorted(rows, key=lambda r: (True, 0) if _na(r[column]) else (False, pd.Timestamp(r[column])))


def _assessment_scores(contacts: list[dict[str, Any]] | None, scores: list[dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"phq9": None, "gad7": None, "wsas": None, "date": None}
    if not contacts:
        return out
    firsts = [c for c in contacts if c["app_type"] == "01" and c["attend_code"] in ATTENDED]
    if not firsts:
        return out
    first = _by_time(firsts, "contact_at")[0]
    out["date"] = pd.Timestamp(first["contact_at"]).tz_localize("UTC").tz_convert(LONDON).strftime("%-d %B %Y")
    if not scores:
        return out
    by_tool = {r["tool_code"]: r["score"] for r in scores if r["care_contact_id"] == first["care_contact_id"]}
    out["phq9"] = _int(by_tool.get(SNOMED["PHQ9"]))
    out["gad7"] = _int(by_tool.get(SNOMED["GAD7"]))
    wsas = [by_tool.get(c) for c in WSAS_CODES]
    out["wsas"] = int(sum(w for w in wsas if w is not None)) if all(w is not None for w in wsas) else None
    return out


def _int(v: Any) -> int | None:
    v = _none(v)
    return None if v is None else int(v)


def _series(scores: list[dict[str, Any]], tool: str) -> list[int]:
    lo, hi = SCORE_RANGES[tool]
    return [int(r["score"]) for r in _by_time([r for r in scores if r["tool_code"] == tool], "assessed_at")
            if lo <= r["score"] <= hi]


def _wsas_totals(scores: list[dict[str, Any]]) -> list[int]:
    """Each complete WSAS (all five items at one care contact), in time order: the items' sum."""
    by_contact: dict[str, list[dict[str, Any]]] = {}
    for r in scores:
        if r["tool_code"] in WSAS_CODES and not _na(r["care_contact_id"]):
            by_contact.setdefault(r["care_contact_id"], []).append(r)
    complete = []
    for rows in by_contact.values():
        if len(rows) == len(WSAS_CODES):
            times = [pd.Timestamp(r["assessed_at"]) for r in rows if not _na(r["assessed_at"])]
            total = sum(r["score"] for r in rows if not _na(r["score"]))
            complete.append({"at": min(times) if times else None, "total": total})
    return [int(c["total"]) for c in _by_time(complete, "at")]


def _discharge_outcome(contacts: list[dict[str, Any]] | None, scores: list[dict[str, Any]] | None,
                       end_code: Any) -> dict[str, Any]:
    contacts, scores = contacts or [], scores or []
    attended = sum(c["attend_code"] in ATTENDED for c in contacts)
    missed = sum(c["attend_code"] in MISSED for c in contacts)
    phq = _series(scores, SNOMED["PHQ9"])
    gad = _series(scores, SNOMED["GAD7"])
    wsas = _wsas_totals(scores)
    wsas_first = wsas[0] if wsas else None
    wsas_last = wsas[-1] if len(wsas) >= 2 else None
    pf, pl = (phq[0], phq[-1]) if len(phq) >= 2 else (phq[0] if phq else None, None)
    gf, gl = (gad[0], gad[-1]) if len(gad) >= 2 else (gad[0] if gad else None, None)
    return {
        "attended": attended, "missed": missed,
        "phq9_first": pf, "phq9_last": pl, "gad7_first": gf, "gad7_last": gl,
        "wsas_first": wsas_first, "wsas_last": wsas_last,
        "recovered": outcomes.recovered(pf, gf, pl, gl),
        "reliably_improved": outcomes.reliably_improved(pf, gf, pl, gl),
        "recovery_text": outcomes.recovery_text(pf, gf, pl, gl),
        "reliable_improvement_text": outcomes.reliable_text(pf, gf, pl, gl),
        "end_reason": outcomes.END_REASONS.get(str(end_code), f"end code {end_code}" if end_code else "not recorded"),
    }
