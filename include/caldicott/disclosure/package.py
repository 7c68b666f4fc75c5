"""The minimum-necessary package for one disclosure request, and its encryption at rest.

:func:`build_package` reads the records source and returns a :class:`Package`: one CSV per category that
is both asked for and allowed for the request type (:mod:`caldicott.policy.disclosure`), limited to the
request's date range, plus ``manifest.json`` saying what is in it, what was withheld and which rules were
applied. Each category has a fixed field list below: nothing else from the record can slip in.

A research extract (``deidentify``) carries no names, addresses, postcodes, NHS numbers or birth dates:
patients and referrals get pseudonymous ids (HMAC-SHA256 with a key held outside the code, so ids are
stable for the partner across extracts but cannot be reversed or recomputed without the key), ages are
5/10-year bands at referral, dates become months, and free text never goes. Its cohort is filtered
through the national data opt-out: ``opted_out`` is either the set of opted-out NHS numbers or a callable
that takes the cohort's NHS numbers and returns those who opted out (the NDOP check of issue 5). A patient
whose NHS number is missing cannot be checked, so is left out too.

:func:`seal` encrypts the zipped package to the requester's certificate (CMS, AES-256): the package is
kept in the state database only in that form, and those are the exact bytes the approval binds to.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TypedDict

import pandas as pd
from sqlalchemy import Engine, and_, or_, select

from caldicott.disclosure.request import DisclosureRequest
from caldicott.policy.disclosure import LEGAL_BASIS_TEXT, Category, LegalBasis, policy_for, split_categories
from caldicott.records import schema
from caldicott.records.nhs_numbers import valid_mask
from caldicott.records.queries import read

OptOuts = Collection[str] | Callable[[list[str]], Collection[str]]

#: Tool names for the coded assessments (instead of bare SNOMED codes, for the reader).
TOOL_NAMES = {v: k for k, v in schema.SNOMED.items()}

AGE_BANDS = ((0, 17, "under 18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"), (45, 54, "45-54"),
             (55, 64, "55-64"), (65, 74, "65-74"), (75, 200, "75+"))


class PackageError(ValueError):
    """The package cannot be built (patient unknown, no opt-out source, no key). No patient data in the text."""


class PackageContents(TypedDict):
    """A package's counts and names (:meth:`Package.summary`): safe for XCom and the approval page."""

    disclosure_id: str
    request_type: str
    categories: list[str]
    withheld: list[str]             # categories left out, by name
    date_from: str
    date_to: str
    deidentified: bool
    record_counts: dict[str, int]   # file -> records
    ndop: dict[str, int] | None     # national data opt-out counts, when it applies


class Manifest(TypedDict):
    """``manifest.json`` in the package (:meth:`Package.manifest`): what it holds, what was withheld and why."""

    disclosure_id: str
    request_type: str
    categories: list[str]
    withheld: dict[str, str]        # category -> why it was withheld
    date_from: str
    date_to: str
    deidentified: bool
    record_counts: dict[str, int]
    national_data_opt_out: dict[str, int] | None
    rules_applied: list[str]


@dataclass
class Package:
    disclosure_id: str
    request_type: str
    categories: list[str]
    withheld: dict[str, str]
    date_from: str
    date_to: str
    deidentified: bool
    counts: dict[str, int] = field(default_factory=dict)
    ndop: dict[str, int] | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    def manifest(self) -> Manifest:
        pol = policy_for(self.request_type)
        rules = [f"minimum necessary for a {self.request_type} request (caldicott.policy.disclosure: {pol.why})",
                 f"date range {self.date_from} to {self.date_to} inclusive"]
        if self.deidentified:
            rules.append("de-identified: pseudonymous ids by keyed hash, age bands, months not dates, no free text")
        if self.ndop is not None:
            rules.append("national data opt-out applied; patients without an NHS number left out")
        return {"disclosure_id": self.disclosure_id, "request_type": self.request_type,
                "categories": self.categories, "withheld": self.withheld, "date_from": self.date_from,
                "date_to": self.date_to, "deidentified": self.deidentified, "record_counts": self.counts,
                "national_data_opt_out": self.ndop, "rules_applied": rules}

    def to_zip(self) -> bytes:
        """The package as a zip, byte-for-byte deterministic for the same content."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            entries = {"manifest.json": json.dumps(self.manifest(), indent=2, sort_keys=True).encode(), **self.files}
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, entries[name])
        return buf.getvalue()

    def summary(self) -> PackageContents:
        """Counts and names only: safe for XCom and the approval request."""
        return {"disclosure_id": self.disclosure_id, "request_type": self.request_type,
                "categories": self.categories, "withheld": sorted(self.withheld), "date_from": self.date_from,
                "date_to": self.date_to, "deidentified": self.deidentified, "record_counts": self.counts,
                "ndop": self.ndop}


def age_band(birth: dt.date | None, on: dt.date) -> str:
    if birth is None or pd.isna(birth):
        return "unknown"
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return next((label for lo, hi, label in AGE_BANDS if lo <= age <= hi), "unknown")


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """A stable, irreversible id for ``value`` under ``key`` (HMAC-SHA256, 16 hex characters)."""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, lineterminator="\n").encode()


def _instant_bounds(req: DisclosureRequest) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(req.date_from, dt.time())
    return start, dt.datetime.combine(req.date_to + dt.timedelta(days=1), dt.time())


def _referrals(engine: Engine, req: DisclosureRequest, patient_ids: list[str] | None) -> pd.DataFrame:
    """Referrals open at any time in the range (identified) or received in it (research cohort)."""
    r = schema.referral
    if patient_ids is None:
        cond = and_(r.c.received_date >= req.date_from, r.c.received_date <= req.date_to)
    else:
        cond = and_(r.c.local_patient_id.in_(patient_ids), r.c.received_date <= req.date_to,
                    or_(r.c.discharge_date.is_(None), r.c.discharge_date >= req.date_from))
    return read(engine, select(r).where(cond).order_by(r.c.received_date, r.c.service_request_id))


def _contacts(engine: Engine, req: DisclosureRequest, referral_ids: list[str]) -> pd.DataFrame:
    c = schema.care_contact
    start, end = _instant_bounds(req)
    frames = [read(engine, select(c).where(c.c.service_request_id.in_(referral_ids[i:i + 900]),
                                           c.c.contact_at >= start, c.c.contact_at < end))
              for i in range(0, max(len(referral_ids), 1), 900)]
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["contact_at", "care_contact_id"]).reset_index(drop=True) if len(df) else df


def _assessments(engine: Engine, req: DisclosureRequest, referral_ids: list[str]) -> pd.DataFrame:
    a = schema.coded_assessment
    start, end = _instant_bounds(req)
    frames = [read(engine, select(a).where(a.c.service_request_id.in_(referral_ids[i:i + 900]),
                                           a.c.assessed_at >= start, a.c.assessed_at < end))
              for i in range(0, max(len(referral_ids), 1), 900)]
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["assessed_at", "assessment_id"]).reset_index(drop=True) if len(df) else df


def _opted_out(opted_out: OptOuts, numbers: list[str]) -> set[str]:
    if callable(opted_out):
        return set(opted_out(numbers))
    return set(opted_out) & set(numbers)


def build_package(records: Engine, req: DisclosureRequest, *, opted_out: OptOuts | None = None,
                  pseudonym_key: bytes | None = None) -> Package:
    """The minimum-necessary package for ``req`` (see the module docstring)."""
    pol = policy_for(req.request_type)
    include, withheld = split_categories(req.request_type, list(req.categories))
    pkg = Package(req.disclosure_id, req.request_type, [c.value for c in include], withheld,
                  req.date_from.isoformat(), req.date_to.isoformat(), pol.deidentify)
    if pol.deidentify:
        _build_deidentified(records, req, pkg, include, opted_out, pseudonym_key)
    else:
        _build_identified(records, req, pkg, include)
    return pkg


def _build_identified(records: Engine, req: DisclosureRequest, pkg: Package, include: list[Category]) -> None:
    p = schema.patient
    pat = read(records, select(p).where(p.c.local_patient_id == req.local_patient_id))
    if pat.empty:
        raise PackageError("no patient with the requested local id in the records source")
    refs = _referrals(records, req, [req.local_patient_id])
    ref_ids = refs["service_request_id"].tolist()
    out: dict[Category, pd.DataFrame] = {}
    if Category.DEMOGRAPHICS in include:
        out[Category.DEMOGRAPHICS] = pat[["local_patient_id", "nhs_number", "given_name", "family_name",
                                          "birth_date", "address_line", "postcode", "gender"]]
    if Category.GP_DETAILS in include:
        code = pat.iloc[0]["gp_practice_code"]
        g = schema.gp_practice
        out[Category.GP_DETAILS] = read(records, select(g.c.ods_code, g.c.name).where(g.c.ods_code == code))
    if Category.REFERRALS in include:
        out[Category.REFERRALS] = refs[["service_request_id", "received_date", "source_of_referral",
                                        "presenting_problem", "discharge_date", "end_code"]]
    if Category.CARE_PLANS in include:
        out[Category.CARE_PLANS] = refs[["service_request_id", "assessment_plan", "discharge_recommendations"]]
    if include and {Category.APPOINTMENTS, Category.CLINICAL_NOTES} & set(include):
        cc = _contacts(records, req, ref_ids) if ref_ids else pd.DataFrame(
            columns=[c.name for c in schema.care_contact.c])
        if Category.APPOINTMENTS in include:
            out[Category.APPOINTMENTS] = cc[["care_contact_id", "service_request_id", "contact_at",
                                             "duration_minutes", "app_type", "attend_code", "cons_mechanism"]]
        if Category.CLINICAL_NOTES in include:
            out[Category.CLINICAL_NOTES] = cc[["care_contact_id", "contact_at", "clinical_summary"]]
    if Category.OUTCOME_SCORES in include:
        ca = _assessments(records, req, ref_ids) if ref_ids else pd.DataFrame(
            columns=[c.name for c in schema.coded_assessment.c])
        ca = ca.assign(tool=ca["tool_code"].map(TOOL_NAMES))
        out[Category.OUTCOME_SCORES] = ca[["assessment_id", "service_request_id", "tool", "tool_code", "score",
                                           "assessed_at"]]
    for cat, df in out.items():
        pkg.files[f"{cat.value}.csv"] = _csv(df)
        pkg.counts[cat.value] = len(df)


def _build_deidentified(records: Engine, req: DisclosureRequest, pkg: Package, include: list[Category],
                        opted_out: OptOuts | None, key: bytes | None) -> None:
    if opted_out is None:
        raise PackageError("a research extract needs the national data opt-out: no opt-out source given")
    if not key or len(key) < 16:
        raise PackageError("a research extract needs a pseudonymisation key of at least 16 bytes")
    refs = _referrals(records, req, None)
    p = schema.patient
    ids = sorted(set(refs["local_patient_id"]))
    frames = [read(records, select(p.c.local_patient_id, p.c.nhs_number, p.c.birth_date, p.c.gender,
                                   p.c.ethnic_category).where(p.c.local_patient_id.in_(ids[i:i + 900])))
              for i in range(0, max(len(ids), 1), 900)]
    pats = pd.concat(frames, ignore_index=True)
    checkable = pats[valid_mask(pats["nhs_number"])]
    out_numbers = _opted_out(opted_out, sorted(set(checkable["nhs_number"])))
    keep = checkable[~checkable["nhs_number"].isin(out_numbers)]
    pkg.ndop = {"cohort_patients": len(pats), "no_valid_nhs_number": len(pats) - len(checkable),
                "opted_out": int(checkable["nhs_number"].isin(out_numbers).sum()), "included_patients": len(keep)}
    keep_ids = set(keep["local_patient_id"])
    refs = refs[refs["local_patient_id"].isin(keep_ids)].reset_index(drop=True)
    ref_ids = refs["service_request_id"].tolist()

    def pid(v: str) -> str:
        return pseudonym(key, "patient", v)

    def rid(v: str) -> str:
        return pseudonym(key, "referral", v)

    def month(v: dt.date | dt.datetime | str | None) -> str | None:
        return None if v is None or pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m")

    out: dict[Category, pd.DataFrame] = {}
    if Category.DEMOGRAPHICS in include:
        first_ref = refs.groupby("local_patient_id")["received_date"].min()
        d = keep[keep["local_patient_id"].isin(first_ref.index)].sort_values("local_patient_id")
        out[Category.DEMOGRAPHICS] = pd.DataFrame({
            "pseudo_patient_id": d["local_patient_id"].map(pid),
            "age_band_at_referral": [age_band(b, first_ref[i]) for i, b in zip(d["local_patient_id"], d["birth_date"],
                                                                              strict=True)],
            "gender": d["gender"], "ethnic_category": d["ethnic_category"]}).sort_values("pseudo_patient_id")
    if Category.REFERRALS in include:
        out[Category.REFERRALS] = pd.DataFrame({
            "pseudo_referral_id": refs["service_request_id"].map(rid),
            "pseudo_patient_id": refs["local_patient_id"].map(pid),
            "received_month": refs["received_date"].map(month), "source_of_referral": refs["source_of_referral"],
            "presenting_problem_code": refs["presenting_problem_code"],
            "discharge_month": refs["discharge_date"].map(month), "end_code": refs["end_code"]})
    if Category.APPOINTMENTS in include:
        cc = _contacts(records, req, ref_ids) if ref_ids else pd.DataFrame(
            columns=[c.name for c in schema.care_contact.c])
        out[Category.APPOINTMENTS] = pd.DataFrame({
            "pseudo_referral_id": cc["service_request_id"].map(rid), "contact_month": cc["contact_at"].map(month),
            "app_type": cc["app_type"], "attend_code": cc["attend_code"], "cons_mechanism": cc["cons_mechanism"],
            "therapy_type": cc["therapy_type"]})
    if Category.OUTCOME_SCORES in include:
        ca = _assessments(records, req, ref_ids) if ref_ids else pd.DataFrame(
            columns=[c.name for c in schema.coded_assessment.c])
        ca = ca.assign(seq=ca.groupby(["service_request_id", "tool_code"]).cumcount() + 1) if len(ca) else \
            ca.assign(seq=[])
        out[Category.OUTCOME_SCORES] = pd.DataFrame({
            "pseudo_referral_id": ca["service_request_id"].map(rid), "tool": ca["tool_code"].map(TOOL_NAMES),
            "sequence": ca["seq"], "score": ca["score"], "assessed_month": ca["assessed_at"].map(month)})
    for cat, df in out.items():
        pkg.files[f"{cat.value}.csv"] = _csv(df)
        pkg.counts[cat.value] = len(df)


def seal(plaintext: bytes, certificate_pem: str | bytes) -> bytes:
    """The package encrypted to the requester's certificate (CMS EnvelopedData, DER, AES-256)."""
    from caldicott.crypto.cms import encrypt_file

    return encrypt_file(plaintext, certificate_pem)


def legal_basis_text(basis: str) -> str:
    return LEGAL_BASIS_TEXT[LegalBasis(basis)]


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



def ndop_from_cache(state: Engine, cache_key: bytes | None) -> Callable[[list[str]], set[str]]:
    """Opt-outs from the time-limited NDOP cache (:mod:`caldicott.policy.ndop_cache`, filled by the opt-out check).

    Every cohort number must have a current answer: if any has none, the extract is not built (the check is
    run first, over MESH, and answers within about an hour); the opt-out is never assumed. ``cache_key`` is the
    deployment's secret the cache is keyed with: without it this refuses at once
    (:class:`~caldicott.policy.ndop.NdopKeyMissing`), before anything is built.
    """
    from caldicott.policy.ndop_check import NdopChecker

    checker = NdopChecker(state, cache_key)   # reads the cache only (no transport)

    def lookup(numbers: list[str]) -> set[str]:
        status = checker.status(numbers)
        if not status.complete:
            raise PackageError(f"national data opt-out: {status.pending} of {len(set(numbers))} cohort NHS numbers "
                               "have no current check; run the opt-out check for the cohort first")
        return set(status.opted_out)

    return lookup
