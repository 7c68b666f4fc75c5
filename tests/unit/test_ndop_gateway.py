"""The national data opt-out request leaves only through the release gateway, only for NHS England's opt-out service
at the configured mailbox, always ledgered, and never twice after a crash (purpose ``ndop_check``).

The service is the in-memory test double of devtools/ (the real mesh-sandbox round trip, with a SIGKILL between
MESH accepting the request and the ledger recording it, is tests/peers/test_ndop_mesh.py)."""

from __future__ import annotations

import pytest
from caldicott.gateway import release
from caldicott.policy import ndop_cache
from caldicott.policy.ndop import NdopRefused, request_bytes, request_facts
from caldicott.policy.ndop_check import FLOW, NdopChecker
from caldicott.policy.purposes import NDOP_SERVICE, Protection, Purpose
from caldicott.policy.state_tables import ndop_request_file
from caldicott.transport.base import Outbound
from caldicott.transport.ledger import Intent, Ledger, item_id
from sqlalchemy import select

from devtools.peers.ndop_double import NdopDouble
from devtools.peers.ndop_responder import SERVICE_MAILBOX

NUMBERS = ["9990000018", "9990000026", "9990000034"]
KEY = b"k" * 32


@pytest.fixture(autouse=True)
def ndop_mailbox(monkeypatch):
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", SERVICE_MAILBOX)


def _item(state_engine, *, recipient=NDOP_SERVICE, address=SERVICE_MAILBOX, payload=None, protection=Protection.MESH,
          name="x") -> Outbound:
    payload = request_bytes(NUMBERS) if payload is None else payload
    iid = item_id(FLOW, name)
    Ledger(state_engine).record_intent([Intent(iid, FLOW, Purpose.NDOP_CHECK.value, name, recipient, "ndop-double")])
    return Outbound(iid, Purpose.NDOP_CHECK, recipient, "ndop-double", payload, protection, address=address,
                    headers={"filename": f"{name}.dat"}, facts=request_facts(payload))


@pytest.mark.parametrize(("case", "reason"), [
    ({"recipient": "commissioner"}, "recipient is not one ndop_check may go to"),
    ({"address": "X26ABC2"}, "address is not the configured CALDICOTT_NDOP_MAILBOX"),
    ({"address": ""}, "address is not the configured CALDICOTT_NDOP_MAILBOX"),
    ({"payload": b"9990000018,Jane Example,\n"},
     "ndop_check requires nhs_numbers_only (not established for these bytes)"),
    ({"protection": Protection.SFTP}, "protection sftp not allowed for ndop_check"),
])
def test_the_gateway_lets_the_request_go_only_to_the_configured_service(state_engine, case, reason):
    double = NdopDouble()
    item = _item(state_engine, **case)
    report = release([item], double, state_engine)
    assert report.refused == {item.item_id: reason} and not report.sent and double.requests == []
    entry = Ledger(state_engine).get(item.item_id)
    assert entry.state == "held" and "9990000018" not in (reason + str(report.refused))


def test_no_configured_mailbox_refuses_the_request(state_engine, monkeypatch):
    monkeypatch.delenv("CALDICOTT_NDOP_MAILBOX")
    double = NdopDouble()
    item = _item(state_engine)
    assert release([item], double, state_engine).refused == {
        item.item_id: "ndop_check needs CALDICOTT_NDOP_MAILBOX configured"}
    assert double.requests == []


def test_checker_refused_for_another_mailbox_is_ledgered_and_retried_as_a_new_file(state_engine, monkeypatch):
    double = NdopDouble(mailbox="X26ABC2")                  # a transport pointed somewhere else
    checker = NdopChecker(state_engine, KEY, double)
    with pytest.raises(NdopRefused, match="address is not the configured CALDICOTT_NDOP_MAILBOX") as exc:
        checker.send(NUMBERS, "m1")
    assert not any(n in str(exc.value) for n in NUMBERS)
    assert double.requests == []
    with state_engine.connect() as conn:
        first = conn.execute(select(ndop_request_file)).mappings().one()
    assert first["outcome"] == "refused" and first["sealed"] is None                 # closed, nothing kept
    assert Ledger(state_engine).get(first["item_id"]).state == "held"               # the refusal is on record

    double.mailbox = SERVICE_MAILBOX                      # a person fixed the configuration: the next check goes
    assert checker.send(NUMBERS, "m1").sent == 3 and double.requests == [3]
    with state_engine.connect() as conn:
        files = conn.execute(select(ndop_request_file.c.file_id, ndop_request_file.c.item_id)
                             .order_by(ndop_request_file.c.seq)).all()
    assert [f for f, _ in files] == ["m1-1", "m1-2"]
    assert Ledger(state_engine).get(files[1][1]).state == "sent"


def test_every_request_file_is_ledgered_before_it_leaves(state_engine):
    seen = {}

    class Spy(NdopDouble):
        def send(self, item):
            seen["state"] = Ledger(state_engine).get(item.item_id).state   # what the ledger knew as it left
            seen["purpose"] = item.purpose
            return super().send(item)

    double = Spy()
    NdopChecker(state_engine, KEY, double).send(NUMBERS, "m2")
    iid = item_id(FLOW, "m2-1")
    assert seen == {"state": "sending", "purpose": Purpose.NDOP_CHECK}
    assert Ledger(state_engine).get(iid).state == "sent"
    assert Ledger(state_engine).counts(FLOW) == {"sent": 1}


class Crash(BaseException):
    """A worker dying: not a transport error, so the gateway records nothing more for the item."""


class CrashAfterSend(NdopDouble):
    """The service received the file, then the process died before the ledger recorded ``sent``."""

    crash = True

    def send(self, item):
        ref = super().send(item)
        if self.crash:
            self.crash = False
            raise Crash
        return ref


def test_a_crash_between_send_and_ledger_commit_does_not_send_twice(state_engine):
    double = CrashAfterSend(opted_out=["9990000026"])
    checker = NdopChecker(state_engine, KEY, double)
    with pytest.raises(Crash):
        checker.send(NUMBERS, "m3")
    iid = item_id(FLOW, "m3-1")
    assert double.requests == [3] and Ledger(state_engine).get(iid).state == "sending"

    again = NdopChecker(state_engine, KEY, double).send(NUMBERS, "m3")   # the retry: reconciled, not resent
    assert double.requests == [3] and again.sent == 0
    assert Ledger(state_engine).get(iid).state == "sent"
    assert checker.collect("m3") and checker.status(NUMBERS).opted_out == {"9990000026"}
    assert NdopChecker(state_engine, KEY, double).send(NUMBERS, "m3").sent == 0 and double.requests == [3]


def test_a_crash_before_the_file_is_recorded_plans_the_same_item(state_engine, monkeypatch):
    double = NdopDouble()
    real = ndop_cache.add_file

    def dies(*a, **kw):
        raise Crash

    monkeypatch.setattr(ndop_cache, "add_file", dies)
    with pytest.raises(Crash):
        NdopChecker(state_engine, KEY, double).send(NUMBERS, "m4")
    assert Ledger(state_engine).get(item_id(FLOW, "m4-1")).state == "intended"     # intent first
    monkeypatch.setattr(ndop_cache, "add_file", real)
    NdopChecker(state_engine, KEY, double).send(NUMBERS, "m4")
    assert double.requests == [3] and list(double.received) == [item_id(FLOW, "m4-1")]
    assert Ledger(state_engine).counts(FLOW) == {"sent": 1}
