"""The release gateway: the one function every byte leaving the service goes through (invariant 1).

``release(items, sender)`` checks each item against the policy rule for its purpose
(:mod:`caldicott.policy.purposes`): routine purposes pass when the facts their rule requires are
asserted and the protection is one the rule allows; every other purpose passes only with an approved
entry in the disclosure register for exactly this recipient and exactly these bytes (checksum).
It then uses the delivery ledger so that each item leaves at most once, and records what left.

Refusals raise nothing per item: they are counted, the item is held in the ledger with the reason,
and the run's report shows them. A refusal is a policy outcome, not a crash.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from caldicott.disclosure.register import approved_release
from caldicott.policy.purposes import Protection, Purpose, release_rule
from caldicott.transport.base import Outbound, Sender, TransportError
from caldicott.transport.ledger import DONE, Ledger, State

log = logging.getLogger(__name__)


class ReleaseRefused(Exception):
    """An item failed its purpose's release rule. The message names the rule, never patient data."""


@dataclass
class ReleaseReport:
    """What happened to a batch, by item id: enough for XCom (ids and counts only)."""

    sent: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)   # item id -> rule that refused it
    failed: dict[str, str] = field(default_factory=dict)    # item id -> transport error (no PII)
    not_planned: list[str] = field(default_factory=list)    # no ledger intent: refused to send

    def counts(self) -> dict[str, int]:
        return {"sent": len(self.sent), "already_sent": len(self.already_sent), "refused": len(self.refused),
                "failed": len(self.failed), "not_planned": len(self.not_planned)}

    def merge(self, other: ReleaseReport) -> None:
        self.sent += other.sent
        self.already_sent += other.already_sent
        self.refused.update(other.refused)
        self.failed.update(other.failed)
        self.not_planned += other.not_planned


def check(item: Outbound, state_engine: Engine) -> None:
    """Raise ReleaseRefused unless ``item`` may leave for its purpose. Pure policy; sends nothing."""
    try:
        rule = release_rule(item.purpose)
    except (KeyError, ValueError) as exc:
        raise ReleaseRefused(f"unknown purpose {item.purpose!r}") from exc
    if item.protection == Protection.NONE or item.protection not in rule.allowed_protection:
        raise ReleaseRefused(f"protection {item.protection!s} not allowed for {item.purpose!s}")
    if not item.payload:
        raise ReleaseRefused("empty payload")
    missing = [f for f in rule.required_facts if item.facts.get(f) is not True]
    if missing:
        raise ReleaseRefused(f"{item.purpose!s} requires {', '.join(missing)}")
    if not rule.routine or item.purpose == Purpose.DISCLOSURE:
        approval = approved_release(state_engine, item.disclosure_id)
        if approval is None:
            raise ReleaseRefused("non-routine release without an approved disclosure register entry")
        if approval.recipient != item.recipient:
            raise ReleaseRefused("recipient differs from the approved disclosure")
        if approval.package_checksum != item.checksum:
            raise ReleaseRefused("package differs from the one approved")


def release(items: Iterable[Outbound], sender: Sender, state_engine: Engine) -> ReleaseReport:
    """Release ``items`` through ``sender``, each at most once, recording every step in the ledger.

    Every item must already have a ledger intent (recorded when the flow planned its run), so nothing
    can leave that the ledger does not know about. Transport errors are recorded per item and the batch
    carries on; the caller decides whether the task fails (so Airflow retries) from the report.
    """
    ledger = Ledger(state_engine)
    report = ReleaseReport()
    for item in items:
        try:
            check(item, state_engine)
        except ReleaseRefused as refusal:
            report.refused[item.item_id] = str(refusal)
            ledger.hold(item.item_id, f"refused by release gateway: {refusal}")
            log.warning("release refused: item=%s purpose=%s reason=%s", item.item_id, item.purpose, refusal)
            continue
        entry = ledger.get(item.item_id)
        if entry is None:
            report.not_planned.append(item.item_id)
            log.error("release refused: item=%s has no recorded intent", item.item_id)
            continue
        if entry.state in DONE:
            report.already_sent.append(item.item_id)
            continue
        prev = ledger.begin_send(item.item_id)
        if prev is None:  # held, or another worker claimed it
            if (e := ledger.get(item.item_id)) is not None and e.state in DONE:
                report.already_sent.append(item.item_id)
            continue
        if prev in (State.SENDING, State.FAILED):
            # SENDING: a worker died mid-send. FAILED: the last attempt's outcome may be unknown (a timeout or
            # a reply lost after the peer accepted). Either way the item may have arrived: ask before resending.
            try:
                ref = sender.already_delivered(item)
            except TransportError as exc:
                _record_failure(ledger, report, item, sender, "reconcile", exc)
                continue
            if ref is not None:
                ledger.mark_sent(item.item_id, checksum=item.checksum, transport_ref=ref)
                report.already_sent.append(item.item_id)
                log.info("reconciled: item=%s was delivered (%s)", item.item_id, sender.channel)
                continue
        try:
            ref = sender.send(item)
        except TransportError as exc:
            _record_failure(ledger, report, item, sender, "send", exc)
            continue
        ledger.mark_sent(item.item_id, checksum=item.checksum, transport_ref=ref)
        report.sent.append(item.item_id)
    summary = Counter({k: v for k, v in report.counts().items() if v})
    log.info("release via %s: %s", sender.channel, dict(summary) or "nothing to do")
    return report


def _record_failure(ledger: Ledger, report: ReleaseReport, item: Outbound, sender: Sender, step: str,
                    exc: TransportError) -> None:
    """A transport error leaves the item ``failed`` (retried by the next attempt) and in the run's report."""
    ledger.mark_failed(item.item_id, str(exc))
    report.failed[item.item_id] = str(exc)
    log.warning("%s failed: item=%s channel=%s error=%s", step, item.item_id, sender.channel, exc)
