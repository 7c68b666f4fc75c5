"""GP Connect "Send Document": the FHIR STU3 ITK3 message bundle that carries a letter's PDF over MESH.

Shape (nhsconnect/gpconnect-messaging, Send Document): a ``Bundle`` of type ``message`` whose first entry
is an ITK3 ``MessageHeader`` (``ITKMessageHandling`` extension: recipient type FA, infrastructure and
business acknowledgements requested), then the ``Patient`` (NHS number, name, birth date: the minimum the
practice needs to file it), the sending and receiving ``Organization``\\ s (ODS codes), a
``DocumentReference`` and the ``Binary`` holding the PDF, base64.

Every id is a UUID derived from the ledger item id, so a resent letter is byte-for-byte the same message
and the receiver's acknowledgements (``MessageHeader.response.identifier``) map back to the ledger.
:func:`ack_bundle` / :func:`parse_ack` are the ITK3 Response messages (infrastructure ack code 20013,
business ack 30001; negative codes otherwise) on the ``_ACK`` workflow.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

WORKFLOW = "GPFED_CONSULT_REPORT"
ACK_WORKFLOW = WORKFLOW + "_ACK"
NAMESPACE = uuid.UUID("6f0d6f57-3a53-4c35-9f0d-9a3c2f1c0a11")
ITK_EVENT = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-MessageEvent-2"
ITK_HANDLING = "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-ITK-MessageHandling-2"
ITK_RESPONSE_CODES = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-ResponseCodes-1"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
INFRA_OK, BUSINESS_OK = "20013", "30001"


def uid(item_id: str, part: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{item_id}/{part}"))


def message_header_id(item_id: str) -> str:
    return uid(item_id, "MessageHeader")


def build_bundle(item_id: str, *, pdf: bytes, patient: dict, sender_ods: str, sender_mailbox: str,
                 recipient_ods: str, recipient_mailbox: str, title: str, event_date: dt.date,
                 sender_reference: str) -> bytes:
    """The Send Document message for one letter, as UTF-8 JSON bytes. Deterministic for the same input."""
    ids = {k: uid(item_id, k) for k in ("Bundle", "MessageHeader", "Patient", "Sender", "Recipient",
                                          "DocumentReference", "Binary")}
    stamp = dt.datetime.combine(event_date, dt.time(17, 0), tzinfo=dt.UTC).isoformat()
    nhs = patient.get("nhs_number")
    handling = {
        "url": ITK_HANDLING,
        "extension": [
            {"url": "BusAckRequested", "valueBoolean": True},
            {"url": "InfAckRequested", "valueBoolean": True},
            {"url": "RecipientType", "valueCoding": {
                "system": "https://fhir.nhs.uk/STU3/CodeSystem/ITK-RecipientType-1", "code": "FA",
                "display": "For Action"}},
            {"url": "MessageDefinition", "valueReference": {
                "reference": "https://fhir.nhs.uk/STU3/MessageDefinition/ITK-GPConnectSendDocument-MessageDefinition-1"}},
            {"url": "SenderReference", "valueString": sender_reference},
            {"url": "LocalExtension", "valueString": "SendDocument-ConsultationReport"},
        ],
    }
    entries = [
        {"fullUrl": f"urn:uuid:{ids['MessageHeader']}", "resource": {
            "resourceType": "MessageHeader", "id": ids["MessageHeader"],
            "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/ITK-MessageHeader-2"]},
            "extension": [handling],
            "event": {"system": ITK_EVENT, "code": "ITK007C", "display": "ITK GP Connect Send Document"},
            "sender": {"reference": f"urn:uuid:{ids['Sender']}"},
            "timestamp": stamp,
            "source": {"endpoint": sender_mailbox},
            "destination": [{"endpoint": recipient_mailbox, "receiver": {"reference": f"urn:uuid:{ids['Recipient']}"}}],
            "focus": {"reference": f"urn:uuid:{ids['DocumentReference']}"},
        }},
        {"fullUrl": f"urn:uuid:{ids['Patient']}", "resource": {
            "resourceType": "Patient", "id": ids["Patient"],
            "identifier": [{"system": NHS_NUMBER, "value": nhs}] if nhs else [],
            "name": [{"use": "official", "family": patient.get("family_name"), "given": [patient.get("given_name")]}],
            "birthDate": str(patient.get("birth_date"))[:10] if patient.get("birth_date") else None,
        }},
        {"fullUrl": f"urn:uuid:{ids['Sender']}", "resource": {
            "resourceType": "Organization", "id": ids["Sender"],
            "identifier": [{"system": ODS, "value": sender_ods}]}},
        {"fullUrl": f"urn:uuid:{ids['Recipient']}", "resource": {
            "resourceType": "Organization", "id": ids["Recipient"],
            "identifier": [{"system": ODS, "value": recipient_ods}]}},
        {"fullUrl": f"urn:uuid:{ids['DocumentReference']}", "resource": {
            "resourceType": "DocumentReference", "id": ids["DocumentReference"], "status": "current",
            "type": {"coding": [{"system": "http://snomed.info/sct", "code": "371531000",
                                 "display": "Report of clinical encounter"}]},
            "subject": {"reference": f"urn:uuid:{ids['Patient']}"},
            "created": stamp, "indexed": stamp, "description": title,
            "author": [{"reference": f"urn:uuid:{ids['Sender']}"}],
            "custodian": {"reference": f"urn:uuid:{ids['Sender']}"},
            "content": [{"attachment": {"contentType": "application/pdf", "url": f"urn:uuid:{ids['Binary']}",
                                        "title": title}}],
        }},
        {"fullUrl": f"urn:uuid:{ids['Binary']}", "resource": {
            "resourceType": "Binary", "id": ids["Binary"], "contentType": "application/pdf",
            "content": base64.b64encode(pdf).decode("ascii")}},
    ]
    bundle = {
        "resourceType": "Bundle", "id": ids["Bundle"],
        "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/ITK-Message-Bundle-1"]},
        "identifier": {"system": "https://tools.ietf.org/html/rfc4122", "value": ids["Bundle"]},
        "type": "message", "entry": entries,
    }
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == kind]


def pdf_of(bundle_bytes: bytes) -> bytes:
    """The PDF a Send Document bundle carries (receiver side; tests)."""
    bundle = json.loads(bundle_bytes)
    (binary,) = resources(bundle, "Binary")
    return base64.b64decode(binary["content"])


def ack_bundle(original: bytes | dict, code: str, *, responder_ods: str = "GPPRACTICE") -> bytes:
    """An ITK3 Response to ``original``: ``code`` 20013 (infrastructure OK), 30001 (business OK) or a
    negative code. Used by the GP-side test double; real practices' systems send these themselves."""
    bundle = json.loads(original) if isinstance(original, bytes) else original
    (header,) = resources(bundle, "MessageHeader")
    ok = code in (INFRA_OK, BUSINESS_OK)
    rid = str(uuid.uuid5(NAMESPACE, f"{header['id']}/ack/{code}"))
    ack = {
        "resourceType": "Bundle", "id": rid, "type": "message",
        "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/ITK-Message-Bundle-1"]},
        "entry": [
            {"fullUrl": f"urn:uuid:{rid}-h", "resource": {
                "resourceType": "MessageHeader", "id": f"{rid}-h",
                "event": {"system": ITK_EVENT, "code": "ITK008M", "display": "ITK Response"},
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                "source": {"endpoint": responder_ods},
                "response": {"identifier": header["id"], "code": "ok" if ok else "fatal-error"},
            }},
            {"fullUrl": f"urn:uuid:{rid}-o", "resource": {
                "resourceType": "OperationOutcome", "id": f"{rid}-o",
                "issue": [{"severity": "information" if ok else "error",
                           "code": "informational" if ok else "processing",
                           "details": {"coding": [{"system": ITK_RESPONSE_CODES, "code": code}]}}],
            }},
        ],
    }
    return json.dumps(ack, separators=(",", ":")).encode()


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
