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
from caldicott.policy.evidence import establish
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.migrate import migrate
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.ledger import Ledger
from caldicott.transport.mesh import MeshSender, read_acks
from caldicott.transport.mesh_journal import MeshJournal
from caldicott.transport.post import StagedPostSender
from caldicott.transport.smtp import SmtpSender

from devtools.peers.gp_responder import pdf_of, respond_once
from devtools.peers.mesh import MeshPeer
from devtools.peers.print_house import PrintHouse
from devtools.peers.smtp import SmtpPeer
from tests.faults import InjectedFault, crashing

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


def _journal(tmp_path):
    state = make_engine(sqlite_url(tmp_path / "journal.db"))
    migrate(state)
    return MeshJournal(state)


def _gp_inbox(mesh) -> list:
    """(message, body) of every message in the GP mailbox, each then acknowledged (removed)."""
    out = []
    with mesh.client(mesh.GP_MAILBOX) as gp:
        for i in gp.list_messages():
            msg = gp.retrieve_message(i)
            out.append((msg, msg.read()))
            msg.close()
            gp.acknowledge_message(i)
    return out


def test_crash_reconciliation_asks_mesh_by_message_id_through_the_current_tracking_endpoint(mesh, tmp_path):
    """MESH API: ``GET outbox/tracking?messageID=`` (``outbox/tracking/{localID}`` is deprecated, and GP Connect
    sets every letter's local id to the sender's ODS code, GPCM-SD-146): the id MESH returned is journalled as it
    is returned, and reconciliation asks about exactly that message."""
    journal = _journal(tmp_path)
    item = Outbound("gp_letters-track-1", Purpose.GP_LETTER, "Z84001", "mesh", b'{"resourceType":"Bundle"}',
                    Protection.MESH, address=mesh.GP_MAILBOX, headers={"local_id": "ZZZ01"},
                    facts={"gp_sharing_consent": establish("gp_sharing_consent", b'{"resourceType":"Bundle"}')})
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW, connections=2,
                            journal=journal) as sender:
        assert sender.already_delivered(item) is None          # never sent: nothing journalled
        ref = sender.send(item)
        assert journal.lookup(item.item_id).message_id == ref
        assert sender.already_delivered(item) == ref           # MESH's tracking knows the message
        # a request that left without a recorded reply: MESH may hold it; a person decides, nothing is resent
        journal.posting("gp_letters-track-2", 1)
        unknown = Outbound("gp_letters-track-2", Purpose.GP_LETTER, "Z84001", "mesh", b"{}", Protection.MESH,
                           address=mesh.GP_MAILBOX)
        with pytest.raises(TransportError, match="outcome unknown") as err:
            sender.already_delivered(unknown)
        assert err.value.retryable is False
        journal.resolve("gp_letters-track-2", None)            # the person found nothing in MESH
        assert sender.already_delivered(unknown) is None
    (msg, _), = _gp_inbox(mesh)
    assert msg.id() == ref and msg.workflow_id == gp_connect.WORKFLOW and msg.local_id == "ZZZ01"


def test_a_message_larger_than_one_chunk_goes_in_chunks_and_arrives_whole(mesh, tmp_path):
    """MESH API "Send chunked message": each chunk below the limit; ``max_chunk_bytes`` is lowered here so the test
    need not send 100 MB. An upload that stops after the first chunk is ``uploading`` in MESH's tracking, never
    delivered, and is sent again in full."""
    from caldicott.transport.mesh import MAX_CHUNK_BYTES, MeshSettings

    journal = _journal(tmp_path)
    payload = bytes(range(256)) * 1200                           # 307,200 bytes
    settings = MeshSettings(**{**mesh.settings(mesh.SENDER_MAILBOX).__dict__, "max_chunk_bytes": 64 * 1024})
    item = Outbound("gp_letters-big-1", Purpose.GP_LETTER, "Z84001", "mesh", payload, Protection.MESH,
                    address=mesh.GP_MAILBOX, headers={"content_type": "application/pdf"})
    with MeshSender.connect(settings, gp_connect.WORKFLOW, journal=journal) as sender:
        assert sender.max_chunk_bytes == 64 * 1024 < MAX_CHUNK_BYTES
        requests_made: list[tuple[int, int, int]] = []
        real = sender.client.send_chunk

        def spy(recipient, chunk, chunk_num, total_chunks, **kw):
            requests_made.append((chunk_num, total_chunks, len(chunk)))
            return real(recipient, chunk, chunk_num, total_chunks, **kw)

        sender.client.send_chunk = spy
        ref = sender.send(item)
        assert [(n, t) for n, t, _ in requests_made] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
        assert max(size for *_, size in requests_made) == 64 * 1024
        assert journal.lookup(item.item_id).chunks == 5
        assert sender.already_delivered(item) == ref
        # an upload interrupted after chunk 1 of 5: MESH tracks it as uploading; reconciliation says "not sent"
        with mesh.client(mesh.SENDER_MAILBOX) as raw:
            first = raw.send_chunk(mesh.GP_MAILBOX, payload[:65536], 1, 5, workflow_id=gp_connect.WORKFLOW)
            partial_id = first.json()["message_id"]
        journal.posting("gp_letters-big-2", 5)
        journal.accepted("gp_letters-big-2", partial_id)
        partial = Outbound("gp_letters-big-2", Purpose.GP_LETTER, "Z84001", "mesh", payload, Protection.MESH,
                           address=mesh.GP_MAILBOX)
        assert sender.already_delivered(partial) is None
    with pytest.raises(ValueError):
        MeshSettings(**{**settings.__dict__, "max_chunk_bytes": MAX_CHUNK_BYTES + 1})
    got = _gp_inbox(mesh)
    (body,) = [b for m, b in got if m.id() == ref]
    assert body == payload
    assert all(m.id() != partial_id for m, _ in got)             # the interrupted upload was never delivered


def test_registered_practice_routing_address_reaches_the_gp_mailbox(mesh):
    """GPCM-SD-056/063: ``Mex-To`` is ``GPPROVIDER_<NHS number>_<birth date>_<surname>``; the local peer routes it
    as MESH would (mesh-sandbox has no routing of its own)."""
    item = Outbound("gp_letters-route-1", Purpose.GP_LETTER, "Z84001", "mesh", b"{}", Protection.MESH,
                    address="GPPROVIDER_9990000018_19800102_Lee")
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW) as sender:
        sender.send(item)
    assert {"mex_to": "GPPROVIDER_9990000018_19800102_Lee", "mailbox": mesh.GP_MAILBOX} in mesh.routed()
    assert [m.filename for m, _ in _gp_inbox(mesh)] == ["gp_letters-route-1.json"]


def test_a_month_of_letters_through_every_channel_exactly_once(synth_source, mesh, smtp, service, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, *OCT, "2026-10")
    assert planned["batches"]
    printer = PrintHouse(tmp_path / "print")
    client = smtplib.SMTP("127.0.0.1", smtp.port)
    mesh_sender = MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW, connections=4)
    channels = flow.Channels({"smtp": SmtpSender(client, "letters@nhs.example"), "mesh": mesh_sender,
                              "post": StagedPostSender(printer.staging)},
                             service, "letters@nhs.example", mesh.SENDER_MAILBOX, printer.cert_path.read_text())
    # crash after 2 sends in the first batch, then re-run everything twice
    first = planned["batches"][0]
    with pytest.raises(InjectedFault):
        flow.send_batch(synth_source.engine, state, first, crashing(channels, 2), *OCT)
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
    local_ids = [lid for _, lid, _ in answered]          # letter ids, from the MESH file names
    assert len(local_ids) == len(set(local_ids))
    # registered-practice routing (GPCM-SD-056/063): one GPPROVIDER address per MESH letter, none to a mailbox
    routed = [r["mex_to"] for r in mesh.routed()]
    assert sum(a.startswith("GPPROVIDER_999") for a in routed) >= by_channel.get("mesh", 0)
    assert "Assessment letter" in pdf_text(pdf_of(answered[0][2])) or \
        "Discharge letter" in pdf_text(pdf_of(answered[0][2]))
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


def test_no_ack_marks_letters_overdue(synth_source, mesh, service, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, dt.date(2026, 9, 1), dt.date(2026, 10, 1), "2026-09")
    sent = 0
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW) as sender:
        channels = flow.Channels({"mesh": sender}, service, "a@x", mesh.SENDER_MAILBOX)
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
