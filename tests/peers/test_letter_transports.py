"""The letter senders against real peers on loopback: aiosmtpd (SMTP) and mesh-sandbox (MESH, mutual TLS)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib

import pytest
from caldicott.crypto import smime
from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow, gp_connect
from caldicott.letters.pdf import pdf_text
from caldicott.letters.render import Service
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.migrate import migrate
from caldicott.transport.base import Outbound
from caldicott.transport.faults import CrashAfter, InjectedFault
from caldicott.transport.ledger import Ledger
from caldicott.transport.mesh import MeshSender, read_acks
from caldicott.transport.post import StagedPostSender
from caldicott.transport.smtp import SmtpSender

from devtools.peers.gp_responder import respond_once
from devtools.peers.mesh import MeshPeer
from devtools.peers.print_house import PrintHouse
from devtools.peers.smtp import SmtpPeer

OCT = (dt.date(2026, 10, 1), dt.date(2026, 11, 1))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh")) as peer:
        yield peer


@pytest.fixture
def smtp(tmp_path):
    with SmtpPeer(tmp_path / "smtp") as peer:
        yield peer


def test_smtp_sender_delivers_to_the_local_server(smtp):
    client = smtplib.SMTP("127.0.0.1", smtp.port)
    item = Outbound("gp_letters-t1", Purpose.PATIENT_COPY, "P1", "secure-email",
                    b"Subject: [secure] x\r\nMessage-ID: <gp_letters-t1@caldicott.invalid>\r\n\r\nhello\r\n",
                    Protection.SECURE_GATEWAY, address="p@patients.example")
    assert SmtpSender(client, "a@nhs.example").send(item) == "<gp_letters-t1@caldicott.invalid>"
    client.quit()
    (msg,) = smtp.messages()
    assert msg["X-Envelope-To"] == "p@patients.example" and msg["Message-ID"] == "<gp_letters-t1@caldicott.invalid>"


def test_mesh_sender_and_tracking_by_local_id(mesh):
    item = Outbound("gp_letters-track-1", Purpose.GP_LETTER, "Z84001", "mesh", b'{"resourceType":"Bundle"}',
                    Protection.MESH, address=mesh.GP_MAILBOX, facts={"gp_sharing_consent": True})
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW, connections=2) as sender:
        assert sender.already_delivered(item) is None
        ref = sender.send(item)
        assert ref and sender.already_delivered(item)
    with mesh.client(mesh.GP_MAILBOX) as gp:
        ids = gp.list_messages()
        found = [gp.retrieve_message(i) for i in ids]
        mine = [m for m in found if m.local_id == item.item_id]
        assert len(mine) == 1 and mine[0].workflow_id == gp_connect.WORKFLOW
        for i in ids:
            gp.acknowledge_message(i)


def test_a_month_of_letters_through_every_channel_exactly_once(synth_source, mesh, smtp, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, *OCT, "2026-10")
    assert planned["batches"]
    printer = PrintHouse(tmp_path / "print")
    client = smtplib.SMTP("127.0.0.1", smtp.port)
    mesh_sender = MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW, connections=4)
    channels = flow.Channels({"smtp": SmtpSender(client, "letters@nhs.example"), "mesh": mesh_sender,
                              "post": StagedPostSender(printer.staging)},
                             Service(), "letters@nhs.example", mesh.SENDER_MAILBOX, printer.cert_path.read_text())
    # crash after 2 sends in the first batch, then re-run everything twice
    first = planned["batches"][0]
    with pytest.raises(InjectedFault):
        flow.send_batch(synth_source.engine, state, first, channels, *OCT, wrap=lambda s: CrashAfter(s, 2))
    for _ in range(2):
        for batch in planned["batches"]:
            result = flow.send_batch(synth_source.engine, state, batch, channels, *OCT)
            assert result["failed"] == 0 and result["refused"] == 0
    client.quit()
    mesh_sender.close()

    expected = {b["batch_id"]: len(b["letters"]) for b in planned["batches"]}
    by_channel: dict[str, int] = {}
    for b in planned["batches"]:
        by_channel[b["channel"]] = by_channel.get(b["channel"], 0) + len(b["letters"])
    # SMTP: every e-mailed letter exactly once (no duplicate Message-IDs)
    mail = smtp.messages()
    ids = [m["Message-ID"] for m in mail]
    assert len(ids) == len(set(ids)) == by_channel.get("smime-email", 0) + by_channel.get("secure-email", 0) \
        + by_channel.get("smime", 0)
    # post: one encrypted file per posted copy
    assert len(printer.files()) == by_channel.get("post", 0)
    # MESH: one message per MESH letter in the GP mailbox, each a bundle carrying a PDF
    answered: list = []
    with mesh.client(mesh.GP_MAILBOX) as gp:
        assert respond_once(gp, keep=answered) == by_channel.get("mesh", 0)
    local_ids = [lid for _, lid, _ in answered]
    assert len(local_ids) == len(set(local_ids))
    assert "Assessment letter" in pdf_text(gp_connect.pdf_of(answered[0][2])) or \
        "Discharge letter" in pdf_text(gp_connect.pdf_of(answered[0][2]))
    # acks come back and mark the MESH letters acked
    with mesh.client(mesh.SENDER_MAILBOX) as box:
        got = flow.record_acks(state, list(read_acks(box)))
    assert got["acked"] == by_channel.get("mesh", 0) and got["unmatched"] == 0
    assert flow.overdue(state, dt.timedelta(0)) == []
    # decrypt one GP S/MIME letter with that practice's key
    keys = synth_source.keys_dir
    smime_mail = [m for m in mail if m.get_content_type() == "application/pkcs7-mime"]
    assert smime_mail
    practice = next(b for b in planned["batches"] if b["channel"] == "smime-email")["batch_id"].split("/")[-1]
    raw = next(r for r in smtp.raw() if f"practice.{practice.lower()}@".encode() in r)
    inner = email.message_from_bytes(smime.open_envelope(raw, (keys / f"{practice}.crt").read_bytes(),
                                                         (keys / f"{practice}.key").read_bytes()),
                                     policy=email.policy.default)
    (pdf,) = [a.get_content() for a in inner.iter_attachments()]
    assert "Re:" in pdf_text(pdf)
    counts = Ledger(state).counts(flow.FLOW, "2026-10")
    assert counts.get("acked", 0) + counts.get("sent", 0) == sum(expected.values())


def test_no_ack_marks_letters_overdue(synth_source, mesh, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, dt.date(2026, 9, 1), dt.date(2026, 10, 1), "2026-09")
    sent = 0
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW) as sender:
        channels = flow.Channels({"mesh": sender}, Service(), "a@x", mesh.SENDER_MAILBOX)
        for batch in planned["batches"]:
            if batch["channel"] == "mesh":
                sent += flow.send_batch(synth_source.engine, state, batch, channels, dt.date(2026, 9, 1),
                                        dt.date(2026, 10, 1))["sent"]
    assert sent
    assert flow.overdue(state, dt.timedelta(hours=1)) == []
    late = flow.overdue(state, dt.timedelta(0))
    assert len(late) == sent
    with mesh.client(mesh.GP_MAILBOX) as gp:
        for i in gp.list_messages():
            gp.acknowledge_message(i)
