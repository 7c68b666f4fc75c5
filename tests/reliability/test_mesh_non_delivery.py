"""Peer fault: a MESH non-delivery report (the practice never collected the letter), through the real
mesh-sandbox. The letter becomes ``undeliverable`` in the ledger, is not resent by a re-run, and is no longer
counted as merely awaiting an ack; the other letters are untouched; the same report twice changes nothing.
The sandbox's admin API plays MESH's central system (``MeshPeer.non_delivery_report``)."""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow, gp_connect
from caldicott.letters.render import Service
from caldicott.state.migrate import migrate
from caldicott.transport.ledger import Ledger, State, ledger
from caldicott.transport.mesh import MeshSender, read_acks
from caldicott.transport.mesh_reports import read_reports
from sqlalchemy import select

from devtools.peers.gp_responder import respond_once
from devtools.peers.mesh import MeshPeer

from .conftest import figure

SEPT = (dt.date(2026, 9, 1), dt.date(2026, 10, 1))


@pytest.fixture
def mesh(tmp_path):
    with MeshPeer(tmp_path / "mesh") as peer:
        yield peer


def _send_mesh_letters(synth_source, state, mesh) -> list[dict]:
    planned = flow.plan(synth_source.engine, state, *SEPT, "2026-09")
    batches = [b for b in planned["batches"] if b["channel"] == "mesh"]
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW) as sender:
        channels = flow.Channels({"mesh": sender}, Service(), "a@x", mesh.SENDER_MAILBOX)
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
    mesh.non_delivery_report(entry.transport_ref, undelivered, gp_connect.WORKFLOW)
    with mesh.client(mesh.GP_MAILBOX) as gp:       # the GP answers the letters it did collect (not the first)
        gp.acknowledge_message(next(i for i in gp.list_messages()
                                    if gp.retrieve_message(i).local_id == undelivered))
        answered = respond_once(gp)
    assert answered == len(ids) - 1

    with mesh.client(mesh.SENDER_MAILBOX) as inbox:
        acks = flow.record_acks(state, list(read_acks(inbox)))       # acks leave the report in the inbox
        got = flow.record_non_delivery(state, read_reports(inbox))
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
    mesh.non_delivery_report(entry.transport_ref, undelivered, gp_connect.WORKFLOW)
    with mesh.client(mesh.SENDER_MAILBOX) as inbox:
        assert flow.record_non_delivery(state, read_reports(inbox)) == {"undeliverable_ids": [],
                                                                         "reports_unmatched": 1}
    assert led.entries([undelivered])[undelivered].state == State.UNDELIVERABLE
    figure("fault cases")
