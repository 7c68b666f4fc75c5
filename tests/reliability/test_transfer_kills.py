"""Crash and retry for transfer_of_care: SIGKILL the send step at the kill points of ``runner.py`` (in a forked child
of ``transfer_kill_runner.py``), re-run it, and check the peers' own records: the receiver's MESH mailbox, the
receiver's SFTP directory, the SMTP server's messages. Every planned report is delivered exactly once (SMTP: once per
distinct Message-ID, with the raw duplicate of the dangerous window counted exactly), none is lost, and a further
re-run sends nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.letters.messages import message_id
from caldicott.transfers import flow
from caldicott.transport.ledger import DONE, Ledger

from devtools.peers.mesh import REFERRER_MAILBOX
from devtools.peers.sftp import SftpPeer
from devtools.peers.smtp import SmtpPeer
from tests.unit.transfers import source

from . import conftest
from .conftest import KILLED, figure, new_state

DAY = source.DAY.isoformat()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    runner = Path(__file__).with_name("transfer_kill_runner.py")
    with mock.patch.object(conftest, "RUNNER", runner):
        z = conftest.Zygote(tmp_path_factory.mktemp("transfer-zygote"))
    try:
        yield z
    finally:
        z.stop()


@pytest.fixture(scope="module")
def planted(synth_source, tmp_path_factory):
    """The records source with transfer rows (each case plans into its own state database)."""
    root = tmp_path_factory.mktemp("transfer-source")
    db = source.copy_source(Path(make_engine(synth_source.url).url.database), root / "records.db")
    engine = make_engine(sqlite_url(db))
    planted = source.plant(engine, mesh_mailbox=REFERRER_MAILBOX)
    engine.dispose()
    return {"url": sqlite_url(db), "planted": planted, "engine": make_engine(sqlite_url(db), readonly=True)}


def _batch(planted, state, kind: str, channel: str, org: str = "") -> dict:
    import datetime as dt

    day = source.DAY
    plan = flow.plan(planted["engine"], state, day, day + dt.timedelta(days=1), DAY)
    (batch,) = [b for b in plan["batches"] if b["kind"] == kind and b["channel"] == channel
                and b["batch_id"].endswith(org)]
    return batch


def _ids(batch: dict) -> set[str]:
    return {flow.report_id(o, batch["kind"]) for o, _ in batch["reports"]}


def _job(planted, url, batch, kills, **peers) -> dict:
    job = {"flow": "transfer", "records_url": planted["url"], "state_url": url, "day": DAY, "batch": batch, **peers}
    if kills and kills[0]["at"] == "after_intent":
        job["plan"] = True
    return job


def _survive(zygote, job: dict, kills: list[dict]) -> tuple[dict, dict]:
    first = kills[0]["at"] == "after_intent" if kills else False
    for n, kill in enumerate(kills):
        run = {**job, "kill": kill, "plan": first and n == 0}
        rc, result = zygote.run(run)
        assert rc == KILLED, (kill, rc, result)
        figure("kill points survived")
        figure("kill points survived: transfer of care")
    done_job = {**job, "plan": False}
    rc, done = zygote.run(done_job)
    assert rc == 0, done
    rc, again = zygote.run(done_job)
    assert rc == 0, again
    return done, again


MESH_CASES = [
    [{"at": "after_intent", "n": 1}],
    [{"at": "before_send", "n": 1}],
    [{"at": "after_send", "n": 1}],
    [{"at": "after_mark", "n": 1}],
    [{"at": "after_send", "n": 1}, {"at": "reconcile", "n": 1}],
]


@pytest.mark.parametrize("kills", MESH_CASES, ids=lambda v: "+".join(f"{k['at']}{k['n']}" for k in v))
def test_receiver_over_mesh_killed_and_rerun(kills, zygote, planted, mesh_peer, tmp_path):
    url, state = new_state(tmp_path)
    batch = _batch(planted, state, "receiver", "mesh", "/ZTMSH1")
    if kills[0]["at"] == "after_intent":   # the child plans again into a fresh database and dies after the intents
        url, state = new_state(tmp_path / "fresh")
    ids = _ids(batch)
    job = _job(planted, url, batch, kills, mesh=mesh_peer.settings(mesh_peer.SENDER_MAILBOX).__dict__)
    _, again = _survive(zygote, job, kills)
    assert again["sent"] == 0 and again["already_sent"] == len(ids)
    arrived = []
    with mesh_peer.client(REFERRER_MAILBOX) as box:
        for mid in box.list_messages():
            msg = box.retrieve_message(mid)
            if msg.local_id in ids:
                arrived.append(msg.local_id)
                box.acknowledge_message(mid)
            msg.close()
    assert sorted(arrived) == sorted(ids), "each report exactly once in the receiver's mailbox"
    led = Ledger(state)
    assert all(led.get(i).state in DONE for i in ids)


SFTP_CASES = [[{"at": "mid_send", "n": 1}], [{"at": "after_send", "n": 1}], [{"at": "before_send", "n": 1}]]


@pytest.mark.parametrize("kills", SFTP_CASES, ids=lambda v: "+".join(f"{k['at']}{k['n']}" for k in v))
def test_receiver_over_sftp_killed_and_rerun(kills, zygote, planted, tmp_path):
    url, state = new_state(tmp_path)
    batch = _batch(planted, state, "receiver", "sftp")
    ids = _ids(batch)
    with SftpPeer(tmp_path / "sftp") as peer:
        sftp = {"port": peer.port, "username": peer.username, "host_key": peer.host_key_line,
                "password": peer.password}
        _, again = _survive(zygote, _job(planted, url, batch, kills, sftp=sftp), kills)
        files = sorted(p.name for p in (peer.root / "transfers").iterdir())
    assert files == sorted(f"{i}.pdf.p7m" for i in ids), "the report once, whole, no .part left"
    assert again["sent"] == 0


SMTP_CASES = [([{"at": "before_send", "n": 2}], 0), ([{"at": "mid_send", "n": 2}], 0),
              ([{"at": "after_send", "n": 2}], 1), ([{"at": "after_mark", "n": 1}], 0)]


@pytest.mark.parametrize(("kills", "dups"), SMTP_CASES,
                         ids=lambda v: v if isinstance(v, int) else "+".join(f"{k['at']}{k['n']}" for k in v))
def test_patient_copies_over_smtp_killed_and_rerun(kills, dups, zygote, planted, tmp_path):
    url, state = new_state(tmp_path)
    batch = _batch(planted, state, "patient", "secure-email")
    ids = _ids(batch)
    assert len(ids) >= 2
    with SmtpPeer(tmp_path / "smtp") as smtp:
        _, again = _survive(zygote, _job(planted, url, batch, kills, smtp_port=smtp.port), kills)
        got = [m["Message-ID"] for m in smtp.messages()]
    assert set(got) == {message_id(i) for i in ids}, "every copy, none lost"
    assert len(got) - len(set(got)) == dups, "raw duplicates: exactly one per kill after the server's 250"
    figure("transfer smtp raw duplicates (same Message-ID)", dups)
    assert again["sent"] == 0
    shutil.rmtree(tmp_path / "smtp", ignore_errors=True)
