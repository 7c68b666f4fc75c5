"""Crash and retry with the gateway's chunked, concurrent path (issue 3): SIGKILL while several MESH sends are in
flight and a chunk's ``sent`` marks are not yet committed, then re-run; and SIGKILL an SMTP batch that spans
several chunks. The peers' own records decide: every planned letter is in the GP mailbox exactly once; SMTP
produces exactly one raw duplicate per kill in its dangerous window, as it does without chunks.

The kills run in forked children of ``runner.py`` (see test_crash_retry.py). This module starts its own
mesh-sandbox so its letters (a half-year each, several chunks per batch) cannot meet another module's.
"""

from __future__ import annotations

import datetime as dt

import pytest
from caldicott.letters import flow
from caldicott.letters.messages import message_id
from caldicott.transport.ledger import DONE, Ledger

from devtools.peers.mesh import MeshPeer
from devtools.peers.smtp import SmtpPeer

from .conftest import KILLED, figure, finish_mesh_letters, gp_inbox_by_letter, new_state

CHUNK = 6          # small chunks, so a batch of ~20 letters spans several and a kill lands between them
CONNECTIONS = 4    # as MeshHook.sender opens by default


@pytest.fixture(scope="module")
def own_mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-concurrent")) as peer:
        yield peer


def _plan(records, state, start: dt.date, end: dt.date, run_key: str, channel: str, practice: str | None):
    planned = flow.plan(records, state, start, end, run_key)
    wanted = f"{run_key}/gp/{channel}/{practice}"
    (batch,) = [b for b in planned["batches"] if b["batch_id"] == wanted]
    return batch


def _ids(batch: dict) -> set[str]:
    return {flow.letter_id(r, e, batch["kind"]) for r, e in batch["letters"]}


def _explain(state, mesh_peer, letters: list[str], inbox: dict[str, list[str]]) -> str:
    """What the ledger, the journal and MESH's tracking say of each letter in question (for the failure message)."""
    from caldicott.transport.mesh_journal import MeshJournal

    journal, entries, lines = MeshJournal(state), Ledger(state).entries(letters), []
    with mesh_peer.client(mesh_peer.SENDER_MAILBOX) as sender:
        for item in letters:
            e, j = entries.get(item), journal.lookup(item)
            tracked = {}
            for mid in {m for m in (e and e.transport_ref, j and j.message_id) if m}:
                try:
                    info = sender.track_message(mid)
                    tracked[mid] = (info.get("status"), info.get("filename"))
                except Exception as exc:   # a diagnostic: say what the lookup said
                    tracked[mid] = repr(exc)
            lines.append(f"{item}: ledger {e and (e.state.value, e.transport_ref)} journal {j} "
                         f"inbox {inbox.get(item, [])} tracking {tracked}")
    return "\n".join(lines)


def _lives(zygote, job: dict, kills: list[dict]) -> tuple[dict, dict]:
    """Each kill point must kill its run; then one run completes and one more finds nothing to do."""
    return zygote.survive(job, kills)


MESH_CASES = [   # (first month, practice, kill points): disjoint half-years, so disjoint letters
    ("2025-01", "Z84001", [{"at": "after_send", "n": 1}]),
    ("2025-01", "Z84002", [{"at": "after_send", "n": 9}]),
    ("2025-07", "Z84001", [{"at": "after_mark", "n": 7}]),
    ("2025-07", "Z84002", [{"at": "before_send", "n": 8}, {"at": "after_send", "n": 3}, {"at": "reconcile", "n": 2}]),
    ("2026-01", "Z84001", [{"at": "after_send", "n": 2}] * 4),
]


@pytest.mark.parametrize(("first", "practice", "kills"), MESH_CASES,
                         ids=["after_send1", "after_send9", "after_mark7", "before8+after3+reconcile2",
                              "after_send2x4"])
def test_concurrent_mesh_sends_killed_and_rerun(first, practice, kills, zygote, own_mesh, synth_source, tmp_path):
    url, state = new_state(tmp_path)
    start = dt.date.fromisoformat(f"{first}-01")
    end = (start + dt.timedelta(days=183)).replace(day=1)
    batch = _plan(synth_source.engine, state, start, end, first, "mesh", practice)
    ids = _ids(batch)
    assert len(ids) > 2 * CHUNK, "the batch must span several chunks"
    job = {"flow": "letters", "records_url": synth_source.url, "state_url": url, "batch": batch, "start": start,
           "end": end, "run_key": first, "mesh": own_mesh.settings(own_mesh.SENDER_MAILBOX).__dict__,
           "mesh_connections": CONNECTIONS, "chunk": CHUNK}
    for kill in kills:
        rc, result = zygote.run({**job, "kill": kill})
        assert rc == KILLED, (kill, rc, result)
    # a kill takes down the sends in flight on the other connections: those letters may end "outcome unknown",
    # held for a person, and are delivered once after the person's answer (finish_mesh_letters)
    held = finish_mesh_letters(zygote, job, state, own_mesh, ids)
    inbox = gp_inbox_by_letter(own_mesh, ids)
    entries = Ledger(state).entries(sorted(ids))
    # each letter the ledger calls delivered is in the GP mailbox exactly once, and as the very message the ledger
    # names (transport_ref: the id MESH returned, or the one reconciliation or a person found by tracking)
    wrong = sorted(i for i in ids if len(inbox.get(i, [])) != 1 or i not in entries
                   or entries[i].transport_ref not in inbox[i])
    assert not wrong, ("the GP mailbox does not hold every planned letter exactly once, as the message the ledger "
                       "names:\n" + _explain(state, own_mesh, wrong, inbox))
    assert len(entries) == len(ids) and all(e.state in DONE for e in entries.values())
    figure("kill points survived", len(kills))
    figure("kill points survived: gp letters mesh, 4 connections", len(kills))
    figure("mesh outcome unknown after a kill (held, resolved by a person)", held["outcome_unknown"])
    figure("mesh outcome unknown: found in MESH by the person (not resent)", held["found_in_mesh"])
    print(f"mesh x{CONNECTIONS} {kills}: {len(ids)} letters in chunks of {CHUNK}, each once in the GP mailbox; "
          f"{held['outcome_unknown']} held as outcome unknown ({held['found_in_mesh']} found in MESH, "
          f"{held['outcome_unknown'] - held['found_in_mesh']} sent after the answer)")


SMTP_CASES = [  # (kill points, raw duplicates expected: one per kill after the server's 250)
    ([{"at": "after_send", "n": 10}], 1),
    ([{"at": "before_send", "n": 8}, {"at": "after_send", "n": 5}], 1),
    ([{"at": "after_mark", "n": 9}], 0),
]


@pytest.mark.parametrize(("kills", "dups"), SMTP_CASES, ids=["after_send10", "before8+after_send5", "after_mark9"])
def test_chunked_smtp_batch_killed_and_rerun(kills, dups, zygote, synth_source, tmp_path):
    url, state = new_state(tmp_path)
    start, end = dt.date(2025, 1, 1), dt.date(2026, 1, 1)
    planned = flow.plan(synth_source.engine, state, start, end, "2025")
    batch = max((b for b in planned["batches"] if b["channel"] == "smime-email"), key=lambda b: len(b["letters"]))
    ids = _ids(batch)
    assert len(ids) > 2 * CHUNK, "the batch must span several chunks"
    with SmtpPeer(tmp_path / "smtp") as smtp:
        job = {"flow": "letters", "records_url": synth_source.url, "state_url": url, "batch": batch, "start": start,
               "end": end, "run_key": "2025", "smtp_port": smtp.port, "chunk": CHUNK}
        done, again = _lives(zygote, job, kills)
        got = [m["Message-ID"] for m in smtp.messages()]
    assert done["failed"] == 0 and again["sent"] == 0 and again["already_sent"] == len(ids)
    assert set(got) == {message_id(i) for i in ids}, "a planned letter is missing at the SMTP server"
    assert len(got) - len(set(got)) == dups, "the chunked path widened SMTP's duplicate window"
    figure("kill points survived", len(kills))
    figure("kill points survived: gp letters smtp, chunked", len(kills))
    figure("smtp raw duplicates from the dangerous window", dups)
