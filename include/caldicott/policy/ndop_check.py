"""The opt-out check: ask NHS England about what the cache does not cover, through the release gateway.

NHS numbers leave the service here, so they leave the way every other byte does: as an :class:`Outbound` of
purpose ``ndop_check`` handed to :func:`caldicott.gateway.release`, which checks the rule (NHS numbers only; NHS
England's opt-out service, at the mailbox the deployment configured, and nowhere else; over MESH) and moves the
item through the delivery ledger. Each request file has a deterministic id (``<request id>-<n>``) and ledger item,
whose intent is recorded before the file is, and the file (sealed) before anything is sent; so a check that
crashed anywhere and is run again resends the same file as the same item, and the gateway's reconciliation
(MESH tracking by ``local_id``) keeps a file that did arrive from being sent twice.

The transport is small (:class:`NdopTransport`): a :class:`~caldicott.transport.base.Sender` for the request
(only the gateway calls it), the service's mailbox and the headers it needs, and a way to fetch the reply.
MESH: :class:`caldicott.transport.ndop_mesh.MeshNdopTransport`. Nothing is written to disk: the request is built
in memory and kept sealed in the state database (:mod:`caldicott.policy.ndop_cache`) until the reply arrives.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine

from caldicott.policy import ndop_cache
from caldicott.policy.ndop import (
    DEFAULT_TTL,
    NdopError,
    NdopRefused,
    NdopStatus,
    parse_reply,
    request_bytes,
    request_facts,
)
from caldicott.policy.purposes import NDOP_SERVICE, Protection, Purpose
from caldicott.transport.base import Outbound, Sender
from caldicott.transport.ledger import DONE, Intent, Ledger, item_id

log = logging.getLogger(__name__)

FLOW = "ndop_check"


@dataclass(frozen=True)
class NdopReply:
    """A reply file, in memory; ``acknowledge`` removes it from the inbox once its answers are cached."""

    body: bytes
    acknowledge: Callable[[], None]


@runtime_checkable
class NdopTransport(Protocol):
    """How a request reaches NHS England's opt-out service and its reply comes back (MESH in production)."""

    sender: Sender      # moves the request file; only the release gateway calls its ``send``
    mailbox: str        # the service's address (the gateway refuses any but the configured one)
    label: str          # what answered, for the opt-out statement

    def headers(self, filename: str) -> Mapping[str, str]:
        """Transport headers for a request file named ``filename`` (no patient data)."""
        ...

    def fetch_reply(self, filename: str) -> NdopReply | None:
        """The reply to the request file ``filename`` if it has arrived, else None."""
        ...


class NdopChecker:
    """Checks NHS numbers against the opt-out, using and refreshing the time-limited, keyed cache.

    ``secret`` is the deployment's cache key (bytes, at least 32): without it the checker refuses to exist
    (:class:`~caldicott.policy.ndop.NdopKeyMissing`). Without a ``transport`` it reads the cache only.
    """

    def __init__(self, engine: Engine, secret: bytes | None, transport: NdopTransport | None = None, *,
                 ttl: dt.timedelta = DEFAULT_TTL) -> None:
        self.keys = ndop_cache.NdopKeys(secret)
        self.engine = engine
        self.transport = transport
        self.ttl = ttl

    @property
    def label(self) -> str:
        return self.transport.label if self.transport is not None else "cache"

    def cached(self, numbers: Iterable[str], now: dt.datetime | None = None) -> dict[str, bool]:
        """number -> opted out, for the numbers with an unexpired answer."""
        numbers = sorted({str(n) for n in numbers})
        by_key = dict(zip(self.keys.cache_keys(numbers), numbers, strict=True))
        return {by_key[k]: o for k, o in ndop_cache.lookup(self.engine, list(by_key), now).items()}

    def status(self, numbers: Iterable[str]) -> NdopStatus:
        """Opt-out status of ``numbers`` from the cache alone (after :meth:`collect`)."""
        numbers = sorted({str(n) for n in numbers})
        known = self.cached(numbers)
        return NdopStatus(opted_out={n for n, o in known.items() if o}, pending=len(numbers) - len(known),
                          from_cache=len(known))

    def _transport(self) -> NdopTransport:
        if self.transport is None:
            raise NdopError("this opt-out checker reads the cache only (no transport)")
        return self.transport

    def send(self, numbers: Iterable[str], request_id: str) -> NdopStatus:
        """Ask about the numbers the cache does not cover: one request file per request id and round, sent through
        the release gateway at most once (a re-run resends the same file as the same ledger item, or nothing)."""
        transport = self._transport()
        ndop_cache.purge(self.engine)
        numbers = sorted({str(n) for n in numbers})
        known = self.cached(numbers)
        status = NdopStatus(opted_out={n for n, o in known.items() if o}, from_cache=len(known),
                            pending=len(numbers) - len(known), request_id=request_id)
        files = ndop_cache.open_files(self.engine, request_id)
        if not files:
            todo = [n for n in numbers if n not in known]
            if not todo:
                return status
            files = [self._plan(transport, request_id, todo)]
        for f in files:
            if self._release(transport, f):
                status.sent += f.numbers
        return status

    def _plan(self, transport: NdopTransport, request_id: str, todo: list[str]) -> ndop_cache.RequestFile:
        """Ledger intent first, then the sealed file: both before anything can leave."""
        payload = request_bytes(todo)
        file_id = ndop_cache.next_file_id(self.engine, request_id)
        iid = item_id(FLOW, file_id)
        Ledger(self.engine).record_intent([Intent(iid, FLOW, Purpose.NDOP_CHECK.value, request_id, NDOP_SERVICE,
                                                  transport.sender.channel, batch_id=request_id)])
        ndop_cache.add_file(self.engine, self.keys, file_id=file_id, request_id=request_id, item_id=iid,
                            payload=payload, numbers=len(todo))
        files = ndop_cache.open_files(self.engine, request_id)
        if not files:   # closed by a concurrent check in the meantime: nothing left to send
            raise NdopError(f"request {file_id} was closed while it was being planned; run the check again")
        return files[0]

    def _release(self, transport: NdopTransport, f: ndop_cache.RequestFile) -> bool:
        """Through the gateway; True if the file left now (False: it had left before, the reply is awaited)."""
        from caldicott.gateway import release

        entry = Ledger(self.engine).get(f.item_id)
        if entry is not None and entry.state in DONE:
            return False
        if f.sealed is None:
            raise NdopError(f"request {f.file_id} has no sealed copy left to send")
        payload = self.keys.unseal(f.sealed, f.file_id)
        item = Outbound(f.item_id, Purpose.NDOP_CHECK, NDOP_SERVICE, transport.sender.channel, payload,
                        Protection.MESH, address=transport.mailbox, headers=dict(transport.headers(f.filename)),
                        facts=request_facts(payload))
        report = release([item], transport.sender, self.engine)
        if report.refused:
            # held in the ledger with the rule that refused it; the file is closed so that, once a person has
            # fixed the cause, the next check plans a new file (a new item the gateway checks afresh)
            ndop_cache.close_file(self.engine, f.file_id, "refused")
            raise NdopRefused(f"opt-out request {f.file_id} refused by the release gateway: "
                              f"{report.refused[f.item_id]}")
        if not (report.sent or report.already_sent):
            raise NdopError(f"opt-out request {f.file_id} not sent: {report.counts()} "
                            f"{'; '.join(report.failed.values())}")
        return bool(report.sent)

    def collect(self, request_id: str) -> bool:
        """Fetch the replies to ``request_id``'s open files that arrived; cache the answers. True when none is open.

        The reply is read in memory, turned into keyed answers with the sealed request, cached (the file closed and
        its sealed copy erased in the same transaction), then acknowledged, and the ledger item marked ``acked``.
        """
        transport = self._transport()
        ndop_cache.purge(self.engine)
        ledger = Ledger(self.engine)
        done = True
        for f in ndop_cache.open_files(self.engine, request_id):
            entry = ledger.get(f.item_id)
            reply = transport.fetch_reply(f.filename) if entry is not None and entry.state in DONE else None
            if reply is None:
                done = False
                continue
            asked = parse_reply(self.keys.unseal(f.sealed, f.file_id)) if f.sealed is not None else set()
            stayed = parse_reply(reply.body)
            numbers = sorted(asked)
            answers = dict(zip(self.keys.cache_keys(numbers), (n not in stayed for n in numbers), strict=True))
            ndop_cache.store_answers(self.engine, f.file_id, request_id, answers, self.ttl)
            reply.acknowledge()
            ledger.mark_acked(f.item_id, detail=f"reply cached: {len(answers)} answers")
            log.info("ndop reply: file=%s answers=%d opted_out=%d", f.file_id, len(answers),
                     sum(answers.values()))
        return done
