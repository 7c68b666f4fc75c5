"""Issue 15: a purpose's required facts are established by the code that owns them, for exactly the bytes that leave.

Through the real gateway (:func:`caldicott.gateway.release`) with a real ledger on a SQLite state database: a fact
typed in by a caller (``{"validated": True}``), evidence minted for other bytes and evidence for another fact are
refused and held with the rule; evidence minted for these bytes passes.
"""

from __future__ import annotations

from typing import Any

import pytest
from caldicott import gateway
from caldicott.db import make_engine, sqlite_url
from caldicott.policy.evidence import Evidence, establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.migrate import migrate
from caldicott.transport.base import Outbound
from caldicott.transport.ledger import Intent, Ledger, State, item_id
from sqlalchemy import Engine, text

PAYLOAD = b"CALDDS1\n-an-encrypted-archive-"


class RecordingSender:
    channel = "test"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, item: Outbound) -> str:
        self.sent.append(item.item_id)
        return f"ref-{item.item_id}"

    def already_delivered(self, item: Outbound) -> str | None:
        return None


@pytest.fixture
def state(tmp_path) -> Engine:
    engine = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(engine)
    return engine


def submission(n: int, facts: Any, payload: bytes = PAYLOAD) -> Outbound:
    return Outbound(item_id("monthly_dataset", "2026-10", "submission", str(n)), Purpose.MANDATED_DATASET,
                    "named-submitter", "test", payload, Protection.STAGED_ENCRYPTED, address="2026-10",
                    headers={"filename": "iapt.zip.enc"}, facts=facts)


def release_one(state: Engine, item: Outbound) -> tuple[RecordingSender, gateway.ReleaseReport]:
    Ledger(state).record_intent([Intent(item.item_id, "monthly_dataset", item.purpose.value, "2026-10",
                                        item.recipient, item.channel)])
    sender = RecordingSender()
    return sender, gateway.release([item], sender, state)


def held_detail(state: Engine, iid: str) -> str:
    with state.connect() as conn:
        return str(conn.execute(text("SELECT detail FROM delivery_ledger WHERE item_id = :i"), {"i": iid}).scalar())


@pytest.mark.parametrize("facts", [
    pytest.param({"validated": True}, id="forged-bool"),                                   # a checklist, not a check
    pytest.param({"validated": establish("validated", b"another archive")}, id="other-bytes"),
    pytest.param({"validated": establish("ndop_applied", PAYLOAD)}, id="other-fact"),
    pytest.param({"validated": Evidence("validated", "0" * 64)}, id="made-up-checksum"),
    pytest.param({"validated": ("validated", establish("validated", PAYLOAD).checksum)}, id="not-evidence"),
    pytest.param({}, id="none"),
])
def test_a_required_fact_not_established_for_these_bytes_is_refused(state, facts):
    item = submission(1, facts)
    sender, report = release_one(state, item)
    assert not sender.sent and set(report.refused) == {item.item_id}
    reason = report.refused[item.item_id]
    assert reason == "mandated_dataset requires validated (not established for these bytes)"
    assert Ledger(state).get(item.item_id).state == State.HELD
    assert held_detail(state, item.item_id) == f"refused by release gateway: {reason}"   # recorded as refusals are


def test_evidence_minted_for_these_bytes_passes(state):
    item = submission(2, {"validated": establish("validated", PAYLOAD)})
    sender, report = release_one(state, item)
    assert not report.refused and sender.sent == [item.item_id]
    assert Ledger(state).get(item.item_id).state == State.SENT


def test_evidence_does_not_survive_a_change_to_the_bytes(state):
    """The same evidence on an item whose payload was altered after the fact was established: refused."""
    evidence = establish("validated", PAYLOAD)
    item = submission(3, {"validated": evidence}, payload=PAYLOAD + b"appended")
    sender, report = release_one(state, item)
    assert not sender.sent and "not established for these bytes" in report.refused[item.item_id]


def test_evidence_names_no_patient_data():
    ev = establish("gp_sharing_consent", b"9990000018 Jane Example")
    assert "9990000018" not in repr(ev) and "Jane" not in repr(ev) and len(ev.checksum) == 64
