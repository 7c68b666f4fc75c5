"""MESH crash reconciliation (:meth:`caldicott.transport.mesh.MeshSender.already_delivered`) against a real
mesh-sandbox, and the outbox journal it reads (:class:`caldicott.transport.mesh_journal.MeshJournal`).

The rule under test: a letter counts as delivered only on MESH's word that it holds *that letter's* message for
the recipient. MESH API, "Track outbox" (``GET /messageexchange/{mailbox_id}/outbox/tracking?messageID=``):
``status`` is "message status e.g. 'accepted' 'acknowledged'", ``accepted`` being a message waiting in the
recipient's inbox and ``acknowledged`` one the recipient downloaded; ``filename`` is the sender's file name.
A message id that MESH merely knows, or answers 404 for, or reports in another state, is no such word.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from caldicott.db import make_engine, sqlite_url, utcnow
from caldicott.letters import gp_connect
from caldicott.policy.purposes import Protection, Purpose
from caldicott.state.migrate import migrate
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.mesh import DELIVERED, TRACKING_WINDOW, MeshSender
from caldicott.transport.mesh_journal import ACCEPTED, POSTING, MeshJournal
from caldicott.transport.state_tables import mesh_outbox
from sqlalchemy import update

from devtools.peers.mesh import MeshPeer


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-reconcile")) as peer:
        yield peer


@pytest.fixture
def journal(tmp_path):
    state = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(state)
    return MeshJournal(state)


@pytest.fixture
def sender(mesh, journal):
    with MeshSender.connect(mesh.settings(mesh.SENDER_MAILBOX), gp_connect.WORKFLOW, journal=journal) as s:
        yield s


def letter(item_id: str, mesh) -> Outbound:
    """A GP letter as the flow sends it: file name ``<item id>.json``, local id the sender's ODS code
    (GPCM-SD-146, the same for every letter)."""
    return Outbound(item_id, Purpose.GP_LETTER, "Z84001", "mesh", b'{"resourceType":"Bundle"}', Protection.MESH,
                    address=mesh.GP_MAILBOX,
                    headers={"local_id": "ZZZ01", "filename": f"{item_id}.json"})


def gp_inbox(mesh) -> dict[str, str]:
    """File name -> message id of each message waiting in the GP mailbox (what the practice would download)."""
    with mesh.client(mesh.GP_MAILBOX) as gp:
        out = {}
        for mid in gp.list_messages():
            msg = gp.retrieve_message(mid)
            out[str(msg.filename)] = mid
            msg.close()
        return out


def set_status(mesh, message_id: str, status: str) -> None:
    """Play MESH's central system: append a status event to a message (the sandbox's admin API)."""
    with mesh.client(mesh.SENDER_MAILBOX) as c:
        resp = c._session.post(f"{mesh.url}/messageexchange/admin/message/{message_id}/event", timeout=30,
                               json={"status": status, "event": "TRANSFER", "code": "14", "description": "test"})
        resp.raise_for_status()


def age(journal: MeshJournal, item_id: str, by: dt.timedelta) -> None:
    with journal.engine.begin() as conn:
        conn.execute(update(mesh_outbox).where(mesh_outbox.c.item_id == item_id)
                     .values(updated_at=utcnow() - by))


# ---- what counts as delivered -------------------------------------------------------------------------------------

def test_accepted_and_acknowledged_are_delivered(mesh, sender, journal):
    """``accepted`` (in the GP's inbox) and ``acknowledged`` (downloaded by the GP) are MESH's word of delivery."""
    item = letter("gp_letters-rec-ok", mesh)
    ref = sender.send(item)
    assert gp_inbox(mesh)[f"{item.item_id}.json"] == ref
    assert sender.already_delivered(item) == ref
    with mesh.client(mesh.GP_MAILBOX) as gp:
        gp.acknowledge_message(ref)
    assert sender.already_delivered(item) == ref
    assert {"accepted", "acknowledged"} == DELIVERED


def test_a_message_mesh_does_not_know_is_not_delivered_and_the_letter_goes_again(mesh, sender, journal):
    """A journalled id MESH's tracking answers 404 for is not in any inbox (mesh-sandbox adds a message to the
    recipient's inbox before its sender's outbox, and tracks only what is in the outbox): within the tracking window
    the letter is sent again, once, rather than held or counted delivered. Failed before: held for a person."""
    item = letter("gp_letters-rec-404", mesh)
    journal.posting(item.item_id, 1)
    journal.accepted(item.item_id, "20260101000000000000_NOSUCH")
    assert f"{item.item_id}.json" not in gp_inbox(mesh)
    assert sender.already_delivered(item) is None
    ref = sender.send(item)                                  # what the gateway does with None
    assert journal.lookup(item.item_id).message_id == ref
    assert sender.already_delivered(item) == ref
    assert gp_inbox(mesh)[f"{item.item_id}.json"] == ref


def test_a_404_after_the_tracking_window_is_held_for_a_person(mesh, sender, journal):
    """Past the window a 404 may be a delivered message MESH has since deleted: a person decides."""
    item = letter("gp_letters-rec-404-old", mesh)
    journal.posting(item.item_id, 1)
    journal.accepted(item.item_id, "20260101000000000000_GONE")
    age(journal, item.item_id, TRACKING_WINDOW + dt.timedelta(hours=1))
    with pytest.raises(TransportError, match="no longer knows") as err:
        sender.already_delivered(item)
    assert err.value.retryable is False


def test_another_letters_message_is_no_evidence_for_this_letter(mesh, sender, journal):
    """The journal names a message MESH holds, but it carries another letter (here a person's mistyped answer to
    "outcome unknown"): MESH's ``accepted`` is no word about this letter, which is in no inbox. Failed before:
    the letter was counted delivered while the GP never got it."""
    other = letter("gp_letters-rec-other", mesh)
    other_ref = sender.send(other)
    item = letter("gp_letters-rec-mixup", mesh)
    journal.posting(item.item_id, 1)
    journal.resolve(item.item_id, other_ref)
    with pytest.raises(TransportError, match=r"is file gp_letters-rec-other\.json") as err:
        sender.already_delivered(item)
    assert err.value.retryable is False
    assert f"{item.item_id}.json" not in gp_inbox(mesh)
    assert sender.already_delivered(other) == other_ref


def test_a_message_mesh_could_not_deliver_is_held_not_delivered(mesh, sender, journal):
    """``undeliverable`` / ``error``: MESH accepted it but the GP will not get it; as for a non-delivery report, a
    person decides (never resent by itself, never counted delivered). Failed before: counted delivered."""
    for status in ("undeliverable", "error"):
        item = letter(f"gp_letters-rec-{status}", mesh)
        ref = sender.send(item)
        set_status(mesh, ref, status)
        assert f"{item.item_id}.json" not in gp_inbox(mesh)
        with pytest.raises(TransportError, match="could not deliver") as err:
            sender.already_delivered(item)
        assert err.value.retryable is False


def test_a_status_the_api_does_not_call_delivered_sends_the_letter_again(mesh, sender, journal):
    """Any other status is not evidence: the letter goes again, with the same file name, local id and document
    ids, so a receiver can tell the copy (the code leans to sending). Failed before: counted delivered."""
    item = letter("gp_letters-rec-odd", mesh)
    ref = sender.send(item)
    set_status(mesh, ref, "expired")
    assert f"{item.item_id}.json" not in gp_inbox(mesh)
    assert sender.already_delivered(item) is None


def test_v1_tracking_answers_are_read_the_same_way(mesh, journal):
    """MESH's v1 tracking document (``Accepted``, ``statusSuccess``, ``fileName``) means the same as v2's."""

    class V1Client:
        def __init__(self, answer: dict) -> None:
            self.answer = answer

        def track_message(self, message_id: str) -> dict:
            return {**self.answer, "messageId": message_id}

    item = letter("gp_letters-rec-v1", mesh)
    journal.posting(item.item_id, 1)
    journal.accepted(item.item_id, "M1")
    ok = {"status": "Accepted", "statusSuccess": "SUCCESS", "fileName": f"{item.item_id}.json"}
    assert MeshSender(V1Client(ok), gp_connect.WORKFLOW, journal=journal).already_delivered(item) == "M1"
    failed = {**ok, "statusSuccess": "ERROR"}
    with pytest.raises(TransportError, match="could not deliver"):
        MeshSender(V1Client(failed), gp_connect.WORKFLOW, journal=journal).already_delivered(item)
    uploading = {**ok, "status": "Uploading"}
    assert MeshSender(V1Client(uploading), gp_connect.WORKFLOW, journal=journal).already_delivered(item) is None


# ---- the journal --------------------------------------------------------------------------------------------------

def test_journal_steps(engine):
    """posting replaces any earlier attempt's row (one upsert), accepted records the id, not_created removes only
    a row still posting, resolve records a person's answer; on SQLite and PostgreSQL."""
    j = MeshJournal(engine)
    assert j.lookup("i1") is None
    j.posting("i1", 3)
    e = j.lookup("i1")
    assert (e.state, e.message_id, e.chunks) == (POSTING, None, 3) and e.updated_at is not None
    j.accepted("i1", "M1")
    assert (j.lookup("i1").state, j.lookup("i1").message_id) == (ACCEPTED, "M1")
    j.not_created("i1")                                      # MESH answered: the row stays
    assert j.lookup("i1").message_id == "M1"
    j.posting("i1", 1)                                       # a new attempt replaces it
    assert (j.lookup("i1").state, j.lookup("i1").message_id, j.lookup("i1").chunks) == (POSTING, None, 1)
    j.not_created("i1")
    assert j.lookup("i1") is None
    j.resolve("i2", "M2")
    assert (j.lookup("i2").state, j.lookup("i2").message_id) == (ACCEPTED, "M2")
    j.resolve("i2", None)
    assert j.lookup("i2") is None


def test_journal_writes_from_several_sender_threads(engine):
    """Four sender threads journal at once (as MeshSender's connections do): every row ends as written."""
    j = MeshJournal(engine)

    def work(t: int) -> None:
        for i in range(40):
            j.posting(f"t{t}-{i}", 1)
            j.accepted(f"t{t}-{i}", f"M{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(4):
        for i in range(40):
            e = j.lookup(f"t{t}-{i}")
            assert (e.state, e.message_id) == (ACCEPTED, f"M{t}-{i}")
