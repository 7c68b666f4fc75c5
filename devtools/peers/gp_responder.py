"""A GP practice's side of GP Connect Send Document, as a test double: acknowledges what arrives.

mesh-sandbox stores and forwards messages but does **not** route acknowledgements or act as a GP system,
so this small loop plays the practice: it downloads each Send Document message (workflow
``GPCONNECT_SEND_DOCUMENT``) from the GP mailbox (``X26ABC2``), checks it is a FHIR bundle carrying a PDF, and
sends back an ITK3 infrastructure ack (20013) and a business ack (30001) to the sender's mailbox on the ``_ACK``
workflow, then acknowledges (removes) the original. ``codes`` changes what it answers (e.g. only the
infrastructure ack, or a negative code); stopping it (or never starting it) is how the tests make acks go missing.

Not started by the demo's peer discovery (no ``start_for_demo``): the demo and tests start it on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from caldicott.letters import gp_connect

log = logging.getLogger(__name__)


def respond_once(gp_client, codes: tuple[str, ...] = (gp_connect.INFRA_OK, gp_connect.BUSINESS_OK),
                 keep: list | None = None) -> int:
    """Acknowledge every Send Document message in the GP inbox; returns how many were answered."""
    answered = 0
    for message_id in list(gp_client.iterate_message_ids(workflow_filter=gp_connect.WORKFLOW)):
        msg = gp_client.retrieve_message(message_id)
        workflow, sender = msg.workflow_id, msg.sender
        # Send Document's Mex-LocalID is the sender's ODS code (GPCM-SD-146), the same for every letter: the
        # sender names each message's file after its letter id, which is what the tests match on
        letter = str(msg.filename or "").removesuffix(".json")
        body = msg.read()
        msg.close()
        if workflow != gp_connect.WORKFLOW:
            continue
        gp_connect.pdf_of(body)  # a bundle without its PDF would get a negative ack from a real system
        if keep is not None:
            keep.append((message_id, letter, body))
        for code in codes:
            gp_client.send_message(sender, gp_connect.ack_bundle(body, code), workflow_id=gp_connect.ACK_WORKFLOW,
                                   local_id="GPPRACTICE", filename=f"ack-{code}-{letter}.json")
        gp_client.acknowledge_message(message_id)
        answered += 1
    return answered


class GpResponder:
    """Answer in a background thread every ``interval`` seconds until stopped. ``received`` keeps the
    (MESH id, letter id (from the file name), bundle) of each message answered, for tests."""

    def __init__(self, gp_client, interval: float = 0.5,
                 codes: tuple[str, ...] = (gp_connect.INFRA_OK, gp_connect.BUSINESS_OK)) -> None:
        self.client = gp_client
        self.interval = interval
        self.codes = codes
        self.received: list[tuple[str, str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gp-responder", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                respond_once(self.client, self.codes, self.received)
            except Exception as exc:  # keep answering; the tests see missing acks if it keeps failing
                log.warning("gp responder: %s", type(exc).__name__)
            self._stop.wait(self.interval)

    def start(self) -> GpResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the MESH client (the responder owns the client it was given)."""
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> GpResponder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
