"""MESH sender: one MESH message per item, with ``local_id`` = the ledger item id.

Wraps one or more ``mesh_client.MeshClient`` (built by :func:`make_client` here, or by the Airflow ``MeshHook``);
with several, up to that many sends are in flight at once (:class:`MeshSender`).
After a crash between MESH accepting a message and the ledger recording it, :meth:`already_delivered`
asks MESH's outbox tracking for the item's ``local_id``; if MESH knows it, the message left and is not sent
again. (The by-local-id tracking endpoint is deprecated in the MESH API but served by MESH and
mesh-sandbox; where it is not, the outbox is the fallback.)

Acknowledgements of GP Connect messages come back on the ``_ACK`` workflow: :func:`read_acks` downloads
them, parses them (:func:`caldicott.letters.gp_connect.parse_ack`) and acknowledges (removes) them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import requests
from mesh_client import MeshError

from caldicott.transport.base import Outbound, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshSettings:
    """How to reach one MESH mailbox. ``ca_file`` verifies the server; ``cert``/``key`` are the client's."""

    url: str
    mailbox: str
    password: str
    shared_key: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def make_client(s: MeshSettings):
    from mesh_client import MeshClient

    cert = (s.cert_file, s.key_file) if s.cert_file and s.key_file else None
    client = MeshClient(s.url, mailbox=s.mailbox, password=s.password, shared_key=s.shared_key.encode(),
                        cert=cert, verify=s.ca_file, max_retries=2, timeout=60, application_name="caldicott")
    if s.ca_file:
        # requests would otherwise merge REQUESTS_CA_BUNDLE / certifi into every request (DESIGN.md gotcha)
        client._session.verify = s.ca_file
    # requests re-reads the whole environment for proxy settings on every request (about 0.4 ms of a 2 ms send):
    # read them once, here, for this URL (HTTPS_PROXY / NO_PROXY as at connection time), and stop the re-reading
    client._session.proxies = requests.utils.get_environ_proxies(s.url)
    client._session.trust_env = False
    return client


class MeshSender:
    """Sends each item as one MESH message, on one or more ``MeshClient`` connections to the same mailbox.

    ``reconcilable``: MESH can be asked whether an item arrived (outbox tracking by ``local_id``), so the
    gateway may record ``sent`` for a chunk at once and keep ``concurrency`` sends in flight: a crash in
    between is healed by :meth:`already_delivered`, never by a blind resend. Each client is used by one thread
    at a time (a ``requests`` session is not meant to be shared across threads): a send leases one from a
    pool. The caller owns the clients passed in; :meth:`connect` builds a sender that owns its own, and
    :meth:`close` (or ``with``) closes those (mesh_client warns about a client that is never closed).
    """

    channel = "mesh"
    reconcilable = True

    def __init__(self, client, workflow_id: str, *, extra_clients: Sequence = ()) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self._clients = [client, *extra_clients]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for c in self._clients:
            self._idle.put(c)
        self._owned: list = []

    @classmethod
    def connect(cls, settings: MeshSettings, workflow_id: str, *, connections: int = 1) -> MeshSender:
        """A sender with ``connections`` clients of its own (closed by :meth:`close`)."""
        clients: list = []
        try:
            for _ in range(max(1, connections)):
                clients.append(make_client(settings))
        except Exception:
            for c in clients:
                c.close()
            raise
        sender = cls(clients[0], workflow_id, extra_clients=clients[1:])
        sender._owned = clients
        return sender

    @property
    def concurrency(self) -> int:
        """How many sends may be in flight at once: one per client."""
        return len(self._clients)

    @contextlib.contextmanager
    def _lease(self) -> Iterator:
        client = self._idle.get()
        try:
            yield client
        finally:
            self._idle.put(client)

    def close(self) -> None:
        """Close the clients this sender opened itself (not those the caller passed in)."""
        owned, self._owned = self._owned, []
        for c in owned:
            c.close()

    def __enter__(self) -> MeshSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, item: Outbound) -> str:
        if not item.address:
            raise TransportError(f"item {item.item_id}: no MESH mailbox", retryable=False)
        try:
            with self._lease() as client:
                return client.send_message(
                    item.address, item.payload, workflow_id=item.headers.get("workflow_id", self.workflow_id),
                    local_id=item.item_id, filename=item.headers.get("filename", f"{item.item_id}.json"),
                    subject=item.headers.get("subject"),
                    content_type=item.headers.get("content_type", "application/json"))
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            raise TransportError(f"item {item.item_id}: MESH HTTP {code}",
                                 retryable=code is None or code >= 500) from exc
        except MeshError as exc:  # MESH answered with an error document (e.g. 403 forbidden): not transient
            raise TransportError(f"item {item.item_id}: MESH refused the message (MeshError)",
                                 retryable=False) from exc
        except Exception as exc:  # connection errors, timeouts
            raise TransportError(f"item {item.item_id}: MESH error {type(exc).__name__}") from exc

    def already_delivered(self, item: Outbound) -> str | None:
        with self._lease() as client:
            session = getattr(client, "_session", None)
            url = getattr(client, "mailbox_url", None)
            if session is None or url is None:
                return None
            try:
                resp = session.get(f"{url}/outbox/tracking/{item.item_id}", timeout=30,
                                   headers={"Accept": "application/vnd.mesh.v1+json"})
            except requests.RequestException as exc:
                raise TransportError(
                    f"item {item.item_id}: MESH tracking unavailable ({type(exc).__name__})") from exc
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise TransportError(f"item {item.item_id}: MESH tracking HTTP {resp.status_code}")
        data = resp.json()
        return data.get("messageID") or data.get("messageId") or data.get("message_id") or "tracked"


def read_acks(client, workflow_suffix: str = "_ACK", limit: int = 500) -> Iterator[tuple[str, bytes]]:
    """Yield ``(mesh message id, body)`` for each acknowledgement message in the inbox, then remove it."""
    for n, message_id in enumerate(client.iterate_message_ids()):
        if n >= limit:
            break
        msg = client.retrieve_message(message_id)
        workflow = getattr(msg, "workflow_id", "") or ""
        body = msg.read()
        msg.close()
        if not workflow.endswith(workflow_suffix):
            continue
        yield message_id, body
        client.acknowledge_message(message_id)
