"""The NDOP check over the real mesh-sandbox (mutual TLS, HMAC auth), with a test-double responder playing
NHS England's opt-out service: request format, reply, opt-outs derived, cache filled and honoured."""

from __future__ import annotations

import pytest
from caldicott.policy.ndop import MeshNdopTransport, NdopChecker, request_bytes

from devtools.peers.mesh import MeshPeer
from devtools.peers.ndop_responder import SERVICE_MAILBOX, NdopResponder

NUMBERS = ["9990000018", "9990000026", "9990000034", "9990000042"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with MeshPeer(tmp_path_factory.mktemp("mesh-ndop")) as peer:
        yield peer


def test_ndop_check_over_mesh_sandbox(mesh, state_engine, tmp_path):
    assert request_bytes(NUMBERS) == b"9990000018,\n9990000026,\n9990000034,\n9990000042,\n"
    with mesh.client() as client:
        transport = MeshNdopTransport(client, SERVICE_MAILBOX)
        checker = NdopChecker(state_engine, transport, work_dir=tmp_path)
        sent = checker.send(NUMBERS, "test-ndop-1")
        assert sent.sent == 4 and sent.pending == 4
        assert checker.collect("test-ndop-1") is False          # nobody has answered yet
        with NdopResponder(mesh.client(SERVICE_MAILBOX), opted_out=["9990000026"]) as responder:
            import time

            for _ in range(60):
                if checker.collect("test-ndop-1"):
                    break
                time.sleep(0.5)
        assert responder.requests == [4]
        status = checker.status(NUMBERS)
        assert status.complete and status.opted_out == {"9990000026"}
        # within the cache's lifetime nothing is sent again
        again = checker.send(NUMBERS, "test-ndop-2")
        assert again.sent == 0 and again.from_cache == 4 and again.opted_out == {"9990000026"}
        assert not list(tmp_path.glob("*.dat"))                 # the request list is not kept once answered
