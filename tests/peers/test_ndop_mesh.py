"""The NDOP check over the real mesh-sandbox (mutual TLS, HMAC auth), with a stand-in responder playing NHS England's
opt-out service: the request leaves through the release gateway (purpose ``ndop_check``, ledgered) and only for the
configured service mailbox; the reply fills the keyed cache; no NHS number waits in clear on disk; and a worker
SIGKILLed after MESH accepted the request, before the ledger recorded it, does not send it twice."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from caldicott.policy.ndop import NdopRefused, request_bytes
from caldicott.policy.ndop_check import FLOW, NdopChecker
from caldicott.policy.state_tables import ndop_cache, ndop_request_file
from caldicott.transport.ledger import Ledger, item_id
from caldicott.transport.ndop_mesh import WORKFLOW_ID, MeshNdopTransport
from sqlalchemy import select

from devtools.peers.mesh import GP_MAILBOX, MeshPeer
from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = ["9990000018", "9990000026", "9990000034", "9990000042"]
KEY = b"peer-test-ndop-cache-key-0123456789"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-ndop")) as peer:
        yield peer


@pytest.fixture
def workdirs(tmp_path, monkeypatch):
    """The configured service mailbox, and a private temp folder so anything written there is seen."""
    monkeypatch.setenv("CALDICOTT_NDOP_MAILBOX", SERVICE_MAILBOX)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path


def plain_numbers_on_disk(folder: Path) -> list[str]:
    """Files under ``folder`` holding any of the NHS numbers in clear (the state database included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and any(n.encode() in p.read_bytes() for n in NUMBERS))


def collect_until_done(checker: NdopChecker, request_id: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checker.collect(request_id):
            return True
        time.sleep(0.5)
    return False


def test_ndop_check_over_mesh_sandbox_through_the_gateway(mesh, state_engine, workdirs):
    assert request_bytes(NUMBERS) == b"9990000018,\n9990000026,\n9990000034,\n9990000042,\n"
    with mesh.client() as client:
        checker = NdopChecker(state_engine, KEY, MeshNdopTransport(client, SERVICE_MAILBOX))
        sent = checker.send(NUMBERS, "test-ndop-1")
        assert sent.sent == 4 and sent.pending == 4
        iid = item_id(FLOW, "test-ndop-1-1")
        entry = Ledger(state_engine).get(iid)                        # the gateway ledgered what left
        assert entry.state == "sent" and entry.channel == "mesh" and entry.recipient == "nhs-england-ndop"
        assert entry.transport_ref                                  # MESH's message id
        assert plain_numbers_on_disk(workdirs) == []                # awaiting the reply: sealed, nothing in clear
        assert checker.collect("test-ndop-1") is False              # nobody has answered yet

        with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=["9990000026"]) as responder:
            assert collect_until_done(checker, "test-ndop-1")
        assert responder.requests == [4]
        status = checker.status(NUMBERS)
        assert status.complete and status.opted_out == {"9990000026"}
        assert Ledger(state_engine).get(iid).state == "acked"
        with state_engine.connect() as conn:
            keys = set(conn.execute(select(ndop_cache.c.nhs_hash)).scalars())
            done = conn.execute(select(ndop_request_file)).mappings().one()
        assert keys == set(checker.keys.cache_keys(NUMBERS))        # HMAC'd under the deployment's key
        assert done["outcome"] == "replied" and done["sealed"] is None
        assert plain_numbers_on_disk(workdirs) == []
        assert client.list_messages(workflow_filter=f"{WORKFLOW_ID}*") == []   # the reply was acknowledged

        # within the cache's lifetime nothing is sent again
        again = checker.send(NUMBERS, "test-ndop-2")
        assert again.sent == 0 and again.from_cache == 4 and again.opted_out == {"9990000026"}


def test_request_to_another_mailbox_is_refused_and_nothing_leaves(mesh, state_engine, workdirs):
    with mesh.client() as client:
        checker = NdopChecker(state_engine, KEY, MeshNdopTransport(client, GP_MAILBOX))
        with pytest.raises(NdopRefused, match="address is not the configured CALDICOTT_NDOP_MAILBOX"):
            checker.send(NUMBERS, "test-ndop-wrong")
    with mesh.client(GP_MAILBOX) as gp:
        assert gp.list_messages(workflow_filter=f"{WORKFLOW_ID}*") == []
    assert Ledger(state_engine).get(item_id(FLOW, "test-ndop-wrong-1")).state == "held"
    assert plain_numbers_on_disk(workdirs) == []


CHILD = """
import json, os, signal, sys
from caldicott.db import make_engine
from caldicott.policy.ndop_check import NdopChecker
from caldicott.transport.mesh import MeshSettings, make_client
from caldicott.transport.ndop_mesh import MeshNdopTransport

job = json.loads(sys.argv[1])
transport = MeshNdopTransport(make_client(MeshSettings(**job["mesh"])), job["mailbox"])
inner = transport.sender

class KillAfterSend:
    channel, reconcilable, concurrency = inner.channel, True, 1
    def send(self, item):
        inner.send(item)                      # MESH accepted the request ...
        os.kill(os.getpid(), signal.SIGKILL)  # ... and the worker dies before the ledger records it
    def already_delivered(self, item):
        return inner.already_delivered(item)

transport.sender = KillAfterSend()
NdopChecker(make_engine(job["url"]), job["key"].encode(), transport).send(job["numbers"], job["request_id"])
"""


def test_sigkill_after_mesh_accepted_the_request_does_not_send_it_twice(mesh, state_engine, workdirs):
    job = {"mesh": dataclasses.asdict(mesh.settings()), "mailbox": SERVICE_MAILBOX, "url": str(state_engine.url),
           "key": KEY.decode(), "numbers": NUMBERS, "request_id": "test-ndop-kill"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("include", "plugins", "."))}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], env=env, cwd=str(workdirs),
                           capture_output=True, timeout=120)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    iid = item_id(FLOW, "test-ndop-kill-1")
    assert Ledger(state_engine).get(iid).state == "sending"          # MESH has it; the ledger does not know

    with mesh.client() as client:
        checker = NdopChecker(state_engine, KEY, MeshNdopTransport(client, SERVICE_MAILBOX))
        again = checker.send(NUMBERS, "test-ndop-kill")              # the retry reconciles with MESH ...
        assert again.sent == 0 and Ledger(state_engine).get(iid).state == "sent"
        with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=["9990000042"]) as responder:
            assert collect_until_done(checker, "test-ndop-kill")
        assert responder.requests == [4]                             # ... so NHS England got the file once
        assert checker.status(NUMBERS).opted_out == {"9990000042"}
    assert plain_numbers_on_disk(workdirs) == []
