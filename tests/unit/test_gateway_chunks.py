"""The gateway's chunked path (issue 3): chunk transactions in the ledger, what each kind of sender may have in
flight, and what a crash or a failing item leaves behind. On SQLite and PostgreSQL.

The senders here are test doubles that look at the ledger while they "send": the real transports are tested
against their peers in tests/peers and, killed mid-chunk, in tests/reliability/test_crash_concurrent_sends.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from caldicott import gateway
from caldicott.policy.evidence import establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.ledger import Intent, Ledger, State, item_id, ledger
from sqlalchemy import select


def letter(n: int) -> Outbound:
    payload = b"%PDF-encrypted-" + str(n).encode()
    return Outbound(item_id("gp_letters", f"R{n}", "assessment", "Z84001"), Purpose.GP_LETTER, "Z84001", "test",
                    payload, Protection.SMIME, facts={"gp_sharing_consent": establish("gp_sharing_consent", payload)})


def plan(engine, items) -> None:
    Ledger(engine).record_intent(Intent(i.item_id, "gp_letters", str(i.purpose), "2026-10-14", i.recipient,
                                        i.channel) for i in items)


class WatchingSender:
    """Records, at each send, the item's ledger state and the previous items' states, and how many were in flight."""

    channel = "test"

    def __init__(self, engine, *, reconcilable: bool, concurrency: int = 1, crash_at: int | None = None,
                 delivered: set[str] = frozenset()) -> None:
        self.ledger = Ledger(engine)
        self.reconcilable = reconcilable
        self.concurrency = concurrency
        self.crash_at = crash_at
        self.delivered = set(delivered)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent: list[str] = []
        self.state_at_send: list[State] = []
        self.unrecorded_before: list[int] = []   # sent earlier but not yet 'sent' in the ledger, at each send

    def send(self, item: Outbound) -> str:
        with self.lock:
            if self.crash_at is not None and len(self.sent) >= self.crash_at:
                raise RuntimeError("worker crashed")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            earlier = list(self.sent)
        self.state_at_send.append(self.ledger.get(item.item_id).state)
        entries = self.ledger.entries(earlier)
        self.unrecorded_before.append(sum(entries[i].state != State.SENT for i in earlier))
        time.sleep(0.002)          # a peer's round trip, so sends can overlap
        with self.lock:
            self.in_flight -= 1
            self.sent.append(item.item_id)
            self.delivered.add(item.item_id)
        return f"ref-{item.item_id}"

    def already_delivered(self, item: Outbound) -> str | None:
        return f"ref-{item.item_id}" if item.item_id in self.delivered else None


def test_claim_and_mark_sent_many_follow_the_per_item_rules(engine):
    items = [letter(i) for i in range(6)]
    plan(engine, items)
    led = Ledger(engine)
    ids = [i.item_id for i in items]
    led.begin_send(ids[1])                                  # a crashed attempt: sending
    led.begin_send(ids[2])
    led.mark_failed(ids[2], "timeout")                      # failed
    led.hold(ids[3], "no certificate")                      # held: not claimable
    led.begin_send(ids[4])
    led.mark_sent(ids[4], checksum="x", transport_ref="r")  # sent: not claimable
    claimed = led.claim([*ids, "gp_letters-unknown"])
    assert claimed == {ids[0]: State.INTENDED, ids[1]: State.SENDING, ids[2]: State.FAILED,
                       ids[5]: State.INTENDED}
    assert led.claim(ids[:1]) == {ids[0]: State.SENDING}   # a second claim sees what the first left
    assert led.get(ids[1]).attempts == 2 and led.get(ids[0]).attempts == 2
    assert led.mark_sent_many([(ids[0], "c0", "r0"), (ids[3], "c3", "r3"), (ids[5], "c5", None)]) == 2
    states = {i: e.state for i, e in led.entries(ids).items()}
    assert states[ids[0]] == states[ids[5]] == State.SENT and states[ids[3]] == State.HELD
    assert led.get(ids[0]).checksum == "c0"


def test_mark_sent_moves_only_a_sending_item_and_records_what_left(engine):
    items = [letter(i) for i in range(3)]
    plan(engine, items)
    led = Ledger(engine)
    a, b, c = (i.item_id for i in items)
    led.begin_send(a)
    led.mark_failed(a, "timeout")
    led.begin_send(a)                                                             # sending again, an old error kept
    assert led.mark_sent(a, checksum="ca", transport_ref="<a@x>") is True
    assert led.mark_sent(a, checksum="other", transport_ref="<other>") is False   # already sent: left as it is
    assert led.mark_sent(b, checksum="cb", transport_ref=None) is False           # intended: never claimed
    led.hold(c, "no certificate")
    assert led.mark_sent(c, checksum="cc", transport_ref=None) is False           # held
    with engine.connect() as conn:
        rows = {r.item_id: r for r in conn.execute(select(ledger).where(ledger.c.item_id.in_([a, b, c])))}
    assert (rows[a].state, rows[a].checksum, rows[a].transport_ref, rows[a].detail) == ("sent", "ca", "<a@x>", None)
    assert rows[a].sent_at is not None and rows[a].sent_at == rows[a].updated_at
    assert (rows[b].state, rows[b].checksum, rows[b].sent_at) == ("intended", None, None)
    assert (rows[c].state, rows[c].checksum) == ("held", None)


def test_smtp_like_sender_one_in_flight_and_each_recorded_before_the_next(engine):
    items = [letter(i) for i in range(20)]
    plan(engine, items)
    sender = WatchingSender(engine, reconcilable=False)
    report = gateway.release(items, sender, engine, chunk=6)
    assert report.sent == [i.item_id for i in items] and sender.sent == report.sent
    assert sender.max_in_flight == 1
    assert set(sender.state_at_send) == {State.SENDING}        # claimed before its bytes left
    assert set(sender.unrecorded_before) == {0}                # every earlier letter already 'sent'
    assert Ledger(engine).counts("gp_letters") == {"sent": 20}


def test_reconcilable_sender_overlaps_sends_and_records_per_chunk(engine):
    items = [letter(i) for i in range(40)]
    plan(engine, items)
    sender = WatchingSender(engine, reconcilable=True, concurrency=4)
    report = gateway.release(items, sender, engine, chunk=8)
    assert sorted(report.sent) == sorted(i.item_id for i in items) and len(sender.sent) == 40
    assert 1 < sender.max_in_flight <= 4
    assert set(sender.state_at_send) == {State.SENDING}
    assert max(sender.unrecorded_before) > 0                   # 'sent' is recorded per chunk, not per letter
    assert Ledger(engine).counts("gp_letters") == {"sent": 40}


@pytest.mark.parametrize("reconcilable", [True, False], ids=["reconcilable", "not-reconcilable"])
def test_worker_crash_stops_the_batch_and_the_rerun_sends_each_once(engine, reconcilable):
    items = [letter(i) for i in range(30)]
    plan(engine, items)
    sender = WatchingSender(engine, reconcilable=reconcilable, concurrency=3, crash_at=11)
    with pytest.raises(RuntimeError, match="worker crashed"):
        gateway.release(items, sender, engine, chunk=8)
    first = list(sender.sent)
    assert len(first) >= 11 and len(first) < 30                # stopped: not every later letter went
    led = Ledger(engine)
    entries = led.entries([i.item_id for i in items])
    assert all(entries[i].state == State.SENT for i in first)  # what left before the crash is recorded
    assert not any(e.state == State.SENT for i, e in entries.items() if i not in first)
    sender.crash_at = None
    report = gateway.release(items, sender, engine, chunk=8)
    assert sorted(first + report.sent) == sorted(i.item_id for i in items)
    assert len(sender.sent) == len(set(sender.sent)) == 30     # each exactly once over both runs
    assert led.counts("gp_letters") == {"sent": 30}


def test_a_letter_that_cannot_be_produced_stops_after_those_before_it(engine):
    items = [letter(i) for i in range(14)]
    plan(engine, items)

    def produce():
        for n, item in enumerate(items):
            if n == 10:
                raise ValueError("template error")
            yield item

    sender = WatchingSender(engine, reconcilable=True, concurrency=2)
    with pytest.raises(ValueError, match="template error"):
        gateway.release(produce(), sender, engine, chunk=4)
    assert sorted(sender.sent) == sorted(i.item_id for i in items[:10])
    assert Ledger(engine).counts("gp_letters") == {"sent": 10, "intended": 4}


def test_transport_errors_are_per_item_on_the_chunked_path(engine):
    items = [letter(i) for i in range(10)]
    plan(engine, items)

    class Flaky(WatchingSender):
        def send(self, item):
            if item.item_id == items[3].item_id:
                raise TransportError("peer refused the connection")
            return super().send(item)

    sender = Flaky(engine, reconcilable=True, concurrency=2)
    report = gateway.release(items, sender, engine, chunk=4)
    assert list(report.failed) == [items[3].item_id] and len(report.sent) == 9
    assert Ledger(engine).counts("gp_letters") == {"sent": 9, "failed": 1}
