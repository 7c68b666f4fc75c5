"""The ``transfer_of_care`` flow, Airflow-free: plan a day, send one batch (the shape of :mod:`caldicott.letters.flow`).

* :func:`plan` finds the day's onward referrals, decides each report's recipients — the **receiving provider** on its
  own channel (:func:`caldicott.policy.transfers.receiver_decision`), the **GP** unless the patient declined GP sharing
  and the **patient** (the letters' rules, :mod:`caldicott.policy.letters`) — quarantines what cannot be addressed,
  records a ledger intent for every report (held ones as ``held``, with the reason) and returns batches of opaque ids.
  The copies wait for the receiver: while the receiver's report is held, or its country is not on the adequacy list,
  no copy is planned (a copy saying "we have sent them this report" would not be true).
* :func:`send_batch` re-reads the batch's reports, renders and protects each, and releases them through the release
  gateway (:func:`caldicott.gateway.release`), which checks purpose, facts and country and moves the ledger
  ``intended → sending → sent`` exactly once across re-runs and crashes.

Returned dicts are for XCom: counts and opaque ids (report id = ledger item id, onward referral id, batch id).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from caldicott.crypto.smime import envelope_der
from caldicott.gateway import CHUNK, ReleaseReport, release
from caldicott.letters import gp_connect, messages
from caldicott.letters.flow import _postcode_ok
from caldicott.letters.render import email_body
from caldicott.letters.service import Service
from caldicott.policy import adequacy
from caldicott.policy import letters as letters_policy
from caldicott.policy import transfers as policy
from caldicott.policy.evidence import establish
from caldicott.state.quarantine import Quarantined, quarantine
from caldicott.transfers.build import TransferData, find_transfers, load_transfers
from caldicott.transfers.render import ATTACHMENT, TITLE, render_pdf
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import DONE, Intent, Ledger, State, item_id
from caldicott.transport.mesh_journal import MeshJournal

log = logging.getLogger(__name__)
FLOW = policy.FLOW
RECORD_PROBLEMS = ("invalid_nhs_number", "unreadable_value", "referral_unknown", "receiver_unknown")
SENDER_FOR = {"smime-email": "smtp", "smime": "smtp", "secure-email": "smtp", "mesh": "mesh", "post": "post",
              "sftp": "sftp"}


def report_id(onward_id: str, recipient_kind: str) -> str:
    """Deterministic ledger id per (onward referral, recipient): the same report always has the same id."""
    return item_id(FLOW, onward_id, recipient_kind)


@dataclass(frozen=True)
class Planned:
    """One recipient's outcome for a report: ``send`` with a channel and batch, or why not."""

    kind: str                  # "receiver" | "gp" | "patient"
    outcome: str               # "send" | "held" | "withheld" | "quarantined" | "awaiting_receiver"
    channel: str = ""
    recipient: str = ""
    purpose: str = ""
    reason: str | None = None
    record: tuple[str, str] | None = None


def decide(data: TransferData, allowed: frozenset[str]) -> list[Planned]:
    """Who gets ``data``'s report, and how (pure: the same answer at planning and at sending)."""
    problems = [p for p in data.problems if p in RECORD_PROBLEMS]
    if problems:
        return [Planned(k, "quarantined", reason=problems[0], record=data.problem_record(problems[0]))
                for k in ("receiver", "gp", "patient")]
    out: list[Planned] = []
    rd = policy.receiver_decision(data.receiver, contact_ok=bool((data.contact or {}).get("display_name")))
    org = str((data.receiver or {}).get("ods_code") or "")
    if rd.route is not None:
        out.append(Planned("receiver", rd.outcome, rd.route.channel, rd.route.recipient, rd.route.purpose.value,
                           rd.reason, ("organisation", org) if rd.reason else None))
    else:
        out.append(Planned("receiver", rd.outcome, reason=rd.reason, record=("organisation", org)))
    receiver_goes = rd.outcome == "send" and rd.route is not None and rd.route.country in allowed
    patient = data.patient
    gp = letters_policy.gp_decision(patient, data.practice, patient_ok=True)
    pat = letters_policy.patient_decision(patient, patient_ok=True, postcode_ok=_postcode_ok(patient.get("postcode")))
    for kind, d in (("gp", gp), ("patient", pat)):
        if d.outcome == "withheld" or d.outcome == "quarantined":
            rec = (d.record_type, d.record_id) if d.record_type and d.record_id is not None else None
            out.append(Planned(kind, d.outcome, reason=d.reason, record=rec))
        elif not receiver_goes:
            out.append(Planned(kind, "awaiting_receiver"))
        elif d.outcome == "held":
            out.append(Planned(kind, d.outcome, d.route.channel, d.route.recipient, d.route.purpose.value,
                               d.reason, (d.record_type, d.record_id)))
        else:
            out.append(Planned(kind, d.outcome, d.route.channel, d.route.recipient, d.route.purpose.value))
    return out


def batch_id(run_key: str, p: Planned) -> str:
    if p.kind == "patient":
        return f"{run_key}/patient/{p.channel}"
    return f"{run_key}/{p.kind}/{p.channel}/{p.recipient}"


def _reason_text(code: str) -> str:
    return policy.REASONS.get(code) or letters_policy.REASONS.get(code) or code


def plan(records: Engine, state: Engine, start: dt.date, end: dt.date, run_key: str) -> dict[str, Any]:
    """Plan ``[start, end)``: quarantine, withhold, hold, record intents; return batches (ids only)."""
    keys = find_transfers(records, start, end)
    reports = load_transfers(records, keys)
    allowed = adequacy.adequate_countries()
    quarantined: list[Quarantined] = []
    intents: list[Intent] = []
    held: dict[str, str] = {}
    withheld: list[str] = []
    waiting: list[str] = []
    not_adequate: list[str] = []
    batches: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for data in reports:
        for p in decide(data, allowed):
            rid = report_id(data.onward_id, p.kind)
            counts[f"{p.kind}_{p.outcome}"] += 1
            if p.reason and p.record and p.outcome in ("quarantined", "held"):
                quarantined.append(Quarantined(p.record[0], p.record[1], p.reason, _reason_text(p.reason)))
            if p.outcome == "withheld":
                withheld.append(rid)
                continue
            if p.outcome == "awaiting_receiver":
                waiting.append(rid)
                continue
            if p.outcome == "quarantined":
                continue
            bid = batch_id(run_key, p) if p.channel else f"{run_key}/{p.kind}/none"
            intents.append(Intent(rid, FLOW, p.purpose or "transfer_of_care", run_key, p.recipient or "-",
                                  p.channel or "none", bid))
            if p.outcome == "held":
                held[rid] = p.reason or "held"
                continue
            if p.kind == "receiver" and adequacy.normalise((data.receiver or {}).get("country")) not in allowed:
                not_adequate.append(rid)   # planned all the same: the release gateway refuses it and records why
            b = batches.setdefault(bid, {"batch_id": bid, "kind": p.kind, "channel": p.channel, "reports": []})
            b["reports"].append([data.onward_id, data.referral_id])
    led = Ledger(state)
    new = led.record_intent(intents)
    for rid, reason in held.items():
        led.hold(rid, f"{reason}: {_reason_text(reason)}")
    quarantine(state, FLOW, run_key, quarantined)
    log.info("transfer_of_care plan %s: %d reports, %d new intents, counts %s", run_key, len(reports), new,
             dict(counts))
    return {
        "run_key": run_key, "start": start.isoformat(), "end": end.isoformat(), "reports": len(reports),
        "new_intents": new, "counts": dict(counts), "withheld_ids": sorted(withheld),
        "withheld": {"gp_sharing_declined": len(withheld)}, "held_ids": sorted(held),
        "held_by_reason": dict(Counter(held.values())), "held_reasons": dict(sorted(held.items())),
        "awaiting_receiver_ids": sorted(waiting),
        "not_adequate_ids": sorted(not_adequate),
        "quarantined_by_reason": dict(Counter(q.reason_code for q in quarantined)),
        "batches": sorted(batches.values(), key=lambda b: b["batch_id"]),
    }


@dataclass
class Channels:
    """What a batch needs to leave: senders by kind, the service, identities and the intermediaries' countries
    (from their configuration, default GB: the gateway checks each against the adequacy list)."""

    senders: dict[str, Sender]
    service: Service
    from_addr: str = ""
    sender_mailbox: str = ""
    print_certificate_pem: str | None = None
    relay_country: str = "GB"        # the SMTP relay (NHSmail and its [secure] gateway)
    mesh_country: str = "GB"         # MESH (NHS England's Spine)
    print_country: str = "GB"        # the print house


def _gp_send_document(data: TransferData, rid: str, pdf: bytes, ch: Channels,
                      now: dt.datetime) -> tuple[str, bytes, dict[str, str]]:
    """The GP copy for a MESH practice: GP Connect Send Document, as the letters send it (registered-practice
    routing; minimum necessary patient fields only)."""
    patient = letters_policy.minimum_patient(data.patient, "gp")
    svc = ch.service
    sender = gp_connect.SendingOrganisation(svc.ods_code, svc.name, svc.phone, ch.sender_mailbox)
    c = svc.clinician
    author = gp_connect.Author(c.sds_user_id, c.family, (c.given,) if c.given else (), c.prefix, c.phone)
    document = gp_connect.Document(TITLE, pdf, gp_connect.activity_reference(data.onward_id, "transfer"))
    headers = gp_connect.mesh_headers(document, patient, sender, rid)
    headers["workflow_id"] = gp_connect.WORKFLOW
    try:
        payload = gp_connect.build_bundle(rid, document=document, patient=patient, sender=sender, author=author,
                                          generated_at=now, care_setting=svc.care_setting)
    except ValueError:
        return "", b"-", headers
    return gp_connect.mesh_address(patient), payload, headers


def outbound_items(reports: list[TransferData], kind: str, channel: str, batch: str, ch: Channels,
                   skip: set[str]) -> Iterator[Outbound]:
    """Render and protect each report of a batch, lazily (one PDF in memory at a time)."""
    allowed = adequacy.adequate_countries()
    body = email_body(ch.service)
    for data in reports:
        rid = report_id(data.onward_id, kind)
        if rid in skip:
            continue
        plans = {p.kind: p for p in decide(data, allowed)}
        p = plans.get(kind)
        if p is None or p.outcome != "send" or p.channel != channel:
            continue   # the record changed since planning: the intent waits for the next run to re-plan it
        gp_copy = plans["gp"].outcome in ("send", "held")
        now = dt.datetime.now(dt.UTC)
        pdf = render_pdf(data, kind, ch.service, gp_copy=gp_copy, created=now)
        headers: dict[str, str] = {"batch": batch.replace("/", "_"), "filename": ATTACHMENT}
        established: list[str] = []   # the facts established for this report; evidence is minted for its bytes below
        address = ""
        route: policy.ReceiverRoute | letters_policy.Route | None   # the receiver's, or a letter route
        if kind == "receiver":
            route = policy.receiver_decision(data.receiver, contact_ok=True).route
            assert route is not None and data.receiver is not None
            established.append("transfer_fields_applied")   # render_pdf shows only policy.transfers' fields
            headers[adequacy.COUNTRY_HEADER] = route.country
            address, protection = route.address, route.protection
            if channel == "mesh":
                payload = pdf
                headers.update({"workflow_id": route.workflow, "content_type": "application/pdf",
                                "subject": TITLE, "local_id": rid})
                headers[adequacy.VIA_HEADER] = ch.mesh_country
            elif channel == "smime-email":
                payload = messages.smime_email(rid, pdf=pdf, body=body, sender=ch.from_addr, to=address,
                                               certificate_pem=data.receiver["certificate_pem"],
                                               service=ch.service.name, filename=ATTACHMENT)
                headers[adequacy.VIA_HEADER] = ch.relay_country
            else:   # sftp: CMS (DER EnvelopedData) to the receiver's certificate, on the receiver's own server
                payload = envelope_der(pdf, data.receiver["certificate_pem"])
                headers["filename"] = f"{rid}.pdf.p7m"
                headers["content_type"] = "application/pkcs7-mime"
            purpose = route.purpose
            recipient = route.recipient
        else:
            d = (letters_policy.gp_decision(data.patient, data.practice, patient_ok=True) if kind == "gp" else
                 letters_policy.patient_decision(data.patient, patient_ok=True,
                                                 postcode_ok=_postcode_ok(data.patient.get("postcode"))))
            assert d.outcome in ("send", "held")   # decide() planned it to send: a decision with a route
            route = d.route
            if d.gp_sharing_consent:   # the letters policy's decision found the patient's consent given
                established.append("gp_sharing_consent")
            address, protection, purpose, recipient = route.address, route.protection, route.purpose, route.recipient
            if kind == "gp":
                headers[adequacy.COUNTRY_HEADER] = adequacy.normalise((data.practice or {}).get("country") or "GB")
            if channel == "smime-email":
                assert data.practice is not None   # an smime-email GP route is the practice's
                payload = messages.smime_email(rid, pdf=pdf, body=body, sender=ch.from_addr, to=address,
                                               certificate_pem=data.practice["certificate_pem"],
                                               service=ch.service.name, filename=ATTACHMENT)
                headers[adequacy.VIA_HEADER] = ch.relay_country
            elif channel == "mesh":
                address, payload, mesh_headers = _gp_send_document(data, rid, pdf, ch, now)
                headers.update(mesh_headers)
                headers[adequacy.VIA_HEADER] = ch.mesh_country
            elif channel == "smime":
                payload = messages.smime_email(rid, pdf=pdf, body=body, sender=ch.from_addr, to=address,
                                               certificate_pem=data.patient["patient_certificate_pem"],
                                               service=ch.service.name, filename=ATTACHMENT)
                headers[adequacy.COUNTRY_HEADER] = ch.relay_country
            elif channel == "secure-email":
                payload = messages.gateway_email(rid, pdf=pdf, body=body, sender=ch.from_addr, to=address,
                                                 service=ch.service.name, filename=ATTACHMENT)
                headers[adequacy.COUNTRY_HEADER] = ch.relay_country
            elif channel == "post":
                if not ch.print_certificate_pem:
                    continue   # no print house configured: stays intended, reported as pending
                payload = messages.post_file(pdf, ch.print_certificate_pem)
                headers[adequacy.COUNTRY_HEADER] = ch.print_country
            else:
                continue
        yield Outbound(rid, purpose, recipient, channel, payload, protection, address=address, headers=headers,
                       facts={f: establish(f, payload) for f in established})


def send_batch(records: Engine, state: Engine, batch: dict[str, Any], ch: Channels, start: dt.date, end: dt.date,
               chunk: int = CHUNK) -> dict[str, Any]:
    """Send one planned batch; returns counts, failed and refused ids with the refusing rule (XCom-safe)."""
    keys = {tuple(x) for x in batch["reports"]}
    kind, channel = batch["kind"], batch["channel"]
    ids = {report_id(o, kind): (o, r) for o, r in sorted(keys)}
    entries = Ledger(state).entries(list(ids))
    skip = {i for i, e in entries.items() if e.state in DONE or e.state == State.HELD}
    report = ReleaseReport()
    report.already_sent += sorted(i for i in skip if entries[i].state in DONE)
    todo = [k for k in find_transfers(records, start, end) if (k[0], k[1]) in keys
            and report_id(k[0], kind) not in skip]
    if todo:
        reports = load_transfers(records, todo)
        sender = ch.senders[SENDER_FOR[channel]]
        if hasattr(sender, "use_journal"):
            sender.use_journal(MeshJournal(state))   # MESH message ids, for crash recovery by tracking
        report.merge(release(outbound_items(reports, kind, channel, batch["batch_id"], ch, skip), sender, state,
                             chunk=chunk))
    counts = report.counts()
    log.info("transfer_of_care batch %s: %s", batch["batch_id"], counts)
    return {"batch_id": batch["batch_id"], **counts, "failed_ids": sorted(report.failed),
            "refused_reasons": dict(sorted(report.refused.items())), "final_ids": sorted(report.final)}


__all__ = ["Channels", "decide", "plan", "report_id", "send_batch"]
