"""The steps of one disclosure request, as plain functions the ``disclosure_request`` DAG calls.

record → build package → (a person decides, in Airflow's HITL step) → record the decision → release through
the gateway and notify the patient, or write the refusal. Each step appends to the register
(:mod:`caldicott.disclosure.register`) and returns only ids, names of categories and counts, for XCom.
Every step is idempotent per request, so a retried task never records or sends twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from sqlalchemy import Engine, select

from caldicott import gateway
from caldicott.disclosure import register
from caldicott.disclosure.letters import patient_notification, refusal
from caldicott.disclosure.mail import CHANNEL as MAIL_CHANNEL
from caldicott.disclosure.mail import seal_for_mail
from caldicott.disclosure.package import OptOuts, PackageContents, build_package, legal_basis_text, seal
from caldicott.disclosure.request import DEFAULT_COUNTRY, DisclosureRequest
from caldicott.policy import adequacy
from caldicott.policy.disclosure import policy_for
from caldicott.policy.purposes import Protection, Purpose
from caldicott.records import schema
from caldicott.records.queries import read
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import Intent, Ledger, item_id

FLOW = "disclosure_request"
APPROVE, REFUSE = "Approve", "Refuse"
SYSTEM = "caldicott"

#: Why the patient is not told (the approval form's choices); "n/a" means they will be told.
NOT_TOLD_REASONS = {
    "n/a": "not applicable: the patient will be told",
    "risk_of_serious_harm": "telling the patient would put them or someone else at risk of serious harm",
    "tipping_off": "telling the patient would prejudice the prevention or detection of crime (tipping off)",
    "court_direction": "a court or statute directs that the patient is not told",
    "patient_already_knows": "the patient asked for or consented to this disclosure and already knows",
    "research_privacy_notice": "de-identified research extract: patients are informed by the privacy notice",
}


class AlreadyDecided(RuntimeError):
    """The request was already approved or refused: a new decision needs a new request reference."""


class DecisionIncomplete(ValueError):
    """An approval lacked what the register must hold. The request stays open; nothing is released."""


class NotAnApprover(DecisionIncomplete):
    """The answer came from someone who is not an assigned approver. Nothing is decided; nothing is released."""


#: What an approval binds besides the recipient and the package: the route, the certificate it was sealed to and the
#: requester's country (where the data would be processed).
ROUTE_FIELDS = ("channel", "recipient_address", "connection_id", "certificate_sha256", "country")


# ---- what the steps return (to XCom through the DAG: ids, names, counts and checksums only) --------------------
class RequestRecorded(TypedDict):
    """What the DAG's ``record_request`` task returns after :func:`record_request`."""

    disclosure_id: str
    request_type: str


class Route(TypedDict):
    """The route a package is sealed and approved for (:data:`ROUTE_FIELDS`)."""

    channel: str
    recipient_address: str
    connection_id: str
    certificate_sha256: str | None
    country: str


class PackageSummary(PackageContents, Route):
    """:func:`make_package`'s summary: the register's ``package_built`` details and the ``build_package`` task's
    XCom; the approval page and the decision read it back from the register."""

    legal_basis: str
    urgency: str
    consent_status: str
    recipient: str
    certificate_subject: str | None
    package_checksum: str           # SHA-256 of the encrypted package: what an approval binds to
    plaintext_checksum: str


class Decision(TypedDict):
    """:func:`record_decision`'s result (the approval operator's XCom)."""

    disclosure_id: str
    outcome: str                    # approved / refused (or the recorded decision on a retry)
    timed_out: NotRequired[bool]
    tell_patient: NotRequired[bool]


class ReleaseCounts(TypedDict):
    """The gateway's counts for the one item (``ReleaseReport.counts``)."""

    sent: int
    already_sent: int
    refused: int
    failed: int
    not_planned: int


class ReleaseResult(ReleaseCounts):
    """:func:`release`'s result (the ``release_package`` task's XCom)."""

    disclosure_id: str
    released: bool
    item_id: NotRequired[str]
    package_checksum: NotRequired[str]
    final: NotRequired[bool]        # not released: the transport's error was final (do not retry)
    reason: NotRequired[str]        # not released: the rule or error (no patient data)


class LetterResult(TypedDict):
    """:func:`notify_patient` / :func:`write_refusal`: the letter's path under the output folder, or None and why."""

    disclosure_id: str
    letter: str | None
    why: NotRequired[str]


def _route(req: DisclosureRequest) -> Route:
    return {"channel": req.channel, "recipient_address": req.recipient_address,
            "connection_id": req.connection_id, "certificate_sha256": req.certificate_sha256, "country": req.country}


def _route_differs(recorded: Mapping[str, Any], req: DisclosureRequest) -> list[str]:
    """Names of the route fields in which ``req`` differs from what was ``recorded`` (package or approval).

    A package recorded before requests stated a country was shown to its approver as the documented default
    (``GB``), so that is what it recorded."""
    seen = {**{"country": DEFAULT_COUNTRY}, **{k: v for k, v in recorded.items() if v}}
    return [k for k, v in _route(req).items() if (seen.get(k) or "") != (v or "")]


def record_request(state: Engine, req: DisclosureRequest, actor: str) -> str:
    """Step 1: the 'requested' event (once). Refuses to reopen a request that already has a decision."""
    did = req.disclosure_id
    if register.decision(state, did) is not None:
        raise AlreadyDecided(f"disclosure {did} already has a decision; file a new reference to ask again")
    register.append_once(state, did, register.REQUESTED, actor, req.register_details())
    return did


def make_package(records: Engine, state: Engine, req: DisclosureRequest, *, opted_out: OptOuts | None = None,
                 pseudonym_key: bytes | None = None) -> PackageSummary:
    """Step 2: build, encrypt to the requester, keep in the state database, record. Returns the summary."""
    pkg = build_package(records, req, opted_out=opted_out, pseudonym_key=pseudonym_key)
    plain = pkg.to_zip()
    import hashlib

    plain_sum = hashlib.sha256(plain).hexdigest()
    prev = register.latest(state, req.disclosure_id, register.PACKAGE_BUILT)
    if prev and prev["details"].get("plaintext_checksum") == plain_sum and not _route_differs(prev["details"], req):
        # retry: same content, same route and certificate: keep its envelope (the details are the summary this
        # function recorded, read back from the register's JSON)
        return cast(PackageSummary, prev["details"])
    if req.channel == MAIL_CHANNEL:  # the S/MIME part the e-mail carries: the approval binds to exactly it
        sealed = seal_for_mail(plain, req.recipient_certificate_pem, req.disclosure_id, req.reference)
    else:
        sealed = seal(plain, req.recipient_certificate_pem)
    enc_sum = register.store_package(state, req.disclosure_id, sealed, plain_sum)
    summary: PackageSummary = {**pkg.summary(), "legal_basis": req.legal_basis, "urgency": req.urgency,
               "consent_status": req.consent_status, "recipient": req.recipient, **_route(req),
               "certificate_subject": req.certificate_subject,
               "package_checksum": enc_sum, "plaintext_checksum": plain_sum}
    register.append(state, req.disclosure_id, register.PACKAGE_BUILT, SYSTEM, summary)
    return summary


def page_facts(state: Engine, did: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The register's request (with who filed it) and package summary: what the approval page shows.

    Read from the register, never from XCom or the run conf, so the page describes the package that will be
    released. Raises :class:`DecisionIncomplete` when either is missing (nothing to decide on).
    """
    requested = register.latest(state, did, register.REQUESTED)
    built = register.latest(state, did, register.PACKAGE_BUILT)
    if requested is None or built is None:
        raise DecisionIncomplete(f"disclosure {did} has no recorded request or package: nothing to decide on")
    return {**requested["details"], "requested_by": requested["actor"]}, dict(built["details"])


def approval_text(state: Engine, did: str, timeout_minutes: float, *, approvers: Collection[str],
                  endpoint: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Subject and Markdown body of the approval page, from the register (:mod:`caldicott.disclosure.approval`)."""
    from caldicott.disclosure.approval import approval_text as page

    request, summary = page_facts(state, did)
    return page(request, summary, timeout_minutes, approvers=sorted(approvers), endpoint=endpoint)


def record_decision(state: Engine, summary: Mapping[str, Any], response: Mapping[str, Any], *,
                    approvers: Collection[str], endpoint: Mapping[str, Any] | None = None) -> Decision:
    """Step 4: turn Airflow's record of the approval step's answer (or its timeout) into a register decision.

    ``response`` must be **Airflow's own HITL record** of the approval task instance, as the approval operator
    reads it from Airflow (``response_received``, ``chosen_options``, ``params_input``, ``responded_by_user``,
    ``responded_at``), or ``{"timed_out": True, "timeout_minutes": n}`` when the wait ran out with no answer in
    that record. Never XCom or run conf: any Airflow user who can write XCom could forge those (issue 14).
    ``summary`` is the register's ``package_built`` details (:func:`page_facts`), ``approvers`` the user names
    who may decide (``CALDICOTT_APPROVERS``), ``endpoint`` the server the page showed (bound into the approval).

    Refused and recorded, nothing released: no answer in the record (``no_hitl_response``); an answer from
    someone not in ``approvers`` or from the person who filed the request (separation of duties) —
    ``decision_not_authorised``. Airflow itself already refuses answers from users not assigned; this checks
    again, so a misconfigured assignment cannot make someone else's answer a decision.
    """
    did = str(summary["disclosure_id"])
    existing = register.decision(state, did)
    if existing is not None:  # retried task: the decision is already the record
        return {"disclosure_id": did, "outcome": str(existing["event"])}
    if response.get("timed_out"):
        register.append_once(state, did, register.ESCALATED, SYSTEM, {
            "why": f"no decision within {response.get('timeout_minutes')} minutes",
            "notified": response.get("notified", [])})
        reasons = (f"No decision was made within the time allowed ({response.get('timeout_minutes')} minutes); "
                   "the request was escalated to the Caldicott Guardian and is refused. It may be submitted again.")
        register.append(state, did, "refused", SYSTEM, {"reasons": reasons, "timed_out": True})
        return {"disclosure_id": did, "outcome": "refused", "timed_out": True}
    chosen = list(response.get("chosen_options") or [])
    if not response.get("response_received", True) or not chosen:
        register.append(state, did, register.NO_HITL_RESPONSE, SYSTEM, {
            "why": "Airflow's record of the approval step holds no answer: nothing is decided or released"})
        raise DecisionIncomplete(f"no answer to {did} in Airflow's record of the approval step; nothing released")
    form = dict(response.get("params_input") or {})
    user = response.get("responded_by_user") or {}
    # The user NAME: under the simple auth manager it equals the id; under FAB the id is a database number
    # and the name is the directory user name, which is what CALDICOTT_APPROVERS lists.
    responder = str(user.get("name") or user.get("id") or "")
    actor = responder or "unknown"
    requested = register.latest(state, did, register.REQUESTED)
    requester = str(requested["actor"]) if requested else ""
    why = None
    if not user.get("id") or responder not in {str(a) for a in approvers}:
        why = "not one of the assigned approvers (CALDICOTT_APPROVERS)"
    elif requester and responder == requester:
        why = "the person who filed the request cannot decide it (separation of duties)"
    if why:
        register.append(state, did, register.NOT_AUTHORISED, actor[:100], {
            "responded_by_id": str(user.get("id") or ""), "responded_at": str(response.get("responded_at") or ""),
            "chosen_options": chosen, "why": why})
        raise NotAnApprover(f"the answer to {did} was refused ({why}): not recorded as a decision; nothing released")
    reasons = str(form.get("reasons") or "").strip()
    legal_basis_confirmed = bool(form.get("legal_basis_confirmed"))
    tell_patient = bool(form.get("tell_patient", True))
    not_told_reason = form.get("not_told_reason") or "n/a"     # as the form sent it: checked below
    details: dict[str, Any] = {
        "reasons": reasons,
        "legal_basis_confirmed": legal_basis_confirmed,
        "tell_patient": tell_patient,
        "not_told_reason": not_told_reason,
        "consulted": str(form.get("consulted") or "").strip(),
        "responded_at": str(response.get("responded_at") or ""),
        "responded_by_id": str(user.get("id") or ""),
    }
    if chosen == [APPROVE]:
        problems: list[str] = []
        if not legal_basis_confirmed:
            problems.append("legal basis not confirmed")
        if len(reasons) < 5:
            problems.append("no reasons given")
        if not tell_patient and not_told_reason == "n/a":
            problems.append("patient not to be told but no reason chosen")
        if tell_patient and not_told_reason != "n/a":
            problems.append("patient to be told but a reason not to tell them was chosen")
        if not_told_reason not in NOT_TOLD_REASONS:
            problems.append("unknown reason for not telling the patient")
        if problems:
            register.append(state, did, register.DECISION_INCOMPLETE, actor, {**details, "problems": problems})
            raise DecisionIncomplete(f"approval of {did} incomplete: {'; '.join(problems)}; nothing released")
        register.append(state, did, "approved", actor, {
            **details, "recipient": summary["recipient"], "package_checksum": summary["package_checksum"],
            **{k: summary.get(k) for k in ROUTE_FIELDS}, "endpoint": dict(endpoint or {}),
            "categories": summary["categories"], "date_from": summary["date_from"], "date_to": summary["date_to"]})
        return {"disclosure_id": did, "outcome": "approved", "tell_patient": tell_patient}
    if chosen == [REFUSE]:
        details["reasons"] = reasons or "No reason was recorded."
        register.append(state, did, "refused", actor, details)
        return {"disclosure_id": did, "outcome": "refused"}
    raise DecisionIncomplete(f"approval step for {did} returned no single known option")


def decided_outcome(state: Engine, did: str) -> str:
    """The register's decision for ``did`` (``approved`` / ``refused``), for the DAG's branch after the approval.

    The register is the only source: a task downstream of the approval step that was marked successful with
    a forged result (XCom) finds no decision here, and the attempt is recorded (``no_decision``) and refused.
    """
    dec = register.decision(state, did)
    if dec is None:
        register.append(state, did, register.NO_DECISION, SYSTEM, {
            "why": "the flow went past the approval step but the register holds no decision: nothing released"})
        raise DecisionIncomplete(f"disclosure {did} has no decision in the register; nothing released")
    return str(dec["event"])


def _result(did: str, released: bool, report: gateway.ReleaseReport) -> ReleaseResult:
    c = report.counts()
    return {"disclosure_id": did, "released": released, "sent": c["sent"], "already_sent": c["already_sent"],
            "refused": c["refused"], "failed": c["failed"], "not_planned": c["not_planned"]}


def _refuse_release(state: Engine, did: str, reason: str) -> ReleaseResult:
    register.append(state, did, register.RELEASE_REFUSED, SYSTEM, {"reason": reason})
    return {"disclosure_id": did, "released": False, "sent": 0, "already_sent": 0, "refused": 1,
            "failed": 0, "not_planned": 0, "reason": reason}


def release(state: Engine, req: DisclosureRequest, sender: Sender, run_key: str, *,
            endpoint: Mapping[str, Any] | None = None) -> ReleaseResult:
    """Step 5a: release the approved package through the gateway, exactly once, and record what went.

    The approval binds the route (channel, address, connection, certificate) and the server the approver saw
    (``endpoint``: the connection's host and port then; the adapter passes what the connection says now). A
    release without an approval, or by any other route or server, is refused and recorded; the gateway then
    checks recipient, address and the exact bytes again.
    """
    did = req.disclosure_id
    approval = register.approved_release(state, did)
    if approval is None:
        return _refuse_release(state, did, "no approval in the register")
    approved = (register.decision(state, did) or {}).get("details") or {}
    differs = _route_differs(approved, req)  # these bytes go only where the approver saw
    if differs:
        return _refuse_release(state, did, f"route differs from the approved one ({', '.join(differs)})")
    seen = dict(approved.get("endpoint") or {})
    if seen and dict(endpoint or {}) != seen:
        return _refuse_release(state, did, "the connection now points at another server than the approver saw")
    payload = register.load_package(state, approval.package_checksum) or b""
    item = Outbound(
        item_id=item_id("disclosure", did), purpose=Purpose.DISCLOSURE, recipient=req.recipient,
        channel=sender.channel, payload=payload,
        protection=Protection.SMIME if sender.channel == "smime-email" else (
            Protection.SFTP if sender.channel == "sftp" else Protection.CMS),
        address=req.recipient_address, disclosure_id=did,
        # the requester's country: the gateway refuses one not on the adequacy list and holds the item with the rule
        headers={"filename": f"{did}.zip.p7m", "subject": f"Disclosure {did}", adequacy.COUNTRY_HEADER: req.country})
    Ledger(state).record_intent([Intent(item.item_id, FLOW, Purpose.DISCLOSURE.value, run_key, req.recipient,
                                        sender.channel, did)])
    report = gateway.release([item], sender, state)
    if report.refused or report.failed or report.not_planned:
        result = _result(did, False, report)
        result["final"] = bool(report.final)
        result["reason"] = next(iter({**report.refused, **report.failed}.values()), "not planned")
        return result
    entry = Ledger(state).get(item.item_id)
    register.append_once(state, did, register.RELEASED, SYSTEM, {
        "item_id": item.item_id, "channel": sender.channel, "recipient": req.recipient,
        "package_checksum": item.checksum, "bytes": len(payload),
        "transport_ref": entry.transport_ref if entry else None})
    result = _result(did, True, report)
    result["item_id"], result["package_checksum"] = item.item_id, item.checksum
    return result


def notify_patient(records: Engine, state: Engine, req: DisclosureRequest, out_dir: Path, *,
                   service: str) -> LetterResult:
    """Step 5b: write the patient's letter unless the approver recorded a reason not to tell them.

    ``service``: the sending service's name, the same one its GP letters carry."""
    did = req.disclosure_id
    dec = register.decision(state, did)
    if dec is None or dec["event"] != "approved" or not register.has_event(state, did, register.RELEASED):
        return {"disclosure_id": did, "letter": None, "why": "not released"}
    d = dec["details"]
    pol = policy_for(req.request_type)
    reason = None if d.get("tell_patient", True) else d.get("not_told_reason")
    if reason is None and not pol.notify_patient_by_default:
        reason = "research_privacy_notice"
    if reason is not None:
        register.append_once(state, did, register.PATIENT_NOT_NOTIFIED, dec["actor"],
                             {"reason": reason, "why": NOT_TOLD_REASONS.get(reason, reason)})
        return {"disclosure_id": did, "letter": None, "why": reason}
    p = schema.patient
    pat = read(records, select(p.c.given_name, p.c.family_name, p.c.address_line, p.c.postcode)
               .where(p.c.local_patient_id == req.local_patient_id))
    rel = f"disclosures/{did}/patient_notification.txt"
    patient = {str(k): v for k, v in pat.iloc[0].to_dict().items()}
    patient_notification(out_dir / rel, patient=patient, request=req.register_details(),
                         categories=d["categories"], decided_on=dt.date.today(),
                         legal_basis_text=legal_basis_text(req.legal_basis), service=service)
    register.append_once(state, did, register.PATIENT_NOTIFIED, SYSTEM, {"letter": rel, "route": "post"})
    return {"disclosure_id": did, "letter": rel}


def write_refusal(state: Engine, req: DisclosureRequest, out_dir: Path, *, service: str) -> LetterResult:
    """Step 5c: the refusal letter to the requester (their details, never the patient's)."""
    did = req.disclosure_id
    dec = register.decision(state, did)
    if dec is None or dec["event"] != "refused":
        return {"disclosure_id": did, "letter": None}
    rel = f"disclosures/{did}/refusal_letter.txt"
    refusal(out_dir / rel, request=req.register_details(), decided_on=dt.date.today(),
            reasons=dec["details"].get("reasons") or "No reason was recorded.", service=service)
    register.append_once(state, did, register.REFUSAL_LETTER, SYSTEM, {"letter": rel})
    return {"disclosure_id": did, "letter": rel}
