"""TEST DOUBLE of NHS England's opt-out service for unit tests that have no MESH: in memory, answers at once.

Not MESH and not NHS England. Tests inject it themselves (``NdopChecker(engine, key, NdopDouble(...))``); nothing
in ``dags/``, ``plugins/`` or ``include/`` can select it. The demo and the end-to-end tests answer the check over
the real mesh-sandbox instead (:mod:`devtools.peers.ndop_responder`).

It plays both halves of :class:`caldicott.policy.ndop_check.NdopTransport`: the sender the release gateway hands
the request to (it records what it received, and says what arrived, so reconciliation after a crash can be
tested) and the reply side. Nothing is written to disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from caldicott.policy.ndop import NdopError, parse_reply
from caldicott.policy.ndop_check import NdopReply
from caldicott.transport.base import Outbound

from devtools.peers.ndop_responder import SERVICE_MAILBOX


class NdopDouble:
    """Answers each request with the numbers asked minus ``opted_out``; ``requests`` counts what arrived."""

    channel = "ndop-double"
    reconcilable = True
    label = "test double (devtools/peers/ndop_double.py)"

    def __init__(self, opted_out: Iterable[str] = (), *, mailbox: str = SERVICE_MAILBOX) -> None:
        self.opted_out = {str(n) for n in opted_out}
        self.mailbox = mailbox
        self.requests: list[int] = []          # size of each request received
        self.received: dict[str, str] = {}     # ledger item id -> reference
        self.replies: dict[str, bytes] = {}    # file name -> reply not yet acknowledged
        self.acknowledged: list[str] = []

    @property
    def sender(self) -> NdopDouble:
        return self

    def headers(self, filename: str) -> dict[str, str]:
        return {"filename": filename, "content_type": "text/plain"}

    def send(self, item: Outbound) -> str:
        payload = item.payload
        if not payload.endswith(b"\n") or b"\r" in payload:
            raise NdopError("request file must use LF line endings")
        asked = sorted(parse_reply(payload))
        self.requests.append(len(asked))
        ref = f"double-{hashlib.sha256(item.item_id.encode()).hexdigest()[:16]}"
        self.received[item.item_id] = ref
        self.replies[item.headers["filename"]] = "".join(f"{n},\n" for n in asked if n not in self.opted_out).encode()
        return ref

    def already_delivered(self, item: Outbound) -> str | None:
        return self.received.get(item.item_id)

    def fetch_reply(self, filename: str) -> NdopReply | None:
        if filename not in self.replies:
            return None

        def ack() -> None:
            self.replies.pop(filename, None)
            self.acknowledged.append(filename)

        return NdopReply(self.replies[filename], ack)
