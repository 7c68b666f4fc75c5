"""The monthly data set's automatic route against real peers, through the same Airflow adapters the DAG uses
(the Variable ``caldicott_dataset_submission`` and ``AIRFLOW_CONN_*`` connections):

* MESH — NHS England's mesh-sandbox on loopback (mutual TLS, HMAC auth): the archive arrives in the
  intermediary's mailbox once, with the configured workflow and the ledger item as local id, decrypts to the
  same tables; a re-run sends nothing; a crash after MESH accepted it is reconciled by MESH tracking, not resent;
* SFTP — the asyncssh server with a pinned host key: the archive lands once under its own name, byte for byte;
  a re-run does not touch it; an unfinished attempt by another route blocks the send; a server that is down fails
  the attempt with nothing recorded, and the next attempt sends once.

Either way the run records the transport's reference in ``dataset_submission`` (state ``submitted``). The refresh of a
month is a submission of its own: after the primary went, it goes once more as its own MESH message (its own local
id) or file (``..._refresh.zip.enc``), and a re-run sends neither again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from caldicott.dataset import pipeline, state_tables
from caldicott.dataset.builder import Period
from caldicott.dataset.calendar import Kind
from caldicott.dataset.submit import RouteConflict, record_automatic, submission_item_id, submit
from caldicott.dataset.writer import load_key, new_key, read_archive, read_archive_bytes
from caldicott.transport.ledger import Ledger, State
from caldicott.transport.staging import StagingSender

from devtools.peers.mesh import MeshPeer
from devtools.peers.sftp import SftpPeer

SEPT = Period.month(2026, 9)
INTERMEDIARY = "X26ABC2"          # a sandbox mailbox standing in for the intermediary's
WORKFLOW = "IAPT_V2_SUBMISSION"   # agreed with the intermediary (configuration, not code)
MESH_CONFIG = {"route": "mesh", "mesh_mailbox": INTERMEDIARY, "mesh_workflow": WORKFLOW}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-dataset")) as peer:
        yield peer


@pytest.fixture
def fresh_mesh(tmp_path):
    """A sandbox of its own: MESH tracks by local id, and the month's item id is the same in every test."""
    with MeshPeer(tmp_path / "mesh") as peer:
        yield peer


@pytest.fixture
def sftp(tmp_path):
    with SftpPeer(tmp_path) as peer:
        yield peer


@pytest.fixture
def written(synth_source, state_engine, tmp_path):
    """September 2026 built, validated and written (encrypted) into a fresh state database."""
    s = pipeline.Settings(org_provider="ZZZ01", work_dir=tmp_path / "work", key=load_key(new_key()))
    pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, s)
    return s


def _configure(monkeypatch, **config) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CALDICOTT_DATASET_SUBMISSION", json.dumps(config))


def _send(state_engine, params: dict | None = None, kind: Kind = Kind.PRIMARY) -> dict:
    """What the DAG's stage_submission does: target from params + Variable, sender from connections."""
    from caldicott_airflow.dataset import submission_sender, submission_target

    target = submission_target(params or {"submission_route": "configured"})
    with submission_sender(target) as sender:
        return submit(state_engine, SEPT, target, sender, kind)


def _drain(peer, mailbox: str) -> list[tuple[str, str, str, bytes]]:
    """(message id, local id, workflow, body) of every message in ``mailbox``, acknowledged (removed)."""
    out = []
    with peer.client(mailbox) as box:
        for mid in box.list_messages():
            msg = box.retrieve_message(mid)
            out.append((mid, msg.local_id, msg.workflow_id, msg.read()))
            msg.close()
            box.acknowledge_message(mid)
    return out


def _same_tables(received: dict[str, pd.DataFrame], written: dict[str, pd.DataFrame]) -> None:
    assert set(received) == set(written)
    for name, frame in written.items():
        if name == "manifest":
            assert received[name] == frame
        else:
            pd.testing.assert_frame_equal(received[name], frame, check_exact=True)


def test_mesh_route_delivers_the_archive_once(mesh, written, state_engine, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_MESH", json.dumps(mesh.connection()))
    _configure(monkeypatch, **MESH_CONFIG)
    _drain(mesh, INTERMEDIARY)

    first = _send(state_engine)
    again = _send(state_engine)
    assert (first["sent"], first["route"], first["automatic"]) == (1, "mesh", True)
    assert (again["sent"], again["already_sent"], again["reference"]) == (0, 1, first["reference"])

    [(mid, local_id, workflow, body)] = _drain(mesh, INTERMEDIARY)   # once
    assert (mid, local_id, workflow) == (first["reference"], first["item_id"], WORKFLOW)
    archive = Path(state_tables.get(state_engine, "2026-09")["archive_path"])
    assert body == archive.read_bytes()                               # byte for byte, still encrypted
    _same_tables(read_archive_bytes(body, written.key), read_archive(archive, written.key))

    recorded = record_automatic(state_engine, SEPT, again)
    assert recorded == {**recorded, "state": "submitted", "route": "mesh", "reference": mid}
    row = state_tables.get(state_engine, "2026-09")
    assert row["submission_reference"] == mid and row["submitted_by"].startswith(f"automatic: mesh {INTERMEDIARY}")
    assert record_automatic(state_engine, SEPT, again)["submitted_at"] == recorded["submitted_at"]  # idempotent
    assert Ledger(state_engine).get(first["item_id"]).state == State.SENT   # the intermediary's receipt: not ours
    assert _send(state_engine)["sent"] == 0 and _drain(mesh, INTERMEDIARY) == []


def test_mesh_crash_after_acceptance_is_reconciled_not_resent(fresh_mesh, written, state_engine, monkeypatch):
    """The worker dies after MESH accepted the message but before the ledger said so: MESH tracking knows it."""
    from caldicott.dataset.submit import _outbound, resolve_target, submission_item_id
    from caldicott.transport.ledger import Intent
    from caldicott.transport.mesh import MeshSender

    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_MESH", json.dumps(fresh_mesh.connection()))
    _configure(monkeypatch, **MESH_CONFIG)
    _drain(fresh_mesh, INTERMEDIARY)
    target = resolve_target("configured", MESH_CONFIG, submitter="x")
    iid = submission_item_id(SEPT)
    ledger = Ledger(state_engine)
    ledger.record_intent([Intent(iid, "monthly_dataset", "mandated_dataset", "2026-09", INTERMEDIARY, "mesh",
                                 "2026-09")])
    ledger.begin_send(iid)                                            # sending ...
    row = state_tables.get(state_engine, "2026-09")
    archive = Path(row["archive_path"])
    with fresh_mesh.client() as client:                                     # ... it left ...
        accepted = MeshSender(client, WORKFLOW).send(_outbound(target, iid, SEPT, archive, row))
    # ... and the worker was killed here. The re-run asks MESH before sending:
    out = _send(state_engine)
    assert (out["sent"], out["already_sent"], out["reference"]) == (0, 1, accepted)
    assert [m[0] for m in _drain(fresh_mesh, INTERMEDIARY)] == [accepted]


def test_sftp_route_delivers_the_archive_once(sftp, written, state_engine, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_SFTP_DATASET", json.dumps(sftp.connection()))
    _configure(monkeypatch, route="sftp", sftp_conn_id="caldicott_sftp_dataset", sftp_directory="/inbound/iapt",
               recipient="CSU01")

    first = _send(state_engine)
    landed = sftp.root / "inbound/iapt/iapt_2026-09_v2.1.zip.enc"
    stamp = landed.stat().st_mtime_ns
    again = _send(state_engine)
    assert (first["sent"], first["route"], first["reference"]) == (1, "sftp", "/inbound/iapt/iapt_2026-09_v2.1.zip.enc")
    assert (again["sent"], again["already_sent"]) == (0, 1)
    assert [p.name for p in landed.parent.iterdir()] == [landed.name]   # once, no .part left
    assert landed.stat().st_mtime_ns == stamp                           # the re-run did not touch it
    archive = Path(state_tables.get(state_engine, "2026-09")["archive_path"])
    assert landed.read_bytes() == archive.read_bytes()
    _same_tables(read_archive(landed, written.key), read_archive(archive, written.key))
    assert Ledger(state_engine).get(first["item_id"]).recipient == "CSU01"

    record_automatic(state_engine, SEPT, first)
    row = state_tables.get(state_engine, "2026-09")
    assert row["state"] == "submitted" and row["submission_reference"] == first["reference"]
    # a later run asked to stage it for the submitter finds it already gone by SFTP: nothing staged, no human step
    out = _send(state_engine, {"submission_route": "staged"})
    assert (out["route"], out["automatic"], out["sent"]) == ("sftp", True, 0)


def test_unfinished_staging_blocks_the_sftp_route(sftp, written, state_engine, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_SFTP_DATASET", json.dumps(sftp.connection()))
    _configure(monkeypatch, route="sftp", sftp_conn_id="caldicott_sftp_dataset", sftp_directory="/inbound/iapt")
    blocker = tmp_path / "staging-is-a-file"
    blocker.write_text("x")
    from caldicott.dataset.submit import resolve_target

    failed = submit(state_engine, SEPT, resolve_target("staged", None, submitter="s"), StagingSender(blocker))
    assert failed["failed"] == 1
    with pytest.raises(RouteConflict, match="attempted via staging"):
        _send(state_engine)
    assert list(sftp.root.rglob("*.enc")) == []


def test_intermediary_down_then_up_sends_once(sftp, written, state_engine, monkeypatch):
    """A down intermediary fails the attempt (retried by Airflow) with nothing recorded as submitted; the next
    attempt, with the server back, sends once."""
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_SFTP_DATASET", json.dumps(sftp.connection()))
    _configure(monkeypatch, route="sftp", sftp_conn_id="caldicott_sftp_dataset", sftp_directory="/inbound/iapt")
    sftp.go_down()
    down = _send(state_engine)
    assert (down["sent"], down["failed"], down["reference"]) == (0, 1, None)
    assert Ledger(state_engine).get(down["item_id"]).state == State.FAILED
    assert state_tables.get(state_engine, "2026-09")["state"] == "written"
    with pytest.raises(RuntimeError, match="not sent"):
        record_automatic(state_engine, SEPT, {**down, "reference": "/inbound/iapt/x"})
    sftp.come_up()
    up = _send(state_engine)
    assert (up["sent"], up["reference"]) == (1, "/inbound/iapt/iapt_2026-09_v2.1.zip.enc")
    assert len(list(sftp.root.rglob("*.enc"))) == 1


def _refresh(synth_source, state_engine, settings) -> None:
    """A month later: September built again from the source as its refresh."""
    pipeline.build_validate_write(synth_source.engine, state_engine, SEPT, settings, Kind.REFRESH)


def test_the_refresh_goes_as_its_own_mesh_message(fresh_mesh, written, synth_source, state_engine, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_MESH", json.dumps(fresh_mesh.connection()))
    _configure(monkeypatch, **MESH_CONFIG)
    primary = _send(state_engine)
    record_automatic(state_engine, SEPT, primary)
    _refresh(synth_source, state_engine, written)
    refresh = _send(state_engine, kind=Kind.REFRESH)
    again = [_send(state_engine), _send(state_engine, kind=Kind.REFRESH)]
    assert (primary["sent"], refresh["sent"], refresh["kind"]) == (1, 1, "refresh")
    assert [(a["sent"], a["already_sent"]) for a in again] == [(0, 1), (0, 1)]
    assert again[0]["confirmed"] and not again[1]["confirmed"]
    received = {local_id: body for _mid, local_id, _wf, body in _drain(fresh_mesh, INTERMEDIARY)}
    assert set(received) == {submission_item_id(SEPT), submission_item_id(SEPT, Kind.REFRESH)}     # once each
    archive = Path(state_tables.get(state_engine, "2026-09", Kind.REFRESH)["archive_path"])
    assert received[refresh["item_id"]] == archive.read_bytes() != received[primary["item_id"]]
    recorded = record_automatic(state_engine, SEPT, refresh)
    assert (recorded["kind"], recorded["reference"]) == ("refresh", refresh["reference"])
    assert state_tables.get(state_engine, "2026-09")["submission_reference"] == primary["reference"]


def test_the_refresh_goes_as_its_own_sftp_file(sftp, written, synth_source, state_engine, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_SFTP_DATASET", json.dumps(sftp.connection()))
    _configure(monkeypatch, route="sftp", sftp_conn_id="caldicott_sftp_dataset", sftp_directory="/inbound/iapt")
    _send(state_engine)
    _refresh(synth_source, state_engine, written)
    refresh = _send(state_engine, kind=Kind.REFRESH)
    assert _send(state_engine, kind=Kind.REFRESH)["already_sent"] == 1
    assert refresh["reference"] == "/inbound/iapt/iapt_2026-09_v2.1_refresh.zip.enc"
    assert sorted(p.name for p in (sftp.root / "inbound/iapt").iterdir()) == [
        "iapt_2026-09_v2.1.zip.enc", "iapt_2026-09_v2.1_refresh.zip.enc"]
