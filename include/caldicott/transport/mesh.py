"""MESH sender: one MESH message per item, following the MESH API (NHS England, mesh-api-specification).

Wraps one or more ``mesh_client.MeshClient`` (built by :func:`make_client` here, or by the Airflow ``MeshHook``);
with several, up to that many sends are in flight at once (:class:`MeshSender`).

* **Addressing and metadata** come from the item: ``address`` is ``Mex-To`` (a mailbox id, or a GP Connect
  ``GPPROVIDER_...`` routing address), and ``headers`` may set ``workflow_id``, ``local_id`` (default: the ledger
  item id), ``subject``, ``filename`` and ``content_type``.
* **Chunking**: MESH accepts at most 100 MB of data in one request; larger messages go as ordered chunks, each
  "smaller than 100MB" (MESH API, "Outbox workflow" / "Send chunked message"). :data:`MAX_CHUNK_BYTES` is that
  limit; ``MeshSettings.max_chunk_bytes`` (connection extra ``max_chunk_bytes``) lowers it, e.g. for a receiver
  with a smaller limit, or for tests.
* **Crash recovery** uses MESH's current tracking endpoint, ``GET outbox/tracking?messageID=``
  (``MeshClient.track_message``): with a :class:`~caldicott.transport.mesh_journal.MeshJournal` attached, the
  message id MESH returns is journalled before anything else, and :meth:`MeshSender.already_delivered` asks
  MESH about that message. An item counts as delivered only on MESH's word that it holds *this* message for its
  recipient: tracking status ``accepted`` or ``acknowledged`` (:data:`DELIVERED`) for a message with this item's
  file name. A message MESH does not know (404) or reports in another state is not delivered and the item is
  sent again, with the same file name, MESH local id and document ids; a message MESH could not deliver
  (``undeliverable``/``error``) is held for a person, as non-delivery reports are. Where MESH may have accepted a
  message but never answered (a timeout, a crash mid-request), the outcome is unknown: the item fails with a
  final error naming it and a person checks MESH, rather than a letter going twice. (Only a sender without a
  journal falls back to the deprecated ``outbox/tracking/{localID}``; it is not used by GP letters or referrer
  updates.)

Inbox reads are filtered by workflow on the server (``workflow_filter``): :func:`read_acks` downloads only the
acknowledgement workflow, parses each ack (:func:`caldicott.letters.gp_connect.parse_ack`) and acknowledges
(removes) it after the caller has taken it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import requests
import urllib3
from mesh_client import MeshError

from caldicott.db import utcnow
from caldicott.transport.base import Outbound, TransportError
from caldicott.transport.mesh_journal import JournalEntry, MeshJournal

if TYPE_CHECKING:
    from mesh_client import MeshClient

log = logging.getLogger(__name__)


#: The most data MESH accepts in one request: "The maximum amount of data allowed by MESH in a single request
#: message is 100MB"; each chunk must be smaller than that (MESH API). Decimal megabytes, the stricter reading.
MAX_CHUNK_BYTES = 100_000_000 - 1


@dataclass(frozen=True)
class MeshSettings:
    """How to reach one MESH mailbox. ``ca_file`` verifies the server; ``cert``/``key`` are the client's.

    ``max_chunk_bytes``: messages larger than this go as chunks of at most this size (at most
    :data:`MAX_CHUNK_BYTES`, the MESH API's limit)."""

    url: str
    mailbox: str
    password: str
    shared_key: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    max_chunk_bytes: int = MAX_CHUNK_BYTES

    def __post_init__(self) -> None:
        if not 0 < int(self.max_chunk_bytes) <= MAX_CHUNK_BYTES:
            raise ValueError(f"max_chunk_bytes must be between 1 and {MAX_CHUNK_BYTES} (the MESH API's limit)")


def make_client(s: MeshSettings) -> MeshClient:
    from mesh_client import MeshClient

    cert = (s.cert_file, s.key_file) if s.cert_file and s.key_file else None
    client = MeshClient(s.url, mailbox=s.mailbox, password=s.password, shared_key=s.shared_key.encode(),
                        cert=cert, verify=s.ca_file, max_retries=2, timeout=60, application_name="caldicott",
                        max_chunk_size=int(s.max_chunk_bytes))
    if s.ca_file:
        # requests would otherwise merge REQUESTS_CA_BUNDLE / certifi into every request (DESIGN.md gotcha)
        client._session.verify = s.ca_file
    # requests re-reads the whole environment for proxy settings on every request (about 0.4 ms of a 2 ms send):
    # read them once, here, for this URL (HTTPS_PROXY / NO_PROXY as at connection time), and stop the re-reading
    client._session.proxies = requests.utils.get_environ_proxies(s.url)
    client._session.trust_env = False
    return client


class _MeshOptions(TypedDict):
    """The MESH headers of one message, as ``MeshClient.send_chunk`` takes them."""

    workflow_id: str
    local_id: str
    filename: str
    content_type: str
    subject: NotRequired[str]


#: MESH tracking states (``status``) that mean MESH holds the message for its recipient. MESH API, "Track outbox"
#: (``GET /messageexchange/{mailbox_id}/outbox/tracking?messageID=``): ``status`` is "message status e.g.
#: 'accepted' 'acknowledged'"; ``accepted`` is a message uploaded in full and waiting in the recipient's inbox (its
#: example: "Alice has not acknowledged the chunked message she received from Bob"), ``acknowledged`` one the
#: recipient downloaded and acknowledged (the same page: the status "has changed from Accepted to Acknowledged").
#: Nothing else is evidence of delivery, least of all a message id MESH merely knows.
DELIVERED = frozenset({"accepted", "acknowledged"})
#: a message whose upload never completed (a chunked message short of its chunks): MESH delivers a chunked
#: message only once all ``n`` chunks arrived ("wait for n-1 other requests before delivering the message", MESH
#: API "Send message"), and this sender never resumes an upload: never delivered, sent again in full.
INCOMPLETE = frozenset({"uploading"})
#: MESH accepted the message but could not deliver it (mesh-sandbox's ``undeliverable``/``error``; a non-delivery
#: report goes to our inbox): not resent by itself, a person decides, as for non-delivery reports
#: (``gp_letters.check_acks``; docs/runbook.md).
UNDELIVERED = frozenset({"undeliverable", "error"})
#: How long after MESH accepted a message its tracking can be trusted to know it: a 404 within this time means
#: MESH holds no such message, so the item is sent again; after it, a 404 may be a delivered message MESH has since
#: deleted, and a person decides. MESH API: messages not downloaded "within five days of delivery are removed from
#: your inbox", and uncollected ones "are completely deleted from the MESH server 30 days after the initial
#: delivery"; the shorter of the two.
TRACKING_WINDOW = dt.timedelta(days=5)


class MeshSender:
    """Sends each item as one MESH message, on one or more ``MeshClient`` connections to the same mailbox.

    ``reconcilable``: MESH can be asked whether an item arrived (tracking by the journalled message id), so the
    gateway may record ``sent`` for a chunk at once and keep ``concurrency`` sends in flight: a crash in between
    is healed by :meth:`already_delivered`, never by a blind resend. Each client is used by one thread at a time
    (a ``requests`` session is not meant to be shared across threads): a send leases one from a pool. The caller
    owns the clients passed in; :meth:`connect` builds a sender that owns its own, and :meth:`close` (or ``with``)
    closes those (mesh_client warns about a client that is never closed).

    ``max_chunk_bytes`` (default: the settings', else :data:`MAX_CHUNK_BYTES`) is the chunk size; ``journal``
    (:meth:`use_journal`) records message ids for crash recovery.
    """

    channel = "mesh"
    reconcilable = True

    def __init__(self, client: MeshClient, workflow_id: str, *, extra_clients: Sequence[MeshClient] = (),
                 max_chunk_bytes: int | None = None, journal: MeshJournal | None = None) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self._clients = [client, *extra_clients]
        self._idle: queue.SimpleQueue[MeshClient] = queue.SimpleQueue()
        for c in self._clients:
            self._idle.put(c)
        self._owned: list[MeshClient] = []
        chunk = max_chunk_bytes or getattr(client, "_max_chunk_size", None) or MAX_CHUNK_BYTES
        self.max_chunk_bytes = min(int(chunk), MAX_CHUNK_BYTES)
        self.journal = journal

    @classmethod
    def connect(cls, settings: MeshSettings, workflow_id: str, *, connections: int = 1,
                journal: MeshJournal | None = None) -> MeshSender:
        """A sender with ``connections`` clients of its own (closed by :meth:`close`)."""
        clients: list[MeshClient] = []
        try:
            for _ in range(max(1, connections)):
                clients.append(make_client(settings))
        except Exception:
            for c in clients:
                c.close()
            raise
        sender = cls(clients[0], workflow_id, extra_clients=clients[1:], max_chunk_bytes=settings.max_chunk_bytes,
                     journal=journal)
        sender._owned = clients
        return sender

    def use_journal(self, journal: MeshJournal) -> MeshSender:
        """Record message ids in ``journal`` (the flows attach their state database's); returns this sender."""
        self.journal = journal
        return self

    @property
    def concurrency(self) -> int:
        """How many sends may be in flight at once: one per client."""
        return len(self._clients)

    @contextlib.contextmanager
    def _lease(self) -> Iterator[MeshClient]:
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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _options(self, item: Outbound) -> _MeshOptions:
        h = item.headers
        out: _MeshOptions = {"workflow_id": h.get("workflow_id") or self.workflow_id,
                             "local_id": h.get("local_id") or item.item_id,
                             "filename": h.get("filename") or f"{item.item_id}.json",
                             "content_type": h.get("content_type") or "application/json"}
        if h.get("subject"):
            out["subject"] = h["subject"]
        return out

    def send(self, item: Outbound) -> str:
        if not item.address:
            raise TransportError(f"item {item.item_id}: no MESH address", retryable=False)
        options = self._options(item)
        data = item.payload
        size = self.max_chunk_bytes
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [data]
        created = False
        try:
            with self._lease() as client:
                if self.journal is not None:
                    self.journal.posting(item.item_id, len(chunks))
                resp = client.send_chunk(item.address, chunks[0], 1, len(chunks), **options)
                if resp.status_code not in (200, 202):
                    raise MeshError(_json(resp))
                message_id = str(_json(resp)["message_id"])
                created = True
                if self.journal is not None:
                    self.journal.accepted(item.item_id, message_id)
                for n, chunk in enumerate(chunks[1:], start=2):
                    client.send_chunk(item.address, chunk, n, len(chunks), message_id=message_id, **options)
                return message_id
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            self._not_created(item, created, certain=exc.response is not None)
            raise TransportError(f"item {item.item_id}: MESH HTTP {code}",
                                 retryable=code is None or code >= 500) from exc
        except MeshError as exc:  # MESH answered with an error document (e.g. 403 forbidden): not transient
            self._not_created(item, created, certain=True)
            raise TransportError(f"item {item.item_id}: MESH refused the message (MeshError)",
                                 retryable=False) from exc
        except requests.ConnectionError as exc:
            # refused / connect timeout / TLS handshake: the request never left, so MESH holds nothing; a reset
            # after it left may have left a message in MESH (the journal keeps "posting": outcome unknown)
            self._not_created(item, created, certain=_never_sent(exc))
            raise TransportError(f"item {item.item_id}: MESH connection error ({type(exc).__name__})") from exc
        except urllib3.exceptions.ResponseError as exc:
            # mesh_client never retries the first request (it could create a second message): it raises this when
            # MESH, or its front end, answered it with a retryable status (429, 502, 503, 504). An answer, not a
            # silence: no message was created (a later chunk's failure leaves the journalled message "uploading")
            self._not_created(item, created, certain=True)
            raise TransportError(f"item {item.item_id}: MESH busy (a retryable HTTP status)") from exc
        except TransportError:
            raise
        except Exception as exc:  # timeouts and resets after the request left: MESH may hold the message
            raise TransportError(f"item {item.item_id}: MESH error {type(exc).__name__}") from exc

    def _not_created(self, item: Outbound, created: bool, *, certain: bool) -> None:
        if self.journal is not None and not created and certain:
            self.journal.not_created(item.item_id)

    def already_delivered(self, item: Outbound) -> str | None:
        """The MESH message id if MESH holds ``item``'s message for its recipient, else None (the gateway sends it
        again); TransportError if MESH cannot say, or a person must decide.

        Evidence of delivery is MESH's tracking of the message the journal recorded for this item: status in
        :data:`DELIVERED` and, where MESH gives one, this item's file name. Why None cannot send a delivered letter
        a second time: the journal holds the id MESH returned for the item's last attempt, and an attempt is made
        only once the previous one's message was found undelivered, so a delivered letter's message is the one
        tracked here; MESH tracks every message it accepted from our outbox while it keeps it (:data:`TRACKING_WINDOW`),
        and a message it delivered is ``accepted`` or ``acknowledged`` there. So None means MESH holds nothing of this
        item for the recipient: an upload that never completed (``uploading``), no such message (404, within the
        window), or a state the MESH API does not describe as delivered. The last is where proof ends: should
        MESH ever report a delivered message under a status not listed, the letter is sent again, and the
        receiver can tell the copy: the same file name, MESH local id and GP Connect ids (MessageHeader, bundles:
        derived from the item id, :func:`caldicott.letters.gp_connect.uid`). The code leans to sending."""
        if self.journal is None:
            return self._by_local_id(item)
        entry = self.journal.lookup(item.item_id)
        if entry is None:
            return None     # no request for this item ever left a journalled sender
        if entry.message_id is None:
            raise TransportError(
                f"item {item.item_id}: MESH outcome unknown (a request left but MESH's reply was never recorded); "
                "look the message up in MESH (MOLES) and record the answer with MeshJournal.resolve before it is "
                "sent again", retryable=False)
        with self._lease() as client:
            try:
                info = client.track_message(entry.message_id)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else None
                if code == 404:
                    return self._untracked(item, entry)
                raise TransportError(f"item {item.item_id}: MESH tracking HTTP {code}") from exc
            except requests.RequestException as exc:
                raise TransportError(
                    f"item {item.item_id}: MESH tracking unavailable ({type(exc).__name__})") from exc
        return self._tracked(item, entry.message_id, dict(info))

    def _tracked(self, item: Outbound, message_id: str, info: dict[str, Any]) -> str | None:
        """What MESH's tracking answer for the journalled message says of ``item`` (see :meth:`already_delivered`).
        Both tracking versions: v2 ``status``/``status_success``/``filename``, v1 ``status``/``statusSuccess``/
        ``fileName`` (mesh_client asks for v2)."""
        status = str(info.get("status") or "").strip().lower()
        success = info.get("status_success", info.get("statusSuccess"))
        failed = success is False or str(success).upper() == "ERROR"
        if status in UNDELIVERED or (status in DELIVERED and failed):
            raise TransportError(f"item {item.item_id}: MESH could not deliver message {message_id} ({status}); "
                                 "a person decides, as for a non-delivery report", retryable=False)
        if status in DELIVERED:
            name, expected = info.get("filename") or info.get("fileName"), self._options(item)["filename"]
            if name and str(name) != expected:
                # the journal names another item's message (e.g. a mistyped MeshJournal.resolve): MESH's word is
                # about that one; whether it holds this item's is unknown, and a person is already involved
                raise TransportError(f"item {item.item_id}: the journalled MESH message {message_id} is file "
                                     f"{name!s}, not {expected}; look the item up in MESH (MOLES) and record the "
                                     "answer with MeshJournal.resolve", retryable=False)
            return str(info.get("message_id") or info.get("messageId") or message_id)
        if status in INCOMPLETE:
            return None     # the upload of a chunked message never completed: MESH never delivers it
        log.warning("reconcile: item=%s MESH message %s is %r, not delivered: sending again", item.item_id,
                    message_id, status)
        return None

    def _untracked(self, item: Outbound, entry: JournalEntry) -> str | None:
        """MESH's tracking does not know the journalled message (404): within :data:`TRACKING_WINDOW` of the journal
        row (MESH's reply, or a person's answer) MESH holds no such message for the recipient, so the item was not
        delivered and goes again; later, the message may have been delivered and deleted since: a person decides.
        (mesh-sandbox tracks every message in the sender's outbox, and a message enters the recipient's inbox before
        the sender's outbox, in one step: it never answers 404 for a message in an inbox.)"""
        age = utcnow() - entry.updated_at if entry.updated_at is not None else None
        if age is not None and age <= TRACKING_WINDOW:
            log.warning("reconcile: item=%s MESH does not know message %s (404), not delivered: sending again",
                        item.item_id, entry.message_id)
            return None
        raise TransportError(f"item {item.item_id}: MESH no longer knows message {entry.message_id}; "
                             "check MESH (MOLES) before sending again", retryable=False)

    def _by_local_id(self, item: Outbound) -> str | None:
        """Deprecated ``outbox/tracking/{localID}``, for senders without a journal whose local id is the item id."""
        if item.headers.get("local_id") not in (None, "", item.item_id):
            raise TransportError(f"item {item.item_id}: cannot reconcile with MESH without a journal",
                                 retryable=False)
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
        return str(data.get("messageID") or data.get("messageId") or data.get("message_id") or "tracked")


def _never_sent(exc: requests.ConnectionError) -> bool:
    """Whether a connection error happened before the request reached MESH (so no message was created)."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, SSLError

    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError | SSLError)


def _json(resp: requests.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {"status_code": resp.status_code}
    return data if isinstance(data, dict) else {"status_code": resp.status_code, "body": data}


def read_acks(client: MeshClient, workflow_id: str | None = None, limit: int = 500) -> Iterator[tuple[str, bytes]]:
    """Yield ``(mesh message id, body)`` for each acknowledgement in the inbox, then remove it.

    Only messages of ``workflow_id`` (default: GP Connect Send Document's ``GPCONNECT_SEND_DOCUMENT_ACK``,
    GPCM-SD-058) are listed: MESH filters the inbox (``workflow_filter``), so other flows' messages in the shared
    mailbox are neither downloaded nor touched."""
    if workflow_id is None:
        from caldicott.letters.gp_connect import ACK_WORKFLOW

        workflow_id = ACK_WORKFLOW
    for n, message_id in enumerate(client.iterate_message_ids(workflow_filter=workflow_id)):
        if n >= limit:
            break
        msg = client.retrieve_message(message_id)
        workflow = getattr(msg, "workflow_id", "") or ""
        message_type = str(getattr(msg, "message_type", "") or "").upper()
        body = msg.read()
        msg.close()
        if workflow != workflow_id or message_type == "REPORT":
            continue    # a filter the server did not apply, or a report (read by mesh_reports)
        yield message_id, body
        client.acknowledge_message(message_id)
