"""Build session-update and activity files for referrers from the clinical-records source.

Pure functions over DataFrames (plus the read queries that fill them), so the DAG, the tests and the
benchmark build exactly the same bytes. What goes in each file is decided by
:mod:`caldicott.policy.referrer_updates`; this module only applies it.

Times: ``care_contact.contact_at`` is a UTC instant; a run's interval is a range of Europe/London
calendar days, so the interval ``[first, end)`` becomes the UTC instants of local midnight on ``first``
and on ``end`` (23 or 25 hours apart on the days the clocks change). Dates and times written to files
are London wall-clock values.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from caldicott.policy.referrer_updates import (
    ATTENDED,
    CANCELLED,
    DNA,
    FHIR_FORMAT,
    ContractOptions,
    activity_fields,
    session_fields,
)
from caldicott.policy.referrer_updates import (
    REASONS as POLICY_REASONS,
)
from caldicott.records import schema
from caldicott.records.checks import REASONS, contact_problems
from caldicott.records.nhs_numbers import valid_mask
from caldicott.records.queries import read
from caldicott.state.quarantine import Quarantined

LONDON = "Europe/London"

#: Columns read per session (join of care_contact, referral and the patient's NHS number).
SESSION_COLUMNS = ("care_contact_id", "service_request_id", "contact_at", "duration_minutes", "app_type",
                   "attend_code", "cons_mechanism", "clinical_summary", "referrer_org_code", "received_date",
                   "local_patient_id", "nhs_number", "nhs_holders", "contact_holders")
#: load_sessions' marker column: None, or the record type ("care_contact" / "referral") holding an unreadable value
UNREADABLE = "_unreadable"


def london_bounds(first: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Naive UTC instants of London midnight at ``first`` and ``end`` (the half-open interval's bounds)."""
    def utc(day: dt.date) -> dt.datetime:
        return pd.Timestamp(day).tz_localize(LONDON).tz_convert("UTC").tz_localize(None).to_pydatetime()

    return utc(first), utc(end)


def contract_options(row: object) -> ContractOptions:
    """The policy-relevant options of one ``contract`` row (a mapping or a namedtuple-like row)."""
    def get(key: str, default: object = None) -> Any:
        return row.get(key, default) if hasattr(row, "get") else getattr(row, key, default)

    return ContractOptions(
        contract_id=str(get("contract_id")),
        referrer_ods=str(get("referrer_org_code")),
        transport=str(get("transport") or ""),
        file_format=str(get("file_format") or "csv-v1"),
        include_summaries=bool(get("include_summaries")),
        include_activity=bool(get("include_activity", True)),
        encrypt=bool(get("certificate_pem")),
    )


def active_contracts(records: Engine) -> pd.DataFrame:
    t = schema.contract
    return read(records, select(t).where(t.c.active.is_(True)).order_by(t.c.contract_id))


def known_organisations(records: Engine) -> set[str]:
    t = schema.organisation
    with records.connect() as conn:
        return set(conn.execute(select(t.c.ods_code)).scalars())


def organisation_country(records: Engine, ods_code: str) -> str:
    """The country (ISO 3166-1 alpha-2, as the source holds it) the organisation ``ods_code`` processes data in; ''
    when the organisation is unknown or states none, which the release gateway refuses (fail closed)."""
    t = schema.organisation
    with records.connect() as conn:
        value = conn.execute(select(t.c.country).where(t.c.ods_code == ods_code)).scalar()
    return str(value or "").strip().upper()


def load_sessions(records: Engine, start_utc: dt.datetime, end_utc: dt.datetime,
                  referrer_ods: str | None = None) -> pd.DataFrame:
    """Sessions in ``[start_utc, end_utc)`` with their referral's referrer and the patient's NHS number.

    With ``referrer_ods``, only sessions of referrals that organisation made (the query filters; rows of
    other referrers are never read into the contract's task).
    """
    c, r, p = schema.care_contact, schema.referral, schema.patient
    same = p.alias("same_number")
    # how many local patients hold this NHS number (ix_patient_nhs_number): more than one is ambiguous
    holders = (select(func.count()).select_from(same).where(same.c.nhs_number == p.c.nhs_number)
               .scalar_subquery().label("nhs_holders"))
    # how many care contact rows carry this care contact id (a source without the key allows several: they may
    # belong to different referrals, even different referrers' patients, so none of them can be sent)
    twin = c.alias("same_contact")
    contact_holders = (select(func.count()).select_from(twin).where(twin.c.care_contact_id == c.c.care_contact_id)
                       .scalar_subquery().label("contact_holders"))
    q = (select(c.c.care_contact_id, c.c.service_request_id, c.c.contact_at, c.c.duration_minutes, c.c.app_type,
                c.c.attend_code, c.c.cons_mechanism, c.c.clinical_summary, r.c.referrer_org_code,
                r.c.received_date, r.c.local_patient_id, p.c.nhs_number, holders, contact_holders)
         .select_from(c.join(r, c.c.service_request_id == r.c.service_request_id)
                      .outerjoin(p, r.c.local_patient_id == p.c.local_patient_id))
         .where(c.c.contact_at >= start_utc, c.c.contact_at < end_utc))
    if referrer_ods is not None:
        # drive from the referrer's referrals (IN subquery): SQLite otherwise walks every session of the day
        # through the contact_at index for each contract (40x slower at 20,000 sessions a day)
        mine = select(r.c.service_request_id).where(r.c.referrer_org_code == referrer_ods)
        q = q.where(r.c.referrer_org_code == referrer_ods, c.c.service_request_id.in_(mine))
    unreadable: dict[str, str] = {}

    def note(row: dict[str, Any], cols: list[str]) -> None:
        # a referral date that cannot be read is the referral's fault; anything else the session's
        unreadable[str(row["care_contact_id"])] = "referral" if "received_date" in cols else "care_contact"

    df = read(records, q.order_by(c.c.contact_at, c.c.care_contact_id), note)
    if df.empty:
        df = pd.DataFrame({col: pd.Series(dtype=object) for col in SESSION_COLUMNS})
    # which rows held a value their column's type cannot (SQLite): screen() quarantines them
    df[UNREADABLE] = df["care_contact_id"].astype(str).map(unreadable) if unreadable else None
    return df


def screen(sessions: pd.DataFrame, known_orgs: set[str] | None = None) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Split sessions into usable rows and quarantined records (invariant 4).

    * ``unknown_referrer``: the referral names an organisation the service does not know (the referral
      is quarantined; its sessions go to no one);
    * ``contact_before_referral``: the session is dated before its referral was received;
    * ``invalid_nhs_number``: the patient's NHS number is missing or fails its check digit, so the
      referrer could not match the update to the right patient (the patient is quarantined);
    * ``duplicate_nhs_number``: the number is held by more than one local patient anywhere in the source
      (the referrer would file the session against whichever patient it knows: quarantined);
    * ``duplicate_care_contact_id``: the care contact id is on more than one row (in these rows or anywhere in
      the source): the referrer keys updates on it, so the rows could overwrite each other's patient. Every such
      row is held back: the care contact and each referral carrying it are quarantined (the data set rejects the
      group the same way, IDS20143);
    * ``unreadable_value``: a stored value its column's type cannot hold (SQLite source; see
      :func:`caldicott.records.queries.read`): the session, or the referral if its date is the bad one.
    """
    if sessions.empty:
        return sessions, []
    out: list[Quarantined] = []
    drop = np.zeros(len(sessions), dtype=bool)
    if UNREADABLE in sessions:
        marked = sessions[UNREADABLE].notna().to_numpy()
        seen: set[tuple[str, str]] = set()
        for kind, cid, rid in zip(sessions.loc[marked, UNREADABLE], sessions.loc[marked, "care_contact_id"],
                                  sessions.loc[marked, "service_request_id"], strict=True):
            key = (kind, str(rid if kind == "referral" else cid))
            if key not in seen:
                seen.add(key)
                out.append(Quarantined(*key, "unreadable_value", REASONS["unreadable_value"]))
        drop |= marked
    contact = sessions["care_contact_id"].astype(str)
    twins = contact.duplicated(keep=False).to_numpy().copy()
    if "contact_holders" in sessions:
        twins |= (pd.to_numeric(sessions["contact_holders"], errors="coerce").fillna(0) > 1).to_numpy()
    twins &= ~drop
    if twins.any():
        reason = POLICY_REASONS["duplicate_care_contact_id"]
        out += [Quarantined("care_contact", str(cid), "duplicate_care_contact_id", reason)
                for cid in pd.unique(contact[twins])]
        out += [Quarantined("referral", str(rid), "duplicate_care_contact_id", reason)
                for rid in pd.unique(sessions.loc[twins, "service_request_id"])]
        drop |= twins
    if known_orgs is not None:
        org = sessions["referrer_org_code"]
        unknown = (org.notna() & ~org.isin(known_orgs)).to_numpy()
        for rid in pd.unique(sessions.loc[unknown, "service_request_id"]):
            out.append(Quarantined("referral", str(rid), "unknown_referrer", REASONS["unknown_referrer"]))
        drop |= unknown
    referrals = sessions[["service_request_id", "received_date"]].drop_duplicates("service_request_id")
    early = contact_problems(sessions[["care_contact_id", "service_request_id", "contact_at"]], referrals)
    out += early
    drop |= sessions["care_contact_id"].isin({q.record_id for q in early}).to_numpy()
    bad_nhs = ~valid_mask(sessions["nhs_number"])
    bad_nhs &= ~drop
    for pid in pd.unique(sessions.loc[bad_nhs, "local_patient_id"]):
        out.append(Quarantined("patient", str(pid), "invalid_nhs_number", REASONS["invalid_nhs_number"]))
    drop |= bad_nhs
    if "nhs_holders" in sessions:
        shared = (pd.to_numeric(sessions["nhs_holders"], errors="coerce").fillna(0) > 1).to_numpy() & ~drop
        for pid in pd.unique(sessions.loc[shared, "local_patient_id"]):
            out.append(Quarantined("patient", str(pid), "duplicate_nhs_number", REASONS["duplicate_nhs_number"]))
        drop |= shared
    return sessions.loc[~drop].reset_index(drop=True), out


def _local(contact_at: pd.Series) -> pd.Series:
    return pd.to_datetime(contact_at).dt.tz_localize("UTC").dt.tz_convert(LONDON)


def _write_csv(header: tuple[str, ...], columns: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    w.writerows(zip(*columns, strict=True))
    return buf.getvalue().encode("utf-8")


def _text(s: pd.Series) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)
            for v in s.astype(object)]


def sessions_csv(options: ContractOptions, rows: pd.DataFrame) -> bytes:
    """The csv-v1 session file for one contract: header, then one row per session (CRLF, UTF-8).

    Columns come only from :func:`~caldicott.policy.referrer_updates.session_fields` for the contract;
    a column not in that list is never read from ``rows``.
    """
    fields = session_fields(options)
    local = _local(rows["contact_at"]) if len(rows) else pd.Series(dtype="datetime64[ns, Europe/London]")
    n = len(rows)
    available: dict[str, list[str] | Callable[[], list[str]]] = {   # a column is built only when asked for
        "contract_id": [options.contract_id] * n,
        "referrer_ods": [options.referrer_ods] * n,
        "provider_referral_id": lambda: _text(rows["service_request_id"]),
        "nhs_number": lambda: _text(rows["nhs_number"]),
        "care_contact_id": lambda: _text(rows["care_contact_id"]),
        "contact_date": lambda: list(local.dt.strftime("%Y-%m-%d")) if n else [],
        "contact_time": lambda: list(local.dt.strftime("%H:%M")) if n else [],
        "duration_minutes": lambda: _text(rows["duration_minutes"].astype("Int64")) if n else [],
        "appointment_type": lambda: _text(rows["app_type"]),
        "attendance": lambda: _text(rows["attend_code"]),
        "consultation_mechanism": lambda: _text(rows["cons_mechanism"]),
        "clinical_summary": lambda: _text(rows["clinical_summary"]),
    }
    columns = [v() if callable(v) else v for v in (available[f] for f in fields)]
    return _write_csv(fields, columns)


def sessions_file(options: ContractOptions, rows: pd.DataFrame, period: str) -> bytes:
    """The session file in the contract's format: ``csv-v1`` or ``fhir-r4-v1`` (ValueError for any other)."""
    if options.file_format == FHIR_FORMAT:
        from caldicott.updates.fhir import sessions_bundle

        return sessions_bundle(options, rows, period)
    return sessions_csv(options, rows)


def activity_csv(options: ContractOptions, month: str, rows: pd.DataFrame) -> bytes:
    """The monthly activity file (activity-csv-v1): one row per referral with sessions in the month."""
    fields = activity_fields(options)
    if not fields:
        raise ValueError(f"contract {options.contract_id} does not receive activity files")
    if rows.empty:
        return _write_csv(fields, [[] for _ in fields])
    local = _local(rows["contact_at"])
    code = rows["attend_code"].astype(str)
    df = pd.DataFrame({
        "provider_referral_id": rows["service_request_id"].astype(str),
        "nhs_number": rows["nhs_number"],
        "attended": code.isin(ATTENDED).astype(int),
        "dna": code.isin(DNA).astype(int),
        "cancelled": code.isin(CANCELLED).astype(int),
        "minutes": pd.to_numeric(rows["duration_minutes"], errors="coerce").fillna(0).astype(int)
        * code.isin(ATTENDED).astype(int),
        "day": local.dt.strftime("%Y-%m-%d"),
    })
    g = df.groupby("provider_referral_id", sort=True).agg(
        nhs_number=("nhs_number", "first"), sessions_attended=("attended", "sum"), sessions_dna=("dna", "sum"),
        sessions_cancelled=("cancelled", "sum"), minutes_attended=("minutes", "sum"),
        first_contact_date=("day", "min"), last_contact_date=("day", "max")).reset_index()
    n = len(g)
    available = {
        "contract_id": [options.contract_id] * n,
        "referrer_ods": [options.referrer_ods] * n,
        "month": [month] * n,
        **{c: _text(g[c]) for c in g.columns},
    }
    return _write_csv(fields, [available[f] for f in fields])


def month_bounds(first_of_month: dt.date) -> tuple[dt.date, dt.date]:
    nxt = (first_of_month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first_of_month, nxt


def activity_month_for(first: dt.date, end: dt.date) -> dt.date | None:
    """The month whose activity a daily run ``[first, end)`` produces: the month its last day ends, if any."""
    last = end - dt.timedelta(days=1)
    if (last + dt.timedelta(days=1)).day == 1:
        return last.replace(day=1)
    return None
