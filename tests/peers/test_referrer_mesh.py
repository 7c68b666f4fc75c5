"""Referrer updates to a MESH contract through NHS England's mesh-sandbox on loopback (mutual TLS, HMAC auth):
the file arrives in the referrer's mailbox once, with the contract's workflow id, byte for byte; a re-run sends
nothing; through the Airflow adapter (MeshHook on an AIRFLOW_CONN_* connection) as the DAG does."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from caldicott.transport.ledger import Ledger, item_id
from caldicott.transport.mesh import MeshSender
from caldicott.updates import build, deliver

from devtools.peers.mesh import MeshPeer

DAY = dt.date(2026, 10, 31)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-referrer")) as peer:
        yield peer


def _inbox(peer, mailbox) -> list:
    out = []
    with peer.client(mailbox) as box:
        for mid in box.list_messages():
            msg = box.retrieve_message(mid)
            out.append((msg.local_id, msg.workflow_id, msg.read()))
            msg.close()
            box.acknowledge_message(mid)
    return out


def _mesh_contract(synth_source) -> dict:
    contracts = synth_source.result.frames["contract"]
    cid = contracts.loc[contracts["transport"] == "mesh", "contract_id"].iloc[0]
    return deliver.load_contract(synth_source.engine, cid)


def test_mesh_contract_delivered_once(mesh, synth_source, state_engine):
    contract = _mesh_contract(synth_source)
    cid = contract["contract_id"]
    args = (synth_source.engine, state_engine, cid, DAY, DAY + dt.timedelta(days=1), DAY.isoformat())

    clients = []

    def factory(options, c):
        clients.append(mesh.client(mesh.SENDER_MAILBOX))
        return MeshSender(clients[-1], str(c["mesh_workflow"]))

    try:
        first = deliver.deliver_contract(*args, factory, activity_month=dt.date(2026, 10, 1))
        again = deliver.deliver_contract(*args, factory, activity_month=dt.date(2026, 10, 1))
    finally:
        for client in clients:
            client.close()
    assert first.files == {"sessions": "sent", "activity": "sent"}
    assert again.files == {"sessions": "already_sent", "activity": "already_sent"}
    got = _inbox(mesh, contract["mesh_mailbox"])
    sessions_id = item_id("referrer_updates", cid, "sessions", DAY.isoformat())
    mine = [m for m in got if m[0] == sessions_id]
    assert len(mine) == 1 and mine[0][1] == contract["mesh_workflow"]
    options = build.contract_options(contract)
    bounds = build.london_bounds(DAY, DAY + dt.timedelta(days=1))
    rows, _ = build.screen(build.load_sessions(synth_source.engine, *bounds, options.referrer_ods),
                           build.known_organisations(synth_source.engine))
    assert mine[0][2] == build.sessions_csv(options, rows)
    assert Ledger(state_engine).get(sessions_id).state == "sent"


def test_mesh_contract_through_the_airflow_adapter(mesh, synth_source, state_engine, monkeypatch):
    from caldicott_airflow.referrer_senders import sender_for

    monkeypatch.setenv("AIRFLOW_CONN_CALDICOTT_MESH", json.dumps(mesh.connection()))
    contract = _mesh_contract(synth_source)
    day = dt.date(2026, 10, 30)
    result = deliver.deliver_contract(synth_source.engine, state_engine, contract["contract_id"], day,
                                      day + dt.timedelta(days=1), day.isoformat(), sender_for)
    assert result.files == {"sessions": "sent"}
    sid = item_id("referrer_updates", contract["contract_id"], "sessions", day.isoformat())
    assert [m[0] for m in _inbox(mesh, contract["mesh_mailbox"])] == [sid]
