"""The ``gp_letters`` flow, Airflow-free: plan an interval, send one batch, check acknowledgements.

* :func:`plan` finds the interval's letters, decides each recipient (:mod:`caldicott.policy.letters`),
  quarantines what cannot go, records ledger intents (held ones as ``held``) and returns **batches** —
  one per (recipient kind, channel, practice) — holding only opaque ids: referral id and event.
* :func:`send_batch` re-reads those letters from the source, renders and protects each one, and releases
  them through the gateway (:func:`caldicott.gateway.release`) with the channel's sender. Letters the
  ledger already shows as delivered are skipped before rendering, so a re-run costs little and sends
  nothing twice.
* :func:`check_acks` reads ITK3 acknowledgements from the MESH inbox into ``letter_ack``, marks letters
  with a positive business ack ``acked`` and flags letters still without one after ``overdue_after``.

Returned dicts are for XCom: counts and opaque ids (letter id = ledger item id, referral id, batch id).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from caldicott.db import insert_ignore, utcnow
from caldicott.gateway import CHUNK, ReleaseReport, release
from caldicott.letters import gp_connect, messages
from caldicott.letters.build import LetterData, find_events, load_letters
from caldicott.letters.render import attachment_name, email_body, letter_title
from caldicott.letters.service import Service
from caldicott.letters.state_tables import letter_ack
from caldicott.policy import adequacy
from caldicott.policy import letters as policy
from caldicott.policy.evidence import establish
from caldicott.records.checks import POSTCODE_RE
from caldicott.state.quarantine import Quarantined, quarantine
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import DONE, Intent, Ledger, State, ledger
from caldicott.transport.mesh_journal import MeshJournal
from caldicott.transport.mesh_reports import Report

log = logging.getLogger(__name__)
FLOW = policy.FLOW
RECORD_PROBLEMS = ("invalid_nhs_number", "duplicate_nhs_number", "score_out_of_range", "discharge_before_referral",
                   "unreadable_value")


def letter_id(referral_id: str, event: str, recipient_kind: str) -> str:
    """Deterministic ledger id per (referral, event, recipient): the same letter always has the same id."""
    from caldicott.transport.ledger import item_id

    return item_id(FLOW, referral_id, event, recipient_kind)


def _postcode_ok(pc: Any) -> bool:
    import re

    return bool(pc) and re.fullmatch(POSTCODE_RE, str(pc)) is not None


def decide(letter: LetterData) -> tuple[policy.Decision, policy.Decision]:
    ok = not any(p in RECORD_PROBLEMS for p in letter.problems)
    gp = policy.gp_decision(letter.patient, letter.practice, patient_ok=ok)
    pat = policy.patient_decision(letter.patient, patient_ok=ok,
                                  postcode_ok=_postcode_ok(letter.patient.get("postcode")))
    return gp, pat


def batch_id(run_key: str, route: policy.Route) -> str:
    if route.recipient_kind == "gp":
        return f"{run_key}/gp/{route.channel}/{route.recipient}"
    return f"{run_key}/patient/{route.channel}"


def plan(records: Engine, state: Engine, start: dt.date, end: dt.date, run_key: str) -> dict[str, Any]:
    """Plan ``[start, end)``: quarantine, withhold, hold, record intents; return batches (ids only)."""
    events = find_events(records, start, end)
    letters = load_letters(records, events)
    quarantined: list[Quarantined] = []
    intents: list[Intent] = []
    held: dict[str, str] = {}
    withheld: list[str] = []
    batches: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for letter in letters:
        for problem in letter.problems:
            rtype, rid = letter.problem_record(problem)
            quarantined.append(Quarantined(rtype, rid, problem, policy.REASONS[problem]))
        for d in decide(letter):
            lid = letter_id(letter.referral_id, letter.event, d.recipient_kind)
            if d.outcome == "withheld":
                withheld.append(lid)
                counts[f"{d.recipient_kind}_withheld"] += 1
                continue
            if d.outcome == "quarantined":
                counts[f"{d.recipient_kind}_quarantined"] += 1
                if d.reason:
                    assert d.record_type is not None and d.record_id is not None   # set with every reason
                    quarantined.append(Quarantined(d.record_type, d.record_id, d.reason, policy.REASONS[d.reason]))
                continue
            route = d.route
            bid = batch_id(run_key, route)
            intents.append(Intent(lid, FLOW, route.purpose.value, run_key, route.recipient, route.channel, bid))
            if d.outcome == "held":
                held[lid] = d.reason
                quarantined.append(Quarantined(d.record_type, d.record_id, d.reason, policy.REASONS[d.reason]))
                counts[f"{d.recipient_kind}_held"] += 1
                continue
            counts[f"{d.recipient_kind}_planned"] += 1
            b = batches.setdefault(bid, {"batch_id": bid, "kind": route.recipient_kind, "channel": route.channel,
                                         "letters": []})
            b["letters"].append([letter.referral_id, letter.event])
    ledger_ = Ledger(state)
    new = ledger_.record_intent(intents)
    for lid, reason in held.items():
        ledger_.hold(lid, f"{reason}: {policy.REASONS[reason]}")
    quarantine(state, FLOW, run_key, quarantined)
    by_reason = Counter(q.reason_code for q in quarantined)
    log.info("gp_letters plan %s: %d letters, %d new intents, counts %s", run_key, len(letters), new, dict(counts))
    return {
        "run_key": run_key, "start": start.isoformat(), "end": end.isoformat(),
        "letters": len(letters), "new_intents": new, "counts": dict(counts),
        "withheld": {"gp_sharing_declined": len(withheld)}, "withheld_ids": sorted(withheld),
        "held_ids": sorted(held), "quarantined_by_reason": dict(by_reason),
        "batches": sorted(batches.values(), key=lambda b: b["batch_id"]),
    }


@dataclass
class Channels:
    """What a batch needs to leave: senders per channel, certificates, identities. Built by the caller."""

    senders: dict[str, Sender]
    service: Service
    from_addr: str
    sender_mailbox: str = ""
    print_certificate_pem: str | None = None
    workflow: str = gp_connect.WORKFLOW
    #: the intermediaries' countries, from their connections' ``country`` extra (default GB), as transfers declare
    #: them; the gateway checks each against the adequacy list (caldicott.policy.adequacy)
    relay_country: str = "GB"        # the SMTP relay (NHSmail and its [secure] gateway)
    mesh_country: str = "GB"         # MESH (NHS England's Spine)
    print_country: str = "GB"        # the print house


def send_document(letter: LetterData, lid: str, pdf: bytes, ch: Channels,
                  generated_at: dt.datetime) -> tuple[str, bytes, dict[str, str]]:
    """GP Connect Send Document for one letter: ``(Mex-To, FHIR message, MESH headers)``.

    Addressed by MESH registered-practice routing (NHS number, birth date, surname: GPCM-SD-056/063), not to a
    mailbox; minimum necessary patient fields only (:func:`caldicott.policy.letters.minimum_patient`)."""
    patient = policy.minimum_patient(letter.patient, "gp")
    svc = ch.service
    sender = gp_connect.SendingOrganisation(svc.ods_code, svc.name, svc.phone, ch.sender_mailbox)
    c = svc.clinician
    author = gp_connect.Author(c.sds_user_id, c.family, (c.given,) if c.given else (), c.prefix, c.phone)
    document = gp_connect.Document(letter_title(letter.event), pdf,
                                   gp_connect.activity_reference(letter.referral_id, letter.event))
    headers = gp_connect.mesh_headers(document, patient, sender, lid)
    headers["workflow_id"] = ch.workflow
    try:
        payload = gp_connect.build_bundle(lid, document=document, patient=patient, sender=sender, author=author,
                                          generated_at=generated_at, care_setting=svc.care_setting)
    except ValueError:
        return "", b"-", headers     # incomplete demographics: the send fails with "no MESH address" (ids only)
    return gp_connect.mesh_address(patient), payload, headers


def _due(letters: Iterable[LetterData], kind: str, channel: str, ch: Channels,
         skip: set[str]) -> Iterator[tuple[LetterData, str, policy.Send]]:
    """The batch's letters that go now, with their ids and decisions to send (cheap: decided before any rendering)."""
    for letter in letters:
        lid = letter_id(letter.referral_id, letter.event, kind)
        if lid in skip:
            continue
        gp, pat = decide(letter)
        d = gp if kind == "gp" else pat
        if d.outcome != "send" or d.route.channel != channel:
            continue   # the record changed since planning: leave the intent for the next run to re-plan
        if channel not in PROTECTED:
            continue
        if channel == "post" and not ch.print_certificate_pem:
            continue   # no print house configured: stays intended, reported as pending
        yield letter, lid, d


PROTECTED = ("smime-email", "smime", "secure-email", "mesh", "post")


def outbound_items(letters: Iterable[LetterData], kind: str, channel: str, batch: str, ch: Channels,
                   skip: set[str], *, count: int | None = None) -> Iterator[Outbound]:
    """Render and protect each letter of a batch, lazily and in order.

    PDFs come from :func:`caldicott.letters.render_pool.render_pdfs`: for a large batch a worker process renders
    up to ``WINDOW`` letters ahead while this process protects and releases the ones before (rendering is pure;
    the ledger and the sends stay here, in the gateway); a small batch is rendered inline, one PDF at a time.

    ``letters`` may be lazy (:func:`send_batch` reads them from the source a step at a time while the letters before
    are rendered and sent); ``count``, how many there are at most, then says whether the batch is large (default:
    ``len(letters)``)."""
    from caldicott.letters.render_pool import render_pdfs

    body = email_body(ch.service)
    # the letters handed to the renderer and not yet protected, oldest first: the renderer asks for its jobs up to
    # a window ahead and yields their PDFs in the same order
    pending: deque[tuple[LetterData, str, policy.Send]] = deque()

    def jobs() -> Iterator[tuple[LetterData, str]]:
        for entry in _due(letters, kind, channel, ch, skip):
            pending.append(entry)
            yield entry[0], kind

    if count is None:
        count = len(letters) if isinstance(letters, Sized) else None
    todo = jobs()
    first = next(todo, None)
    if first is None:
        return   # nothing due (``count`` was only an upper bound): no renderer to start
    pdfs = render_pdfs(itertools.chain([first], todo), ch.service, count=count)
    try:
        for pdf, now in pdfs:
            letter, lid, decision = pending.popleft()
            yield _protect(letter, lid, decision, pdf, now, kind, channel, batch, ch, body)
    finally:
        pdfs.close()   # stop the renderer's look-ahead when the gateway stops early


def _protect(letter: LetterData, lid: str, decision: policy.Send, pdf: bytes, now: dt.datetime, kind: str,
             channel: str, batch: str, ch: Channels, body: str) -> Outbound:
    """One rendered letter, protected for its channel, as the gateway's item.

    Its ``gp_sharing_consent`` evidence comes from the policy decision (a GP decision that found consent given),
    minted for exactly the protected bytes below; a decision without it gives the letter none."""
    route = decision.route
    headers: dict[str, str] = {"batch": batch.replace("/", "_")}
    address = route.address
    filename = attachment_name(letter.event)
    if kind == "gp":   # the practice's own country (records source), the GP letter purpose's default when blank
        headers[adequacy.COUNTRY_HEADER] = adequacy.normalise((letter.practice or {}).get("country") or "GB")
    if channel == "smime-email":
        assert letter.practice is not None   # an smime-email route is the practice's
        payload = messages.smime_email(lid, pdf=pdf, body=body, sender=ch.from_addr, to=route.address,
                                       certificate_pem=letter.practice["certificate_pem"], service=ch.service.name,
                                       filename=filename)
        headers[adequacy.VIA_HEADER] = ch.relay_country
    elif channel == "smime":
        payload = messages.smime_email(lid, pdf=pdf, body=body, sender=ch.from_addr, to=route.address,
                                       certificate_pem=letter.patient["patient_certificate_pem"],
                                       service=ch.service.name, filename=filename)
        headers[adequacy.COUNTRY_HEADER] = ch.relay_country   # the patient's copy reaches them through the relay
    elif channel == "secure-email":
        payload = messages.gateway_email(lid, pdf=pdf, body=body, sender=ch.from_addr, to=route.address,
                                         service=ch.service.name, filename=filename)
        headers[adequacy.COUNTRY_HEADER] = ch.relay_country
    elif channel == "mesh":
        address, payload, mesh_headers = send_document(letter, lid, pdf, ch, now)
        headers.update(mesh_headers)
        headers[adequacy.VIA_HEADER] = ch.mesh_country
    else:   # post (``_due`` lets no other channel through)
        assert ch.print_certificate_pem
        payload = messages.post_file(pdf, ch.print_certificate_pem)
        headers[adequacy.COUNTRY_HEADER] = ch.print_country   # the print house posts it
    facts = {"gp_sharing_consent": establish("gp_sharing_consent", payload)} if decision.gp_sharing_consent else {}
    return Outbound(lid, route.purpose, route.recipient, channel, payload, route.protection,
                    address=address, headers=headers, facts=facts)


SENDER_FOR = {"smime-email": "smtp", "smime": "smtp", "secure-email": "smtp", "mesh": "mesh", "post": "post"}


def send_batch(records: Engine, state: Engine, batch: dict[str, Any], ch: Channels, start: dt.date, end: dt.date,
               chunk: int = CHUNK) -> dict[str, Any]:
    """Send one planned batch; returns counts and the ids of letters that failed (XCom-safe).

    Letters are rendered lazily while the gateway sends the previous ``chunk`` (see :func:`release`) — for a batch
    of ``render_pool.min_letters()`` or more, in a worker process up to ``render_pool.WINDOW`` letters ahead — so
    at most a few chunks of PDFs are in memory, whatever the batch size. Only the batch's own referrals are read
    back from the source.
    """
    keys = {tuple(x) for x in batch["letters"]}
    kind, channel = batch["kind"], batch["channel"]
    ids = [letter_id(r, e, kind) for r, e in sorted(keys)]
    entries = Ledger(state).entries(ids)
    skip = {i for i, e in entries.items() if e.state in DONE or e.state == State.HELD}
    report = ReleaseReport()
    report.already_sent += sorted(i for i in skip if entries[i].state in DONE)
    todo = [(r, e, d) for r, e, d in find_events(records, start, end, referral_ids={r for r, _ in keys})
            if (r, e) in keys and letter_id(r, e, kind) not in skip]
    if todo:
        sender = ch.senders[SENDER_FOR[channel]]
        if hasattr(sender, "use_journal"):
            sender.use_journal(MeshJournal(state))   # MESH message ids, for crash recovery by tracking
        letters = _load_in_steps(records, todo)
        report.merge(release(outbound_items(letters, kind, channel, batch["batch_id"], ch, skip, count=len(todo)),
                             sender, state, chunk=chunk))
    counts = report.counts()
    log.info("gp_letters batch %s: %s", batch["batch_id"], counts)
    return {"batch_id": batch["batch_id"], **counts, "failed_ids": sorted(report.failed),
            "refused_ids": sorted(report.refused)}


#: letters a batch reads from the source first (enough to start the renderer and the first gateway chunks), then
#: per step: a step costs a few queries (~15 ms here) plus ~0.2 ms a letter, read while the letters before render
LOAD_FIRST = 64
LOAD_STEP = 512


def _load_in_steps(records: Engine, events: list[tuple[str, str, dt.date]]) -> Iterator[LetterData]:
    """:func:`~caldicott.letters.build.load_letters` for ``events``, :data:`LOAD_FIRST` then :data:`LOAD_STEP` at a
    time, as the batch asks for them: rendering and sending start after the first step instead of after the whole
    batch was read. The same letters in the same order as one call: each letter's content comes from its own
    referral's and patient's rows (and the source-wide duplicate check), whatever else is read with it."""
    start, size = 0, LOAD_FIRST
    while start < len(events):
        yield from load_letters(records, events[start:start + size])
        start += size
        size = LOAD_STEP


def sent_by_run(state: Engine, batches: list[dict[str, Any]], since: dt.datetime) -> dict[str, Any]:
    """``sent`` / ``already_sent`` for a run's planned ``batches``, from the ledger: a letter the ledger shows delivered
    (sent, acked, ...) with ``sent_at`` at or after ``since`` (the run's start) went out in this run, on whichever try
    of its ``send_batch``; one delivered before was already sent. A retried batch's own XCom counts only its last
    try, so summing those would under-count a run whose first try sent some letters and then failed."""
    ids = [letter_id(r, e, b["kind"]) for b in batches for r, e in b["letters"]]
    cutoff = since.astimezone(dt.UTC).replace(tzinfo=None) if since.tzinfo else since   # the ledger's naive UTC
    done = [s.value for s in DONE]
    sent = already = 0
    with state.connect() as conn:
        for i in range(0, len(ids), 500):
            for sent_at, in conn.execute(select(ledger.c.sent_at).where(ledger.c.item_id.in_(ids[i:i + 500]),
                                                                       ledger.c.state.in_(done))):
                if sent_at is not None and sent_at.tzinfo is not None:
                    sent_at = sent_at.astimezone(dt.UTC).replace(tzinfo=None)
                if sent_at is not None and sent_at >= cutoff:
                    sent += 1
                else:
                    already += 1
    return {"sent": sent, "already_sent": already}


def record_acks(state: Engine, acks: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Store parsed ITK3 acks against their letters; mark letters with a positive business ack acked."""
    if not acks:
        return {"acks_read": 0, "acked": 0, "negative": 0, "unmatched": 0}
    with state.connect() as conn:
        rows = conn.execute(select(ledger.c.item_id).where(ledger.c.flow == FLOW, ledger.c.channel == "mesh")).all()
    by_header = {gp_connect.message_header_id(r[0]): r[0] for r in rows}
    stored, unmatched, negative = [], 0, 0
    for mesh_id, body in acks:
        parsed = gp_connect.parse_ack(body)
        if parsed is None or parsed[0] not in by_header:
            unmatched += 1
            continue
        header_id, kind, positive, code = parsed
        negative += not positive
        stored.append({"item_id": by_header[header_id], "kind": kind, "positive": positive, "code": code,
                       "mesh_message_id": mesh_id, "received_at": utcnow()})
    if stored:
        with state.begin() as conn:
            conn.execute(insert_ignore(conn, letter_ack), stored)
    led = Ledger(state)
    acked = 0
    for row in stored:
        if row["kind"] == "business" and row["positive"]:
            acked += led.mark_acked(row["item_id"], f"business ack {row['code']}")
    return {"acks_read": len(acks), "acked": acked, "negative": negative, "unmatched": unmatched}


def record_non_delivery(state: Engine, reports: Iterable[Report]) -> dict[str, Any]:
    """MESH non-delivery reports about GP letters: each letter found becomes ``undeliverable`` (not resent).

    A report names the undelivered message by its MESH id (the ledger's ``transport_ref``) and carries the
    original's local id (the ledger item id). Returns the letter ids newly marked and a count of reports
    that matched no letter (another flow's message, or one marked before).
    """
    # each report is recorded before the next is asked for: read_reports removes a report from the inbox only
    # then, so a crash in between leaves it there for the next run (marking twice is a no-op)
    with state.connect() as conn:
        rows = conn.execute(select(ledger.c.item_id, ledger.c.transport_ref).where(
            ledger.c.flow == FLOW, ledger.c.channel == "mesh")).all()
    by_ref = {ref: iid for iid, ref in rows if ref}
    ids = {iid for iid, _ in rows}
    led = Ledger(state)
    marked, unmatched = [], 0
    for r in reports:
        iid = by_ref.get(r.linked_message_id) or (r.local_id if r.local_id in ids else None)
        if iid is not None and led.mark_undeliverable(
                iid, f"MESH non-delivery report: status {r.status or '?'} code {r.code or '?'} ({r.event or '?'})"):
            marked.append(iid)
        else:
            unmatched += 1
    if marked:
        log.warning("gp_letters: %d MESH letter(s) reported undeliverable: %s", len(marked), ", ".join(marked[:20]))
    return {"undeliverable_ids": sorted(marked), "reports_unmatched": unmatched}


def overdue(state: Engine, after: dt.timedelta, now: dt.datetime | None = None) -> list[str]:
    """MESH letters sent more than ``after`` ago with no positive business ack: marked ``ack_overdue``."""
    cutoff = (now or utcnow()) - after
    with state.connect() as conn:
        ids = [r[0] for r in conn.execute(select(ledger.c.item_id).where(
            ledger.c.flow == FLOW, ledger.c.channel == "mesh", ledger.c.state == State.SENT.value,
            ledger.c.sent_at <= cutoff)).all()]
        already = [r[0] for r in conn.execute(select(ledger.c.item_id).where(
            ledger.c.flow == FLOW, ledger.c.channel == "mesh", ledger.c.state == State.ACK_OVERDUE.value)).all()]
    led = Ledger(state)
    for i in ids:
        led.mark_ack_overdue(i)
    return sorted(ids + already)


def ack_summary(state: Engine) -> dict[str, int]:
    """Counts of acks by kind and sign (for the report)."""
    with state.connect() as conn:
        rows = conn.execute(select(letter_ack.c.kind, letter_ack.c.positive)).all()
    c: dict[str, int] = defaultdict(int)
    for kind, pos in rows:
        c[f"{kind}_{'positive' if pos else 'negative'}"] += 1
    return dict(c)


__all__ = ["Channels", "letter_id", "overdue", "plan", "record_acks", "record_non_delivery", "send_batch",
           "sent_by_run"]
