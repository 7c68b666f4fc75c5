"""A GP practice's side of GP Connect Send Document, as a test double: acknowledges what arrives.

mesh-sandbox stores and forwards messages but does **not** route acknowledgements or act as a GP system,
so this small loop plays the practice: it downloads each Send Document message (workflow
``GPCONNECT_SEND_DOCUMENT``) from the GP mailbox (``X26ABC2``), checks it is a FHIR bundle carrying a PDF, and
sends back an ITK3 infrastructure ack (20013) and a business ack (30001) to the sender's mailbox on the ``_ACK``
workflow, then acknowledges (removes) the original. ``codes`` changes what it answers (e.g. only the
infrastructure ack, or a negative code); stopping it (or never starting it) is how the tests make acks go missing.

:func:`ack_bundle` builds those ITK3 Responses and :func:`pdf_of` reads the letter out of a message: the receiving
practice's side of the specification, kept here because nothing in the service itself does either.

Not started by the demo's peer discovery (no ``start_for_demo``): the demo and tests start it on purpose.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import threading
import uuid

from caldicott.letters import gp_connect

log = logging.getLogger(__name__)


def pdf_of(bundle_bytes: bytes) -> bytes:
    """The PDF a Send Document message carries: the Composition's first section entry (what a practice files)."""
    bundle = json.loads(bundle_bytes)
    (composition,) = gp_connect.resources(bundle, "Composition")
    first = composition["section"][0]["entry"][0]["reference"]
    for doc in gp_connect.resources(bundle, "Bundle"):
        for e in doc.get("entry", []):
            if e.get("fullUrl") == first:
                return base64.b64decode(e["resource"]["content"])
    raise ValueError("the Composition's first section entry is not in the document bundle")


def ack_bundle(original: bytes | dict, code: str, *, responder_ods: str = "GPPRACTICE") -> bytes:
    """An ITK3 Response to ``original`` (GPCM-SD-050..055): ``code`` 20013 (infrastructure OK), 30001 (business OK)
    or a negative code, from ``responder_ods`` (the practice). Real practices' systems send these themselves;
    Caldicott only reads them (:func:`caldicott.letters.gp_connect.parse_ack`)."""
    bundle = json.loads(original) if isinstance(original, bytes) else original
    (header,) = gp_connect.resources(bundle, "MessageHeader")
    handling = {e["url"]: e for e in header.get("extension", [{}])[0].get("extension", [])}
    ok = code in (gp_connect.INFRA_OK, gp_connect.BUSINESS_OK)
    rid = str(uuid.uuid5(gp_connect.NAMESPACE, f"{header['id']}/ack/{code}"))
    org = str(uuid.uuid5(gp_connect.NAMESPACE, f"{header['id']}/ack/{code}/org"))
    ack = {
        "resourceType": "Bundle", "id": rid, "type": "message",
        "meta": {"profile": [gp_connect.PROFILES["message_bundle"]]},
        "identifier": {"system": gp_connect.RFC4122, "value": rid},
        "entry": [
            {"fullUrl": f"urn:uuid:{rid}", "resource": {
                "resourceType": "MessageHeader", "id": rid, "meta": {"profile": [gp_connect.PROFILES["header"]]},
                "extension": [{"url": gp_connect.ITK_HANDLING, "extension": [
                    {"url": "BusAckRequested", "valueBoolean": False},
                    {"url": "InfAckRequested", "valueBoolean": False},
                    {"url": "RecipientType", "valueCoding": {"system": gp_connect.ITK_RECIPIENT_TYPE, "code": "FI",
                                                             "display": "For Information"}},
                    {"url": "MessageDefinition", "valueReference": {"reference": gp_connect.MESSAGE_DEFINITION}},
                    {"url": "SenderReference",
                     "valueString": handling.get("SenderReference", {}).get("valueString", "None")},
                    {"url": "LocalExtension", "valueString": "None"}]}],
                "event": {"system": gp_connect.ITK_EVENT, "code": "ITK008M", "display": "ITK Response"},
                "sender": {"reference": f"urn:uuid:{org}"},
                "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "source": {"endpoint": responder_ods},
                "response": {"identifier": header["id"], "code": "ok" if ok else "fatal-error"},
            }},
            {"fullUrl": f"urn:uuid:{org}", "resource": {
                "resourceType": "Organization", "id": org, "meta": {"profile": [gp_connect.PROFILES["header_org"]]},
                "identifier": [{"system": gp_connect.ODS, "value": responder_ods}]}},
            {"fullUrl": f"urn:uuid:{rid}-o", "resource": {
                "resourceType": "OperationOutcome", "id": f"{rid}-o",
                "issue": [{"severity": "information" if ok else "error",
                           "code": "informational" if ok else "processing",
                           "details": {"coding": [{"system": gp_connect.ITK_RESPONSE_CODES, "code": code}]}}],
            }},
        ],
    }
    return json.dumps(ack, separators=(",", ":")).encode()


def respond_once(gp_client, codes: tuple[str, ...] = (gp_connect.INFRA_OK, gp_connect.BUSINESS_OK),
                 keep: list | None = None) -> int:
    """Acknowledge every Send Document message in the GP inbox; returns how many were answered."""
    answered = 0
    for message_id in list(gp_client.iterate_message_ids(workflow_filter=gp_connect.WORKFLOW)):
        msg = gp_client.retrieve_message(message_id)
        workflow, sender = msg.workflow_id, msg.sender
        # Send Document's Mex-LocalID is the sender's ODS code (GPCM-SD-146), the same for every letter: the
        # sender names each message's file after its letter id, which is what the tests match on
        letter = str(msg.filename or "").removesuffix(".json")
        body = msg.read()
        msg.close()
        if workflow != gp_connect.WORKFLOW:
            continue
        pdf_of(body)  # a bundle without its PDF would get a negative ack from a real system
        if keep is not None:
            keep.append((message_id, letter, body))
        for code in codes:
            gp_client.send_message(sender, ack_bundle(body, code), workflow_id=gp_connect.ACK_WORKFLOW,
                                   local_id="GPPRACTICE", filename=f"ack-{code}-{letter}.json")
        gp_client.acknowledge_message(message_id)
        answered += 1
    return answered


class GpResponder:
    """Answer in a background thread every ``interval`` seconds until stopped. ``received`` keeps the
    (MESH id, letter id (from the file name), bundle) of each message answered, for tests."""

    def __init__(self, gp_client, interval: float = 0.5,
                 codes: tuple[str, ...] = (gp_connect.INFRA_OK, gp_connect.BUSINESS_OK)) -> None:
        self.client = gp_client
        self.interval = interval
        self.codes = codes
        self.received: list[tuple[str, str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gp-responder", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                respond_once(self.client, self.codes, self.received)
            except Exception as exc:  # keep answering; the tests see missing acks if it keeps failing
                log.warning("gp responder: %s", type(exc).__name__)
            self._stop.wait(self.interval)

    def start(self) -> GpResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the MESH client (the responder owns the client it was given)."""
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> GpResponder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
