"""Peer fault: a MESH non-delivery report (the practice never collected the letter), through the real
mesh-sandbox. The letter becomes ``undeliverable`` in the ledger, is not resent by a re-run, and is no longer
counted as merely awaiting an ack; the other letters are untouched; the same report twice changes nothing.
The sandbox's admin API plays MESH's central system (``MeshPeer.non_delivery_report``)."""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow, gp_connect
from caldicott.state.migrate import migrate
from caldicott.transport.ledger import Ledger, State, ledger
from caldicott.transport.mesh import MeshSender, read_acks
from caldicott.transport.mesh_reports import read_reports
from sqlalchemy import select

from devtools.demo_service import demo_service
from devtools.peers.gp_responder import respond_once
from devtools.peers.mesh import MeshPeer

from .conftest import figure, letter_of

SEPT = (dt.date(2026, 9, 1), dt.date(2026, 10, 1))
#: A report carries the undelivered message's Mex-LocalID: for Send Document, the sender's ODS code (GPCM-SD-146),
#: so the letter is found by the report's linked MESH message id (the ledger's transport_ref)
ODS = demo_service().ods_code


@pytest.fixture
def mesh(tmp_path):
    with MeshPeer(tmp_path / "mesh") as peer:
        yield peer


def _send_mesh_letters(synth_source, state, mesh) -> list[dict]:
    planned = flow.plan(synth_source.engine, state, *SEPT, "2026-09")
    batches = [b for b in planned["batches"] if b["channel"] == "mesh"]
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW) as sender:
        channels = flow.Channels({"mesh": sender}, demo_service(), "a@x", mesh.SENDER_MAILBOX)
        for b in batches:
            assert flow.send_batch(synth_source.engine, state, b, channels, *SEPT)["failed"] == 0
    return batches


def test_a_non_delivery_report_marks_the_letter_undeliverable_and_nothing_is_resent(synth_source, mesh, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    batches = _send_mesh_letters(synth_source, state, mesh)
    ids = [flow.letter_id(r, e, "gp") for b in batches for r, e in b["letters"]]
    assert len(ids) >= 2
    led = Ledger(state)
    undelivered = ids[0]
    entry = led.entries([undelivered])[undelivered]
    mesh.non_delivery_report(entry.transport_ref, ODS, gp_connect.WORKFLOW)
    with mesh.client(mesh.GP_MAILBOX) as gp:       # the GP answers the letters it did collect (not the first)
        gp.acknowledge_message(next(i for i in gp.list_messages() if letter_of(gp.retrieve_message(i)) == undelivered))
        answered = respond_once(gp)
    assert answered == len(ids) - 1

    with mesh.client(mesh.SENDER_MAILBOX) as inbox:
        acks = flow.record_acks(state, list(read_acks(inbox)))       # acks leave the report in the inbox
        got = flow.record_non_delivery(state, read_reports(inbox, workflow_id=gp_connect.WORKFLOW))
        assert inbox.list_messages() == []                            # ... which is removed once recorded
    assert acks["acked"] == len(ids) - 1
    assert got == {"undeliverable_ids": [undelivered], "reports_unmatched": 0}
    after = led.entries(ids)
    assert after[undelivered].state == State.UNDELIVERABLE
    with state.connect() as conn:
        detail = conn.execute(select(ledger.c.detail).where(ledger.c.item_id == undelivered)).scalar_one()
    assert detail.startswith("MESH non-delivery report") and "code 14" in detail
    assert all(after[i].state == State.ACKED for i in ids[1:])
    assert undelivered not in flow.overdue(state, dt.timedelta(0))    # not "awaiting an ack": a person decides

    # a re-run of the month sends nothing: not the undeliverable letter, not the others
    _send_mesh_letters(synth_source, state, mesh)
    with mesh.client(mesh.GP_MAILBOX) as gp:
        assert gp.list_messages() == []
    # the same report again (a retry after a crash before it was removed from the inbox) changes nothing
    mesh.non_delivery_report(entry.transport_ref, ODS, gp_connect.WORKFLOW)
    with mesh.client(mesh.SENDER_MAILBOX) as inbox:
        assert flow.record_non_delivery(state, read_reports(inbox, workflow_id=gp_connect.WORKFLOW)) == {
            "undeliverable_ids": [], "reports_unmatched": 1}
    assert led.entries([undelivered])[undelivered].state == State.UNDELIVERABLE
    # another flow's report in the shared mailbox is not GP letters' to take (check_acks reads Send Document's only)
    mesh.non_delivery_report("another-flows-message", ODS, "ANOTHER_FLOW_WORKFLOW")
    with mesh.client(mesh.SENDER_MAILBOX) as inbox:
        assert flow.record_non_delivery(state, read_reports(inbox, workflow_id=gp_connect.WORKFLOW)) == {
            "undeliverable_ids": [], "reports_unmatched": 0}
        assert len(inbox.list_messages()) == 1, "another flow's report was consumed"
    figure("fault cases")
