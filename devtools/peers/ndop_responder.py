"""NHS England's national data opt-out check, as a TEST DOUBLE answering over the real mesh-sandbox.

mesh-sandbox stores and forwards but does not answer ``SPINE_NTT_UPHOLDING`` requests, so this loop plays
the opt-out service: it downloads each request from the service mailbox (``X26ABC3`` in the demo), returns
the same list minus the NHS numbers it was told have opted out (same file name, same workflow), and
acknowledges the request. Started on purpose by the tests and the demo (no ``start_for_demo``); the mailbox and
the cache key the DAGs need are in :mod:`devtools.peers.ndop_config`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable

from caldicott.policy.ndop import parse_reply
from caldicott.transport.ndop_mesh import WORKFLOW_ID

log = logging.getLogger(__name__)

SERVICE_MAILBOX = "X26ABC3"


def respond_once(client, opted_out: set[str], seen: list | None = None) -> int:
    answered = 0
    for message_id in list(client.iterate_message_ids()):
        msg = client.retrieve_message(message_id)
        workflow, sender, filename = msg.workflow_id, msg.sender, msg.filename
        body = msg.read()
        msg.close()
        if workflow != WORKFLOW_ID:
            continue
        if b"\r" in body or not body.endswith(b"\n"):
            raise ValueError("NDOP request must use LF line endings")
        asked = sorted(parse_reply(body))
        if seen is not None:
            seen.append(len(asked))
        reply = "".join(f"{n},\n" for n in asked if n not in opted_out).encode()
        client.send_message(sender, reply, workflow_id=WORKFLOW_ID, filename=filename,
                            local_id=f"reply-{message_id}", content_type="text/plain")
        client.acknowledge_message(message_id)
        answered += 1
    return answered


class NdopResponder:
    """Answer NDOP requests in a background thread until stopped."""

    def __init__(self, client, opted_out: Iterable[str] = (), interval: float = 0.5) -> None:
        self.client = client
        self.opted_out = {str(n) for n in opted_out}
        self.interval = interval
        self.requests: list[int] = []     # size of each request answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ndop-responder", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                respond_once(self.client, self.opted_out, self.requests)
            except Exception as exc:
                log.warning("ndop responder: %s", type(exc).__name__)
            self._stop.wait(self.interval)

    def start(self) -> NdopResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the MESH client (the responder owns the client it was given)."""
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> NdopResponder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
