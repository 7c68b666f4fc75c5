"""The ``fhir-r4-v1`` session file: a FHIR R4 ``Bundle`` (JSON) of the day's sessions for one contract.

The same rows and the same fields as ``csv-v1``: what a contract may receive is decided by
:func:`caldicott.policy.referrer_updates.session_fields`, and this module reads from the rows only the
columns that list names (so a contract without summaries never has summary text read, let alone written).
The mapping, resource by resource, is in ``docs/referrer_updates.md``:

* one ``ServiceRequest`` per referral with sessions in the file: the referral the referrer made
  (``identifier`` = the service's referral id, ``requester`` = the referrer's ODS code, ``subject`` = the
  NHS number). Its lifecycle is not part of this format, so ``status`` is ``unknown``;
* one ``Encounter`` per session: ``identifier`` = the care contact id, ``subject`` = the NHS number,
  ``basedOn`` = its referral, ``period`` = the booked slot (London offset), ``status`` mapped from the
  IAPT attendance code (the code itself in an extension), ``class`` from the consultation mechanism,
  ``type`` = appointment type and consultation mechanism;
* only where the contract includes summaries: one ``DocumentReference`` per session with a summary,
  ``context.encounter`` = that Encounter, the text as a ``text/plain`` attachment.

Bundle type ``collection``: the file is a set of records for the referrer to import, not instructions to a
FHIR server. ``transaction`` would prescribe what the receiving server must do with each entry (request
method and URL, all-or-nothing) — an interface the referrer's system may not have — while re-imports are
made safe by the stable business identifiers and ids. ``message`` (as GP Connect Send Document uses)
needs a MessageHeader event agreed with the receiver and acknowledgements; there are none here.

Patients and the referrer are *logical* references (``Reference.identifier``: NHS number, ODS code), so no
Patient or Organization resource is built and nothing about the patient beyond the NHS number can leave.
Ids are UUIDs derived from the records' own ids, and the bundle has no timestamp: the same rows give the
same bytes, so a re-run finds the delivered file identical (and the SFTP sender skips it).
"""

from __future__ import annotations

import base64
import json
import uuid

import pandas as pd

from caldicott.letters.gp_connect import NHS_NUMBER, ODS
from caldicott.policy.referrer_updates import FHIR_FORMAT, ContractOptions, session_fields

#: The service's own namespace for the identifiers and code systems below (no national FHIR ones exist for
#: IAPT codes). Part of the format agreed with referrers: changing it is a new format version.
NAMESPACE_URL = "https://fhir.talkingtherapies.nhs.example"
UUIDS = uuid.UUID("2d6f3b1e-6c1a-4d1e-9a57-0f3c7c1b8e42")

FORMAT_TAG = f"{NAMESPACE_URL}/CodeSystem/referrer-update-format"
CARE_CONTACT_ID = f"{NAMESPACE_URL}/Id/iapt-care-contact-id"
REFERRAL_ID = f"{NAMESPACE_URL}/Id/iapt-service-request-id"
ATTENDANCE_EXTENSION = f"{NAMESPACE_URL}/StructureDefinition/Extension-IAPT-AttendOrDNA"
ATTENDANCE_SYSTEM = f"{NAMESPACE_URL}/CodeSystem/iapt-attend-or-dna"
APPOINTMENT_TYPE_SYSTEM = f"{NAMESPACE_URL}/CodeSystem/iapt-appointment-type"
MECHANISM_SYSTEM = f"{NAMESPACE_URL}/CodeSystem/iapt-consultation-mechanism"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
SNOMED = "http://snomed.info/sct"

#: IAPT AttendOrDNACode (NHS Data Dictionary "attended or did not attend") -> (display, Encounter.status).
ATTENDANCE: dict[str, tuple[str, str]] = {
    "5": ("Attended on time or before the professional was ready", "finished"),
    "6": ("Arrived late but was seen", "finished"),
    "7": ("Arrived late and could not be seen", "cancelled"),
    "2": ("Cancelled by, or on behalf of, the patient", "cancelled"),
    "3": ("Did not attend, no advance warning given", "cancelled"),
    "4": ("Cancelled or postponed by the provider", "cancelled"),
}
APPOINTMENT_TYPES = {"01": "Assessment", "02": "Treatment", "03": "Assessment and treatment",
                     "04": "Review and treatment", "05": "Review without treatment", "06": "Enabling",
                     "07": "Discharge"}
#: IAPT ConsMechanism -> (display, v3 ActCode for Encounter.class)
MECHANISMS = {"01": ("Face to face", "AMB"), "02": ("Telephone", "VR"), "04": ("Video consultation", "VR"),
              "05": ("Talk type (text)", "VR"), "06": ("Online", "VR")}
CLASS_DISPLAY = {"AMB": "ambulatory", "VR": "virtual"}


def _uid(kind: str, key: str) -> str:
    return str(uuid.uuid5(UUIDS, f"{kind}/{key}"))


def _text(value) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    text = str(value)
    return text or None


def _coding(system: str, code: str | None, names: dict) -> dict | None:
    if code is None:
        return None
    display = names.get(code)
    display = display[0] if isinstance(display, tuple) else display
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _iso(instants: pd.Series) -> list[str | None]:
    """FHIR dateTimes with the London offset (``2026-07-01T00:30:00+01:00``); None for NaT. Vectorised."""
    text = instants.dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = text.str[:-2] + ":" + text.str[-2:]
    return [t if isinstance(t, str) else None for t in text]


def _patient(nhs: str) -> dict:
    return {"type": "Patient", "identifier": {"system": NHS_NUMBER, "value": nhs}}


def _drop_empty(resource: dict) -> dict:
    """FHIR JSON has no nulls and no empty arrays / objects."""
    return {k: v for k, v in resource.items() if v not in (None, [], {})}


def sessions_bundle(options: ContractOptions, rows: pd.DataFrame, period: str) -> bytes:
    """The ``fhir-r4-v1`` file for one contract and period, as UTF-8 JSON bytes (deterministic)."""
    fields = set(session_fields(options))
    if options.file_format != FHIR_FORMAT:
        raise ValueError(f"contract {options.contract_id}: not a {FHIR_FORMAT} contract")
    summaries = "clinical_summary" in fields
    entries: list[dict] = []
    referrals: dict[str, dict] = {}
    sessions: list[dict] = []
    if len(rows):
        local = pd.to_datetime(rows["contact_at"]).dt.tz_localize("UTC").dt.tz_convert("Europe/London")
        minutes = pd.to_numeric(rows["duration_minutes"], errors="coerce")
        ends = local + pd.to_timedelta(minutes.where(minutes > 0), unit="m")   # NaT without a usable duration
        columns = ["service_request_id", "care_contact_id", "nhs_number", "app_type", "attend_code",
                   "cons_mechanism"] + (["clinical_summary"] if summaries else [])
        for start, end, rec in zip(_iso(local), _iso(ends), rows[columns].to_dict("records"), strict=True):
            rid, cid, nhs = str(rec["service_request_id"]), str(rec["care_contact_id"]), str(rec["nhs_number"])
            if rid not in referrals:
                referrals[rid] = _drop_empty({
                    "resourceType": "ServiceRequest", "id": _uid("ServiceRequest", rid),
                    "identifier": [{"system": REFERRAL_ID, "value": rid}],
                    "status": "unknown", "intent": "order", "subject": _patient(nhs),
                    "requester": {"type": "Organization", "identifier": {"system": ODS,
                                                                          "value": options.referrer_ods}},
                })
            attend = _text(rec["attend_code"])
            mechanism = _text(rec["cons_mechanism"])
            klass = MECHANISMS.get(mechanism or "", (None, None))[1]
            period_ = {"start": start, "end": end} if end else {"start": start}
            encounter = _drop_empty({
                "resourceType": "Encounter", "id": _uid("Encounter", cid),
                "extension": [{"url": ATTENDANCE_EXTENSION, "valueCoding": _coding(ATTENDANCE_SYSTEM, attend,
                                                                                    ATTENDANCE)}]
                if attend is not None else None,
                "identifier": [{"system": CARE_CONTACT_ID, "value": cid}],
                "status": ATTENDANCE.get(attend or "", (None, "unknown"))[1],
                "class": {"system": ACT_CODE, "code": klass, "display": CLASS_DISPLAY[klass]} if klass else
                {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]},
                "type": [{"coding": [c]} for c in (_coding(APPOINTMENT_TYPE_SYSTEM, _text(rec["app_type"]),
                                                           APPOINTMENT_TYPES),
                                                   _coding(MECHANISM_SYSTEM, mechanism, MECHANISMS)) if c],
                "subject": _patient(nhs),
                "basedOn": [{"reference": f"urn:uuid:{referrals[rid]['id']}", "type": "ServiceRequest"}],
                "period": period_,
            })
            sessions.append(encounter)
            note = _text(rec["clinical_summary"]) if summaries else None
            if note is not None:
                sessions.append({
                    "resourceType": "DocumentReference", "id": _uid("DocumentReference", cid), "status": "current",
                    "type": {"coding": [{"system": SNOMED, "code": "371531000",
                                         "display": "Report of clinical encounter"}]},
                    "subject": _patient(nhs),
                    "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                                "data": base64.b64encode(note.encode("utf-8")).decode("ascii")}}],
                    "context": {"encounter": [{"reference": f"urn:uuid:{encounter['id']}"}]},
                })
    for resource in [*referrals.values(), *sessions]:
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    bundle_id = _uid("Bundle", f"{options.contract_id}/sessions/{period}")
    bundle = _drop_empty({
        "resourceType": "Bundle", "id": bundle_id,
        "meta": {"tag": [{"system": FORMAT_TAG, "code": FHIR_FORMAT}]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bundle_id}"},
        "type": "collection", "entry": entries,
    })
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def resources(data: bytes | dict, kind: str) -> list[dict]:
    """The resources of one type in a bundle (receiver side; tests)."""
    bundle = json.loads(data) if isinstance(data, bytes) else data
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def summary_text(document_reference: dict) -> str:
    """The clinical summary a DocumentReference of this format carries (receiver side; tests)."""
    return base64.b64decode(document_reference["content"][0]["attachment"]["data"]).decode("utf-8")
