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
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from caldicott.letters.gp_connect import NHS_NUMBER, ODS
from caldicott.policy.referrer_updates import FHIR_FORMAT, ContractOptions, session_fields

#: Where the service's own FHIR namespace comes from: the base URL under which its identifier systems and IAPT code
#: systems live (no national FHIR ones exist for IAPT codes). Part of the format agreed with referrers. There is no
#: default: without it the format refuses to build (fail closed) rather than publish a placeholder.
NAMESPACE_ENV = "CALDICOTT_FHIR_NAMESPACE"
UUIDS = uuid.UUID("2d6f3b1e-6c1a-4d1e-9a57-0f3c7c1b8e42")

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
SNOMED = "http://snomed.info/sct"
#: UK Core (HL7 UK / NHS England, FHIR R4) profiles the resources conform to and claim in ``meta.profile``.
UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/"
PROFILES = {"Bundle": UK_CORE + "UKCore-Bundle", "ServiceRequest": UK_CORE + "UKCore-ServiceRequest",
            "Encounter": UK_CORE + "UKCore-Encounter", "DocumentReference": UK_CORE + "UKCore-DocumentReference"}


class NamespaceNotConfigured(ValueError):
    """The service's FHIR namespace is not configured: fhir-r4-v1 files are not built (held, never guessed)."""


@dataclass(frozen=True)
class Systems:
    """The identifier and code systems of fhir-r4-v1, under the service's configured namespace."""

    namespace: str

    @property
    def format_tag(self) -> str:
        return f"{self.namespace}/CodeSystem/referrer-update-format"

    @property
    def care_contact_id(self) -> str:
        return f"{self.namespace}/Id/iapt-care-contact-id"

    @property
    def referral_id(self) -> str:
        return f"{self.namespace}/Id/iapt-service-request-id"

    @property
    def attendance_extension(self) -> str:
        return f"{self.namespace}/StructureDefinition/Extension-IAPT-AttendOrDNA"

    @property
    def attendance(self) -> str:
        return f"{self.namespace}/CodeSystem/iapt-attend-or-dna"

    @property
    def appointment_type(self) -> str:
        return f"{self.namespace}/CodeSystem/iapt-appointment-type"

    @property
    def mechanism(self) -> str:
        return f"{self.namespace}/CodeSystem/iapt-consultation-mechanism"


def systems(namespace: str | None = None) -> Systems:
    """The systems under ``namespace`` (default: ``$CALDICOTT_FHIR_NAMESPACE``); NamespaceNotConfigured if none.

    The namespace must be an absolute ``https://`` URL without query or fragment (identifier and code systems are
    URIs the referrer's system keys on)."""
    ns = (namespace if namespace is not None else os.environ.get(NAMESPACE_ENV, "")).strip().rstrip("/")
    if not ns:
        raise NamespaceNotConfigured(
            f"{FHIR_FORMAT}: the service's FHIR namespace is not configured (set {NAMESPACE_ENV} to the base URL "
            "agreed with referrers, e.g. https://fhir.<your-trust>.nhs.uk); no file is built without it")
    if not ns.startswith("https://") or any(c in ns for c in "?# ") or len(ns) <= len("https://"):
        raise NamespaceNotConfigured(f"{FHIR_FORMAT}: {NAMESPACE_ENV} must be an https:// base URL")
    return Systems(ns)


#: IAPT AttendOrDNACode -> (NHS Data Dictionary "ATTENDED OR DID NOT ATTEND" display, Encounter.status). The IAPT
#: v2.0/v2.1 value set (rule IDS20128) is 2..7.
ATTENDANCE: dict[str, tuple[str, str]] = {
    "5": ("Attended on time or, if late, before the relevant care professional was ready to see the patient",
          "finished"),
    "6": ("Arrived late, after the relevant care professional was ready to see the patient, but was seen",
          "finished"),
    "7": ("Patient arrived late and could not be seen", "cancelled"),
    "2": ("Appointment cancelled by, or on behalf of, the patient", "cancelled"),
    "3": ("Did not attend - no advance warning given", "cancelled"),
    "4": ("Appointment cancelled or postponed by the health care provider", "cancelled"),
}
#: IAPT AppType (NHS Data Dictionary "APPOINTMENT TYPE (IMPROVING ACCESS TO PSYCHOLOGICAL THERAPIES)"; rule
#: IDS20156 permits 01..08). Codes whose display could not be checked against the Data Dictionary carry none
#: (``display`` is optional in FHIR; a wrong one is worse than none).
APPOINTMENT_TYPES = {"01": "Assessment", "02": "Treatment", "03": "Assessment and treatment",
                     "04": "Review without treatment", "05": "Review and treatment"}
#: IAPT v2.1 ConsMechanism (NHS Data Dictionary "CONSULTATION MECHANISM (MENTAL HEALTH)") -> (display, v3 ActCode
#: for Encounter.class). 06 (SMS) and 03 (telemedicine web camera) are v2.0 ConsMediumUsed codes retired in v2.1;
#: records that still hold them keep their old display.
MECHANISMS = {
    "01": ("Face to face", "AMB"),
    "02": ("Telephone", "VR"),
    "03": ("Telemedicine web camera", "VR"),
    "04": ("Talk type for a person unable to speak", "VR"),
    "05": ("Email", "VR"),
    "06": ("Short Message Service (SMS) - Text Messaging", "VR"),
    "09": ("Text Message (Asynchronous)", "VR"),
    "10": ("Instant messaging (Synchronous)", "VR"),
    "11": ("Video consultation", "VR"),
    "12": ("Message Board (Asynchronous)", "VR"),
    "13": ("Chat Room (Synchronous)", "VR"),
    "98": ("Other", None),
}
CLASS_DISPLAY = {"AMB": "ambulatory", "VR": "virtual"}

#: A FHIR resource (or any JSON object in one), as ``json`` reads and writes it.
Resource = dict[str, Any]


def _uid(kind: str, key: str) -> str:
    return str(uuid.uuid5(UUIDS, f"{kind}/{key}"))


def _text(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    text = str(value)
    return text or None


def _coding(system: str, code: str | None, names: Mapping[str, str | tuple[str, str | None]]) -> Resource | None:
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


def _patient(nhs: str) -> Resource:
    return {"type": "Patient", "identifier": {"system": NHS_NUMBER, "value": nhs}}


def _drop_empty(resource: Resource) -> Resource:
    """FHIR JSON has no nulls and no empty arrays / objects."""
    return {k: v for k, v in resource.items() if v not in (None, [], {})}


def _meta(kind: str) -> Resource:
    return {"profile": [PROFILES[kind]]}


def sessions_bundle(options: ContractOptions, rows: pd.DataFrame, period: str, *, namespace: str | None = None
                    ) -> bytes:
    """The ``fhir-r4-v1`` file for one contract and period, as UTF-8 JSON bytes (deterministic).

    ``namespace`` defaults to ``$CALDICOTT_FHIR_NAMESPACE``; NamespaceNotConfigured without one."""
    fields = set(session_fields(options))
    if options.file_format != FHIR_FORMAT:
        raise ValueError(f"contract {options.contract_id}: not a {FHIR_FORMAT} contract")
    sy = systems(namespace)
    summaries = "clinical_summary" in fields
    entries: list[Resource] = []
    referrals: dict[str, Resource] = {}
    sessions: list[Resource] = []
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
                    "meta": _meta("ServiceRequest"),
                    "identifier": [{"system": sy.referral_id, "value": rid}],
                    "status": "unknown", "intent": "order", "subject": _patient(nhs),
                    "requester": {"type": "Organization", "identifier": {"system": ODS,
                                                                          "value": options.referrer_ods}},
                })
            attend = _text(rec["attend_code"])
            mechanism = _text(rec["cons_mechanism"])
            klass = MECHANISMS.get(mechanism or "", (None, None))[1]
            period_ = {"start": start, "end": end} if end else {"start": start}
            encounter = _drop_empty({
                "resourceType": "Encounter", "id": _uid("Encounter", cid), "meta": _meta("Encounter"),
                "extension": [{"url": sy.attendance_extension, "valueCoding": _coding(sy.attendance, attend,
                                                                                       ATTENDANCE)}]
                if attend is not None else None,
                "identifier": [{"system": sy.care_contact_id, "value": cid}],
                "status": ATTENDANCE.get(attend or "", (None, "unknown"))[1],
                "class": {"system": ACT_CODE, "code": klass, "display": CLASS_DISPLAY[klass]} if klass else
                {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]},
                "type": [{"coding": [c]} for c in (_coding(sy.appointment_type, _text(rec["app_type"]),
                                                           APPOINTMENT_TYPES),
                                                   _coding(sy.mechanism, mechanism, MECHANISMS)) if c],
                "subject": _patient(nhs),
                "basedOn": [{"reference": f"urn:uuid:{referrals[rid]['id']}", "type": "ServiceRequest"}],
                "period": period_,
            })
            sessions.append(encounter)
            note = _text(rec["clinical_summary"]) if summaries else None
            if note is not None:
                sessions.append({
                    "resourceType": "DocumentReference", "id": _uid("DocumentReference", cid),
                    "meta": _meta("DocumentReference"), "status": "current",
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
        "meta": {"profile": [PROFILES["Bundle"]], "tag": [{"system": sy.format_tag, "code": FHIR_FORMAT}]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bundle_id}"},
        "type": "collection", "entry": entries,
    })
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def resources(data: bytes | Resource, kind: str) -> list[Resource]:
    """The resources of one type in a bundle (receiver side; tests)."""
    bundle: Resource = json.loads(data) if isinstance(data, bytes) else data
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def summary_text(document_reference: Resource) -> str:
    """The clinical summary a DocumentReference of this format carries (receiver side; tests)."""
    return base64.b64decode(document_reference["content"][0]["attachment"]["data"]).decode("utf-8")
