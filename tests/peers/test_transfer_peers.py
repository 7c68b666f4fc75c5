"""transfer_of_care against the real peers on loopback: mesh-sandbox (mutual TLS), aiosmtpd and an asyncssh SFTP
server. Each receiver's report arrives once, on its own channel, decrypts with the receiver's key only, and holds
the policy's fields; the overseas receiver and the one with no channel get nothing; a re-run sends nothing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib
from pathlib import Path

import pytest
from caldicott.crypto.smime import open_der, open_envelope
from caldicott.db import make_engine, sqlite_url
from caldicott.letters.pdf import pdf_text
from caldicott.transfers import flow
from caldicott.transport.ledger import Ledger
from caldicott.transport.mesh import MeshSender
from caldicott.transport.sftp import SftpSender
from caldicott.transport.smtp import SmtpSender

from devtools.peers.mesh import REFERRER_MAILBOX, MeshPeer
from devtools.peers.sftp import SftpPeer
from devtools.peers.smtp import SmtpPeer
from tests.unit.transfers import source

DAY, NEXT = source.DAY, source.DAY + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh")) as peer:
        yield peer


@pytest.fixture
def records(synth_source, tmp_path):
    db = source.copy_source(Path(make_engine(synth_source.url).url.database), tmp_path / "records.db")
    engine = make_engine(sqlite_url(db))
    return engine, source.plant(engine, mesh_mailbox=REFERRER_MAILBOX)


def _send_all(records, state, service, mesh, smtp, sftp) -> tuple[dict, list[dict]]:
    planned = flow.plan(records, state, DAY, NEXT, DAY.isoformat())
    results = []
    for batch in planned["batches"]:
        kind = flow.SENDER_FOR[batch["channel"]]
        ch = flow.Channels({}, service, from_addr="transfers@nhs.example", sender_mailbox=mesh.SENDER_MAILBOX)
        if kind == "smtp":
            client = smtplib.SMTP("127.0.0.1", smtp.port)
            ch.senders["smtp"] = SmtpSender(client, ch.from_addr)
        elif kind == "mesh":
            client = mesh.client(mesh.SENDER_MAILBOX)
            ch.senders["mesh"] = MeshSender(client, "GPCONNECT_SEND_DOCUMENT")
        elif kind == "sftp":
            ch.senders["sftp"] = SftpSender(sftp.connector(), create_dirs=True)
        try:
            results.append(flow.send_batch(records, state, batch, ch, DAY, NEXT))
        finally:
            if kind == "smtp":
                client.quit()
            elif kind == "mesh":
                client.close()
            elif kind == "sftp":
                ch.senders["sftp"].close()
    return planned, results


def _inbox(mesh, mailbox: str) -> list[tuple]:
    out = []
    with mesh.client(mailbox) as box:
        for i in box.list_messages():
            msg = box.retrieve_message(i)
            out.append((msg, msg.read()))
            msg.close()
            box.acknowledge_message(i)
    return out


def _rid(planted, org: str, kind: str = "receiver") -> str:
    return flow.report_id(next(o for o, c in planted.onward.items() if c == org), kind)


def test_each_receiver_gets_its_report_once_on_its_channel(records, state_engine, service, mesh, tmp_path):
    engine, planted = records
    with SmtpPeer(tmp_path / "smtp") as smtp, SftpPeer(tmp_path / "sftp") as sftp:
        planned, results = _send_all(engine, state_engine, service, mesh, smtp, sftp)
        assert not any(r["failed"] for r in results), results
        # MESH receiver: its mailbox, its workflow, the PDF with the policy's content
        inbox = _inbox(mesh, REFERRER_MAILBOX)
        ours = [(m, body) for m, body in inbox if (m.local_id or "").startswith("transfer_of_care-")]
        assert [m.local_id for m, _ in ours] == [_rid(planted, "ZTMSH1")]
        msg, body = ours[0]
        assert msg.workflow_id == source.MESH_WORKFLOW
        text = " ".join(pdf_text(body).split())
        assert source.CONTACT["display_name"] in text and "Low risk" in text
        # S/MIME receiver: decrypts with its key only
        smi = planted.identities["ZTSMI1"]
        to_receiver = [m for m in smtp.raw() if b"transfers@receiver.nhs.example" in m.split(b"\r\n\r\n", 1)[0]]
        assert len(to_receiver) == 1
        inner = email.message_from_bytes(open_envelope(to_receiver[0].split(b"\r\n", 2)[2], smi.cert_pem,
                                                       smi.key_pem), policy=email.policy.default)
        pdf = next(p.get_content() for p in inner.iter_attachments())
        assert source.CONTACT["display_name"] in " ".join(pdf_text(pdf).split())
        other = planted.identities["ZTSFT1"]
        with pytest.raises(Exception):  # noqa: B017 - any refusal: another receiver's key cannot open it
            open_envelope(to_receiver[0].split(b"\r\n", 2)[2], other.cert_pem, other.key_pem)
        # SFTP receiver (Ireland: EEA, adequate): CMS file on its server, whole, decrypts with its key
        files = sorted((sftp.root / "transfers").iterdir())
        assert [f.name for f in files] == [f"{_rid(planted, 'ZTSFT1')}.pdf.p7m"]
        assert "PHQ-9" in pdf_text(open_der(files[0].read_bytes(), other.cert_pem, other.key_pem))
        # patient copies ([secure] e-mail) for the three that went; none for the held and refused receivers
        subjects = [m["Subject"] for m in smtp.messages()]
        assert sum("[secure]" in s for s in subjects) == 3
        # overseas receiver: refused, held in the ledger with the rule; nothing in any mailbox
        us = _rid(planted, "ZTUSA1")
        refused = {k: v for r in results for k, v in r["refused_reasons"].items()}
        assert "US not on the adequacy list" in refused[us] and Ledger(state_engine).get(us).state == "held"
        assert all(m.local_id != us for m, _ in inbox)
        assert _rid(planted, "ZTNON1") in planned["held_ids"]
        # a re-run sends nothing
        before = len(smtp.raw())
        _, again = _send_all(engine, state_engine, service, mesh, smtp, sftp)
        assert sum(r["sent"] for r in again) == 0 and len(smtp.raw()) == before
        assert not [m for m, _ in _inbox(mesh, REFERRER_MAILBOX) if (m.local_id or "").startswith("transfer_of")]
