"""GP Connect Send Document: the FHIR STU3 ITK3 message that carries a letter's PDF to the patient's GP.

Built to the GP Connect Send Document specification, v2 (NHS England, "GP Connect: Send Document";
requirement ids from its Supplier Conformance Assessment List, GPCM-SD-*, and from
https://github.com/nhsconnect/gpconnect-messaging ``_data/senddoc_requirements.yml``). The message is
two nested bundles (GPCM-SD-103/104):

* an ``ITK-Message-Bundle-1`` (``type`` message) holding
  - the ``ITK-MessageHeader-2``: ``ITKMessageHandling`` extension with both acknowledgements requested
    (GPCM-SD-040/041), recipient type ``FA`` (GPCM-SD-039), the Send Document message definition
    (GPCM-SD-043), ``SenderReference`` = the activity's id (GPCM-SD-042) and ``LocalExtension`` ``None``
    (GPCM-SD-044, v2: not used to identify documents); event ``ITK007C`` (GPCM-SD-047); ``sender`` = the
    header Organization (GPCM-SD-045); ``source.endpoint`` = our MESH mailbox (GPCM-SD-046); ``timestamp``
    = when this message was generated (GPCM-SD-048); ``focus`` = the document bundle (GPCM-SD-103); and **no**
    ``destination`` / ``receiver``: MESH routes by NHS number, date of birth and surname (GPCM-SD-049/056);
  - the ``CareConnect-ITK-Header-Organization-1`` (our ODS code);
  - the ``ITK-Document-Bundle-1`` (``type`` document):
    ``CareConnect-Composition-1`` (status ``final``, type SNOMED CT 371531000 "Report of clinical
    encounter", date = generation time, title = the letter's kind, confidentiality ``N``, the summary text of
    GPCM-SD-119/Composition.text, custodian = our Organization, author = the named clinician, one section whose
    first entry is the PDF: GPCM-SD-104..124), ``CareConnect-Organization-1`` (ODS code, name, telephone:
    GPCM-SD-028..031), ``CareConnect-Practitioner-1`` (SDS user id, official name, telephone: GPCM-SD-032..034),
    ``CareConnect-Patient-1`` (NHS number, one official name, birth date ``YYYY-MM-DD``: GPCM-SD-035..037) and
    the ``ITK-Attachment-Binary-1`` holding the PDF, base64 (GPCM-SD-110/111).

Every resource has ``meta.profile`` (GPCM-SD-108). Ids are UUIDs derived from the ledger item id, so a resent
letter carries the same MessageHeader id and the practice's acknowledgements (``MessageHeader.response.
identifier``) map back to the ledger; only the generation timestamps differ between two builds.

The MESH metadata that goes with it (workflow, ``Mex-To``, subject, local id) is :func:`mesh_headers` /
:func:`mesh_address`. :func:`parse_ack` reads the practice's ITK3 Response messages (infrastructure ack 20013,
business ack 30001; negative codes otherwise) on the ``_ACK`` workflow (GPCM-SD-058). Building acks, and reading
the PDF back out of a message, is the receiving practice's side: the stand-in practice in
``devtools/peers/gp_responder.py`` does it, nothing here sends one.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Any

#: MESH workflow ids of Send Document v2 and its acknowledgements (GPCM-SD-057/058; v1's GPFED_CONSULT_REPORT
#: was replaced in 2.0.0).
WORKFLOW = "GPCONNECT_SEND_DOCUMENT"
ACK_WORKFLOW = "GPCONNECT_SEND_DOCUMENT_ACK"
NAMESPACE = uuid.UUID("6f0d6f57-3a53-4c35-9f0d-9a3c2f1c0a11")

STU3 = "https://fhir.nhs.uk/STU3/StructureDefinition/"
CARECONNECT = "https://fhir.hl7.org.uk/STU3/StructureDefinition/"
PROFILES = {
    "message_bundle": STU3 + "ITK-Message-Bundle-1",
    "header": STU3 + "ITK-MessageHeader-2",
    "header_org": STU3 + "CareConnect-ITK-Header-Organization-1",
    "document_bundle": STU3 + "ITK-Document-Bundle-1",
    "composition": CARECONNECT + "CareConnect-Composition-1",
    "organization": CARECONNECT + "CareConnect-Organization-1",
    "practitioner": CARECONNECT + "CareConnect-Practitioner-1",
    "patient": CARECONNECT + "CareConnect-Patient-1",
    "binary": STU3 + "ITK-Attachment-Binary-1",
}
ITK_EVENT = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-MessageEvent-2"
ITK_HANDLING = STU3 + "Extension-ITK-MessageHandling-2"
ITK_RECIPIENT_TYPE = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-RecipientType-1"
ITK_RESPONSE_CODES = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-ResponseCodes-1"
MESSAGE_DEFINITION = "https://fhir.nhs.uk/STU3/MessageDefinition/ITK-GPConnectSendDocument-MessageDefinition-1"
CARE_SETTING_EXTENSION = CARECONNECT + "Extension-CareConnect-CareSettingType-1"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
SDS_USER_ID = "https://fhir.nhs.uk/Id/sds-user-id"
RFC4122 = "https://tools.ietf.org/html/rfc4122"
SNOMED = "http://snomed.info/sct"
#: Composition.type: one of the two codes GPCM-SD-115 approves ("Report of clinical encounter (record artifact)").
DOCUMENT_TYPE = ("371531000", "Report of clinical encounter")
INFRA_OK, BUSINESS_OK = "20013", "30001"
#: How MESH's registered-practice routing wants the date of birth in ``Mex-To``. NHS England's MESH guidance
#: ("Endpoint lookup service and WorkflowIDs": ``GPPROVIDER_1234567890_19670126_Smith``) says YYYYMMDD; the GP
#: Connect pages show DDMMYYYY examples. MESH parses the address, so MESH's own format is used.
MESH_DOB_FORMAT = "%Y%m%d"


@dataclass(frozen=True)
class SendingOrganisation:
    """Our service as the sender: ODS code, name, telephone (GPCM-SD-028..031) and MESH mailbox (GPCM-SD-046)."""

    ods_code: str
    name: str
    phone: str
    mailbox: str


@dataclass(frozen=True)
class Author:
    """The named clinician responsible for the letter (GPCM-SD-032..034): SDS user id, official name, phone."""

    sds_user_id: str
    family: str
    given: tuple[str, ...] = ()
    prefix: str | None = None
    phone: str | None = None

    @property
    def display(self) -> str:
        return " ".join(p for p in (self.prefix, *self.given, self.family) if p)


@dataclass(frozen=True)
class Document:
    """One letter to send: its title (the kind of document), the PDF and the activity it reports."""

    title: str                 # e.g. "Assessment letter": Composition.title and the MESH subject's first words
    pdf: bytes
    sender_reference: str      # unique id of the activity at the sender (GPCM-SD-042); opaque, no patient data
    version: int = 1           # GPCM-SD-098: 1 is the original; we never send replacements


def uid(item_id: str, part: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{item_id}/{part}"))


def message_header_id(item_id: str) -> str:
    return uid(item_id, "MessageHeader")


def activity_reference(referral_id: str, event: str) -> str:
    """GPCM-SD-042's unique identifier of the activity (this referral's assessment or discharge), as a URN."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'activity/{referral_id}/{event}')}"


def _instant(at: dt.datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("generation time must be timezone-aware")
    return at.isoformat(timespec="seconds")


def _birth_date(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    return dt.date.fromisoformat(str(value)[:10]).isoformat()


def patient_name(patient: dict[str, Any]) -> str:
    return " ".join(str(p) for p in (patient.get("given_name"), patient.get("family_name")) if p)


def summary_text(document: Document, patient: dict[str, Any], sender: SendingOrganisation) -> str:
    """Composition.text / the MESH subject: ``[document-title] for [patient-name], NHS Number: [nhs-number], seen
    at [location-name], [ods-code], Version: [version-number]`` (Send Document v2, Composition.text; GPCM-SD-061/
    064). The patient was seen by this service, so the location is the service and its ODS code."""
    return (f"{document.title} for {patient_name(patient)}, NHS Number: {patient.get('nhs_number') or ''}, "
            f"seen at {sender.name}, {sender.ods_code}, Version: {document.version}")


def _name(patient: dict[str, Any]) -> dict[str, Any]:
    given = [str(patient["given_name"])] if patient.get("given_name") else []
    name: dict[str, Any] = {"use": "official", "family": str(patient.get("family_name") or "")}
    if given:
        name["given"] = given
    return name


def _drop_empty(value: Any) -> Any:
    """FHIR JSON carries no nulls, empty strings, empty lists or empty objects.

    Scalars are not recursed into and emptiness is tested by type (the same values as ``v in (None, "", [], {})``):
    this walk over every letter's bundle was a third of building it."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                v = _drop_empty(v)
            if not _empty(v):
                out[k] = v
        return out
    if isinstance(value, list):
        kept: list[Any] = []
        for v in value:
            if isinstance(v, (dict, list)):
                v = _drop_empty(v)
            if not _empty(v):
                kept.append(v)
        return kept
    return value


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, (str, list, dict)) and not v)


def build_bundle(item_id: str, *, document: Document, patient: dict[str, Any], sender: SendingOrganisation,
                 author: Author, generated_at: dt.datetime, care_setting: tuple[str, str] | None = None) -> bytes:
    """The Send Document message for one letter, as UTF-8 JSON bytes.

    ``generated_at`` (timezone-aware) is when this message is generated: the MessageHeader timestamp (GPCM-SD-048)
    and the Composition date (GPCM-SD-116). ``care_setting`` is an optional SNOMED CT (code, display) from the UK
    Core care setting type value set, sent in the Composition's care setting extension when the service knows it.
    Raises ValueError when the patient lacks what GPCM-SD-035..037 require (NHS number, surname, birth date).
    """
    nhs, birth = patient.get("nhs_number"), _birth_date(patient.get("birth_date"))
    if not nhs or not patient.get("family_name") or not birth:
        raise ValueError(f"item {item_id}: NHS number, surname and birth date are required for Send Document")
    ids = {k: uid(item_id, k) for k in ("MessageBundle", "MessageHeader", "HeaderOrganization", "DocumentBundle",
                                          "Composition", "Organization", "Practitioner", "Patient", "Binary")}
    ref = {k: f"urn:uuid:{v}" for k, v in ids.items()}
    stamp = _instant(generated_at)
    text = summary_text(document, patient, sender)
    handling = {"url": ITK_HANDLING, "extension": [
        {"url": "BusAckRequested", "valueBoolean": True},                     # GPCM-SD-040
        {"url": "InfAckRequested", "valueBoolean": True},                     # GPCM-SD-041
        {"url": "RecipientType", "valueCoding": {"system": ITK_RECIPIENT_TYPE, "code": "FA",
                                                 "display": "For Action"}},  # GPCM-SD-039
        {"url": "MessageDefinition", "valueReference": {"reference": MESSAGE_DEFINITION}},  # GPCM-SD-043
        {"url": "SenderReference", "valueString": document.sender_reference},             # GPCM-SD-042
        {"url": "LocalExtension", "valueString": "None"},                                 # GPCM-SD-044 (v2)
    ]}
    header = {
        "resourceType": "MessageHeader", "id": ids["MessageHeader"], "meta": {"profile": [PROFILES["header"]]},
        "extension": [handling],
        "event": {"system": ITK_EVENT, "code": "ITK007C", "display": "ITK GP Connect Send Document"},
        "sender": {"reference": ref["HeaderOrganization"]},
        "timestamp": stamp,
        "source": {"endpoint": sender.mailbox},
        "focus": [{"reference": ref["DocumentBundle"]}],
    }
    header_org = {"resourceType": "Organization", "id": ids["HeaderOrganization"],
                  "meta": {"profile": [PROFILES["header_org"]]},
                  "identifier": [{"system": ODS, "value": sender.ods_code}]}
    composition = {
        "resourceType": "Composition", "id": ids["Composition"], "meta": {"profile": [PROFILES["composition"]]},
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text, quote=False)}</p></div>'},
        "extension": [{"url": CARE_SETTING_EXTENSION, "valueCodeableConcept": {"coding": [
            {"system": SNOMED, "code": care_setting[0], "display": care_setting[1]}]}}] if care_setting else [],
        "identifier": {"system": RFC4122, "value": ids["Composition"]},
        "status": "final",
        "type": {"coding": [{"system": SNOMED, "code": DOCUMENT_TYPE[0], "display": DOCUMENT_TYPE[1]}]},
        "subject": {"reference": ref["Patient"]},
        "date": stamp,
        "author": [{"reference": ref["Practitioner"]}],
        "title": document.title,
        "confidentiality": "N",
        "custodian": {"reference": ref["Organization"]},
        "section": [{"title": document.title, "entry": [{"reference": ref["Binary"]}]}],
    }
    organization = {
        "resourceType": "Organization", "id": ids["Organization"], "meta": {"profile": [PROFILES["organization"]]},
        "identifier": [{"system": ODS, "value": sender.ods_code}], "name": sender.name,
        "telecom": [{"system": "phone", "value": sender.phone, "use": "work"}],
    }
    practitioner = {
        "resourceType": "Practitioner", "id": ids["Practitioner"], "meta": {"profile": [PROFILES["practitioner"]]},
        "identifier": [{"system": SDS_USER_ID, "value": author.sds_user_id}],
        "name": [{"use": "official", "family": author.family, "given": list(author.given),
                  "prefix": [author.prefix] if author.prefix else []}],
        "telecom": [{"system": "phone", "value": author.phone, "use": "work"}] if author.phone else [],
    }
    patient_res = {
        "resourceType": "Patient", "id": ids["Patient"], "meta": {"profile": [PROFILES["patient"]]},
        "identifier": [{"system": NHS_NUMBER, "value": str(nhs)}],
        "name": [_name(patient)], "birthDate": birth,
    }
    binary = {"resourceType": "Binary", "id": ids["Binary"], "meta": {"profile": [PROFILES["binary"]]},
              "contentType": "application/pdf", "content": base64.b64encode(document.pdf).decode("ascii")}
    document_bundle = {
        "resourceType": "Bundle", "id": ids["DocumentBundle"],
        "meta": {"profile": [PROFILES["document_bundle"]], "lastUpdated": stamp},
        "identifier": {"system": RFC4122, "value": ids["DocumentBundle"]},
        "type": "document",
        "entry": [{"fullUrl": ref[k], "resource": r} for k, r in (
            ("Composition", composition), ("Organization", organization), ("Practitioner", practitioner),
            ("Patient", patient_res), ("Binary", binary))],
    }
    bundle = {
        "resourceType": "Bundle", "id": ids["MessageBundle"], "meta": {"profile": [PROFILES["message_bundle"]]},
        "identifier": {"system": RFC4122, "value": ids["MessageBundle"]},
        "type": "message",
        "entry": [{"fullUrl": ref["MessageHeader"], "resource": header},
                  {"fullUrl": ref["HeaderOrganization"], "resource": header_org},
                  {"fullUrl": ref["DocumentBundle"], "resource": document_bundle}],
    }
    return json.dumps(_drop_empty(bundle), separators=(",", ":"), ensure_ascii=False).encode()


# ---- MESH metadata ----------------------------------------------------------------------------------------------

def _header_safe(text: str) -> str:
    """No control characters in a MESH header (a CR/LF would split the HTTP header)."""
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")


def _ascii_surname(family: str) -> str:
    """The surname as MESH's routing expects it: letters without accents, no spaces or underscores (the
    delimiter). A name with no Latin form (Greek, Cyrillic, CJK ...) keeps its letters: PDS then decides, and a
    mismatch comes back as a MESH error report (EPL-154), which ``check_acks`` turns into an alert."""
    folded = unicodedata.normalize("NFKD", family)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return "".join(c for c in _header_safe(folded) if c not in " _")


def mesh_address(patient: dict[str, Any]) -> str:
    """``Mex-To`` for MESH registered-practice routing: ``GPPROVIDER_<NHS number>_<birth date>_<surname>``
    (GPCM-SD-056/060/063; MESH guidance "Endpoint lookup service and WorkflowIDs"). Empty when the patient lacks
    any of the three (the send then fails, naming the letter id only)."""
    nhs, birth, family = patient.get("nhs_number"), _birth_date(patient.get("birth_date")), patient.get("family_name")
    if not nhs or not birth or not family:
        return ""
    return f"GPPROVIDER_{nhs}_{dt.date.fromisoformat(birth).strftime(MESH_DOB_FORMAT)}_{_ascii_surname(str(family))}"


def mesh_subject(document: Document, patient: dict[str, Any], sender: SendingOrganisation) -> str:
    """``Mex-Subject`` (GPCM-SD-061/064): the same text as Composition.text, without control characters. Text that is
    not plain ASCII is sent as an RFC 2047 encoded-word (HTTP header values are ASCII)."""
    text = _header_safe(summary_text(document, patient, sender))
    if text.isascii():
        return text
    from email.header import Header

    return Header(text, "utf-8").encode(maxlinelen=100_000)


def mesh_headers(document: Document, patient: dict[str, Any], sender: SendingOrganisation,
                 item_id: str) -> dict[str, str]:
    """The MESH send headers for one letter (read by :class:`caldicott.transport.mesh.MeshSender`).

    ``Mex-WorkflowID`` ``GPCONNECT_SEND_DOCUMENT`` (GPCM-SD-057); ``Mex-LocalID`` = the sending organisation's ODS
    code (GPCM-SD-145/146); ``Mex-Subject`` as :func:`mesh_subject`; ``Mex-From`` is the mailbox the connection
    authenticates as (GPCM-SD-059/062). The file name carries the ledger item id, an opaque hash: it is how this
    service (and the test double) tell letters apart, since the local id is the same for every letter.
    """
    return {"workflow_id": WORKFLOW, "local_id": sender.ods_code, "subject": mesh_subject(document, patient, sender),
            "filename": f"{item_id}.json", "content_type": "application/fhir+json"}


# ---- reading bundles and acknowledgements ---------------------------------------------------------------------------

def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Resources of one type in a message bundle, looking inside the document bundle it carries."""
    out = []
    for e in bundle.get("entry", []):
        res = e.get("resource", {})
        if res.get("resourceType") == kind:
            out.append(res)
        if res.get("resourceType") == "Bundle":
            out += resources(res, kind)
    return out


def parse_ack(data: bytes) -> tuple[str, str, bool, str] | None:
    """``(original MessageHeader id, 'infrastructure'|'business', positive, code)`` or None if not an ack."""
    try:
        bundle = json.loads(data)
        (header,) = resources(bundle, "MessageHeader")
        response = header["response"]
        codes = [c["code"] for o in resources(bundle, "OperationOutcome") for i in o.get("issue", [])
                 for c in i.get("details", {}).get("coding", []) if c.get("system") == ITK_RESPONSE_CODES]
    except (ValueError, KeyError, TypeError):
        return None
    code = codes[0] if codes else ""
    kind = "business" if code.startswith("3") else "infrastructure"
    positive = response.get("code") == "ok" and code in (INFRA_OK, BUSINESS_OK)
    return response["identifier"], kind, positive, code
