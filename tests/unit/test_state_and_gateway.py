"""The state database, the delivery ledger, the quarantine and the release gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

from caldicott import gateway
from caldicott.disclosure import register
from caldicott.policy.evidence import establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.quarantine import Quarantined, counts_by_reason, quarantine
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.ledger import Intent, Ledger, State, item_id


class RecordingSender:
    """A test double for a transport: records what it was given. Real transports have their own tests."""

    channel = "test"

    def __init__(self, fail_on: set[str] = frozenset(), delivered: set[str] = frozenset()):
        self.sent: list[str] = []
        self.fail_on, self.delivered = set(fail_on), set(delivered)

    def send(self, item: Outbound) -> str:
        if item.item_id in self.fail_on:
            raise TransportError("peer refused the connection")
        self.sent.append(item.item_id)
        return f"ref-{item.item_id}"

    def already_delivered(self, item: Outbound) -> str | None:
        return f"ref-{item.item_id}" if item.item_id in self.delivered else None


def letter(n: int, **kw) -> Outbound:
    payload = b"%PDF-encrypted-" + str(n).encode()
    base = dict(item_id=item_id("gp_letters", f"R{n}", "assessment", "Z84001"), purpose=Purpose.GP_LETTER,
                recipient="Z84001", channel="test", payload=payload,
                protection=Protection.SMIME, facts={"gp_sharing_consent": establish("gp_sharing_consent", payload)})
    base.update(kw)
    return Outbound(**base)


def plan(engine, items):
    Ledger(engine).record_intent(Intent(i.item_id, "gp_letters", str(i.purpose), "2026-10-14", i.recipient,
                                        i.channel) for i in items)


def test_item_ids_are_deterministic_and_opaque():
    a = item_id("gp_letters", "R00000001", "discharge", "9991234567")
    assert a == item_id("gp_letters", "R00000001", "discharge", "9991234567")
    assert a != item_id("gp_letters", "R00000001", "assessment", "9991234567")
    assert "9991234567" not in a and a.startswith("gp_letters-")


def test_rerun_sends_nothing_twice(engine):
    items = [letter(i) for i in range(5)]
    plan(engine, items)
    plan(engine, items)                                  # re-planning the interval adds nothing
    sender = RecordingSender()
    first = gateway.release(items, sender, engine)
    second = gateway.release(items, sender, engine)
    assert len(first.sent) == 5 and len(second.already_sent) == 5
    assert sorted(sender.sent) == sorted(i.item_id for i in items)
    assert Ledger(engine).counts("gp_letters") == {"sent": 5}


def test_failed_item_is_kept_and_retried_later(engine):
    items = [letter(i) for i in range(3)]
    plan(engine, items)
    report = gateway.release(items, RecordingSender(fail_on={items[1].item_id}), engine)
    assert report.counts()["failed"] == 1
    assert [e.item_id for e in Ledger(engine).pending("gp_letters")] == [items[1].item_id]
    retry = RecordingSender()
    gateway.release(items, retry, engine)
    assert retry.sent == [items[1].item_id]
    assert Ledger(engine).get(items[1].item_id).attempts == 2


def test_crash_mid_send_is_reconciled_not_resent(engine):
    items = [letter(i) for i in range(2)]
    plan(engine, items)
    ledger = Ledger(engine)
    for i in items:          # the worker died after claiming both; item 0 had reached the peer
        ledger.begin_send(i.item_id)
    sender = RecordingSender(delivered={items[0].item_id})
    report = gateway.release(items, sender, engine)
    assert report.already_sent == [items[0].item_id] and report.sent == [items[1].item_id]
    assert sender.sent == [items[1].item_id]


def test_unplanned_item_does_not_leave(engine):
    sender = RecordingSender()
    report = gateway.release([letter(9)], sender, engine)
    assert report.not_planned and not sender.sent


def test_routine_purpose_needs_its_facts_and_protection(engine):
    no_consent = letter(1, facts={})   # the letters policy established no consent for these bytes
    plain = letter(2, protection=Protection.NONE)
    plan(engine, [no_consent, plain])
    sender = RecordingSender()
    report = gateway.release([no_consent, plain], sender, engine)
    assert set(report.refused) == {no_consent.item_id, plain.item_id} and not sender.sent
    assert Ledger(engine).get(no_consent.item_id).state == State.HELD


def test_non_routine_release_needs_an_approved_register_entry(engine):
    pkg = letter(3, purpose=Purpose.DISCLOSURE, recipient="REQ-1", protection=Protection.CMS, facts={},
                 disclosure_id="D-1")
    plan(engine, [pkg])
    sender = RecordingSender()
    assert pkg.item_id in gateway.release([pkg], sender, engine).refused             # nothing approved
    register.append(engine, "D-1", "approved", "manager1",
                    {"recipient": "REQ-1", "package_checksum": "0" * 64})
    Ledger(engine).release_hold(pkg.item_id)
    assert "differs" in gateway.release([pkg], sender, engine).refused[pkg.item_id]  # other bytes approved
    register.append(engine, "D-1", "approved", "manager1",
                    {"recipient": "REQ-1", "package_checksum": pkg.checksum})
    Ledger(engine).release_hold(pkg.item_id)
    assert gateway.release([pkg], sender, engine).sent == [pkg.item_id]
    assert sender.sent == [pkg.item_id]


def test_quarantine_is_idempotent_and_counted(engine):
    items = [Quarantined("patient", "P0000001", "invalid_nhs_number", "check digit wrong"),
             Quarantined("referral", "R00000002", "discharge_before_referral", "dates reversed")]
    assert quarantine(engine, "gp_letters", "2026-10-14", items) == 2
    assert quarantine(engine, "gp_letters", "2026-10-14", items) == 2
    assert counts_by_reason(engine, "gp_letters", "2026-10-14") == {
        "invalid_nhs_number": 1, "discharge_before_referral": 1}
