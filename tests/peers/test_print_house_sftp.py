"""Patients' posted copies to the print house over SFTP (asyncssh on loopback, ``devtools/peers/sftp.py``):
one encrypted file per letter in the day's batch folder, opened only with the print house's key, never half a
file, and never twice after a crash mid-batch. A changed host key sends nothing."""

from __future__ import annotations

import asyncssh
import pytest
from caldicott.crypto import smime
from caldicott.db import make_engine, sqlite_url
from caldicott.letters import flow
from caldicott.letters.pdf import pdf_text
from caldicott.state.migrate import migrate
from caldicott.transport.post import SftpPostSender
from caldicott.transport.sftp import SftpSender

from devtools.demo_service import demo_service
from devtools.peers.print_house import REMOTE_PATH, PrintHouse
from tests.faults import InjectedFault, crashing
from tests.peers.test_letter_transports import OCT


@pytest.fixture
def printer(tmp_path):
    house = PrintHouse(tmp_path / "print", sftp=True)
    yield house
    house.stop()


def _channels(printer, host_key: str | None = None) -> flow.Channels:
    sender = SftpPostSender(SftpSender(printer.sftp.connector(host_key=host_key), peer="print house"), REMOTE_PATH)
    return flow.Channels({"post": sender}, demo_service(), "letters@nhs.example", "", printer.cert_path.read_text())


def test_posted_copies_arrive_once_each_encrypted_to_the_print_house(synth_source, printer, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, *OCT, "2026-10")
    (post,) = [b for b in planned["batches"] if b["channel"] == "post"]
    assert len(post["letters"]) >= 3
    channels = _channels(printer)
    with pytest.raises(InjectedFault):      # the worker dies after two uploads ...
        flow.send_batch(synth_source.engine, state, post, crashing(channels, 2), *OCT)
    for _ in range(2):                        # ... and the retry, and a re-run of the day, post the rest once
        result = flow.send_batch(synth_source.engine, state, post, channels, *OCT)
        assert result["failed"] == 0 and result["refused"] == 0
    channels.senders["post"].close()

    files = printer.files()
    want = {flow.letter_id(r, e, "patient") for r, e in post["letters"]}
    assert sorted(f.name.split(".")[0] for f in files) == sorted(want)          # each letter once, none lost
    assert {f.parent.name for f in files} == {post["batch_id"].replace("/", "_")}
    assert not list(printer.landing.rglob("*.part"))
    assert all(f.stat().st_mode & 0o777 == 0o640 for f in files)
    ident = printer.identity
    text = pdf_text(smime.open_der(files[0].read_bytes(), ident.cert_pem, ident.key_pem))
    assert "Assessment letter" in text or "Discharge letter" in text
    assert b"%PDF" not in files[0].read_bytes()                                  # encrypted at rest on the peer


def test_a_changed_print_house_host_key_sends_nothing(synth_source, printer, tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    planned = flow.plan(synth_source.engine, state, *OCT, "2026-10")
    (post,) = [b for b in planned["batches"] if b["channel"] == "post"]
    other = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[:2])
    result = flow.send_batch(synth_source.engine, state, post, _channels(printer, host_key=other), *OCT)
    assert result["sent"] == 0 and result["failed"] == len(post["letters"])
    assert printer.files() == []
