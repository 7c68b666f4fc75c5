"""The release gateway: the one function every byte leaving the service goes through (invariant 1).

``release(items, sender)`` asks the release policy (:func:`caldicott.policy.release.check`: purpose rule,
required facts, protection, country, recipient and address, disclosure approval) whether each item may go,
and holds the refused ones in the ledger with the reason. This module is the delivery engine: it uses the
delivery ledger so that each item leaves at most once, sends on worker threads, and records what left.
It is the only caller of ``Sender.send`` (checked by ``tests/security/test_architecture.py``).

Refusals raise nothing per item: they are counted, the item is held in the ledger with the reason,
and the run's report shows them. A refusal is a policy outcome, not a crash.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from caldicott.policy.release import ReleaseRefused, check
from caldicott.transport.base import Outbound, Sender, TransportError
from caldicott.transport.ledger import DONE, Ledger, State

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "ReleaseRefused", "ReleaseReport", "check", "release"]


@dataclass
class ReleaseReport:
    """What happened to a batch, by item id: enough for XCom (ids and counts only)."""

    sent: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)   # item id -> rule that refused it
    failed: dict[str, str] = field(default_factory=dict)    # item id -> transport error (no PII)
    final: set[str] = field(default_factory=set)            # failed ids whose error the transport called final
    not_planned: list[str] = field(default_factory=list)    # no ledger intent: refused to send

    def counts(self) -> dict[str, int]:
        return {"sent": len(self.sent), "already_sent": len(self.already_sent), "refused": len(self.refused),
                "failed": len(self.failed), "not_planned": len(self.not_planned)}

    def merge(self, other: ReleaseReport) -> None:
        self.sent += other.sent
        self.already_sent += other.already_sent
        self.refused.update(other.refused)
        self.failed.update(other.failed)
        self.final |= other.final
        self.not_planned += other.not_planned


CHUNK = 32   # items per ledger transaction (claim, and ``sent`` for reconcilable senders)


def release(items: Iterable[Outbound], sender: Sender, state_engine: Engine, *, chunk: int = CHUNK) -> ReleaseReport:
    """Release ``items`` through ``sender``, each at most once, recording every step in the ledger.

    Every item must already have a ledger intent (recorded when the flow planned its run), so nothing
    can leave that the ledger does not know about. Transport errors are recorded per item and the batch
    carries on; the caller decides whether the task fails (so Airflow retries) from the report.

    Items are taken ``chunk`` at a time. For each chunk, on the calling thread: every item's policy check,
    one read of the ledger, one transaction claiming the chunk (``sending``), reconciliation of items an
    earlier attempt left ``sending`` / ``failed``. The sends themselves run on worker threads while the
    calling thread prepares the next chunk (rendering a letter is CPU; a send mostly waits on the peer):

    * a sender that declares it can say what arrived (``reconcilable = True``; MESH: outbox tracking by
      ``local_id``) may send ``concurrency`` items at once, and the chunk's ``sent`` marks are one transaction after its
      sends. A crash in between leaves those items ``sending``; the next attempt asks the transport about
      each (``already_delivered``) and sends only what did not arrive.
    * any other sender (SMTP cannot be asked; SFTP and staging do not declare it) sends one item at a time on
      one worker, which records ``sent`` right after each send returns: exactly as narrow a window as sending
      inline, so over SMTP at most the one message whose reply was lost is sent twice (same Message-ID).
    """
    ledger = Ledger(state_engine)
    report = ReleaseReport()
    reconcilable = getattr(sender, "reconcilable", False) is True
    workers = max(1, int(getattr(sender, "concurrency", 1) or 1)) if reconcilable else 1
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"release-{sender.channel}")
    in_flight: deque[_Chunk] = deque()
    error: BaseException | None = None
    source_error: Exception | None = None
    source = _chunks(items, max(1, chunk))
    try:
        while True:
            try:
                items_chunk = next(source)
            except StopIteration:
                break
            except Exception as exc:  # producing an item failed (e.g. rendering): what came before still goes
                source_error = exc
                break
            ready, found = _claim(items_chunk, sender, ledger, report, per_item_marks=not reconcilable)
            futures = [pool.submit(_send_one, sender, item, None if reconcilable else ledger, stop)
                       for item in ready]
            in_flight.append(_Chunk(ready, futures, found))
            while len(in_flight) > 1:   # keep one chunk sending while the next is prepared
                _settle(in_flight.popleft(), sender, ledger, report, reconcilable)
        while in_flight:
            _settle(in_flight.popleft(), sender, ledger, report, reconcilable)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if error is not None:
            # stop the workers before their next item, then record what did leave before the error propagates:
            # what was sent but not recorded stays ``sending`` and is reconciled by the next attempt
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            while in_flight:
                with contextlib.suppress(BaseException):
                    _settle(in_flight.popleft(), sender, ledger, report, reconcilable)
        pool.shutdown(wait=True)
    summary = Counter({k: v for k, v in report.counts().items() if v})
    log.info("release via %s: %s", sender.channel, dict(summary) or "nothing to do")
    if source_error is not None:
        raise source_error
    return report


@dataclass
class _Chunk:
    items: list[Outbound]
    futures: list[Future[object]]
    reconciled: list[tuple[str, str, str | None]]   # (item id, checksum, ref) found delivered, not yet marked


def _chunks(items: Iterable[Outbound], size: int) -> Iterator[list[Outbound]]:
    """``size`` items at a time. If producing an item fails, the items before it are yielded first (and sent,
    as they were when items went one by one), then the error is raised."""
    chunk: list[Outbound] = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except Exception:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _claim(items: list[Outbound], sender: Sender, ledger: Ledger, report: ReleaseReport, *,
           per_item_marks: bool) -> tuple[list[Outbound], list[tuple[str, str, str | None]]]:
    """Check, look up and claim one chunk; reconcile what an earlier attempt may have sent.

    Returns the items to send now and the items found already delivered whose ``sent`` mark is still due
    (empty when ``per_item_marks``: then they are marked here, one by one).
    """
    allowed: list[Outbound] = []
    for item in items:
        try:
            check(item, ledger.engine, sender)
        except ReleaseRefused as refusal:
            report.refused[item.item_id] = str(refusal)
            ledger.hold(item.item_id, f"refused by release gateway: {refusal}")
            log.warning("release refused: item=%s purpose=%s reason=%s", item.item_id, item.purpose, refusal)
            continue
        allowed.append(item)
    entries = ledger.entries([i.item_id for i in allowed])
    claimable: list[Outbound] = []
    for item in allowed:
        entry = entries.get(item.item_id)
        if entry is None:
            report.not_planned.append(item.item_id)
            log.error("release refused: item=%s has no recorded intent", item.item_id)
        elif entry.state in DONE:
            report.already_sent.append(item.item_id)
        else:
            claimable.append(item)
    claimed = ledger.claim([i.item_id for i in claimable])
    lost = [i.item_id for i in claimable if i.item_id not in claimed]
    if lost:  # held, or another worker claimed or finished it since the read
        now = ledger.entries(lost)
        report.already_sent += [i for i in lost if i in now and now[i].state in DONE]
    ready: list[Outbound] = []
    found: list[tuple[str, str, str | None]] = []
    for item in claimable:
        prev = claimed.get(item.item_id)
        if prev is None:
            continue
        if prev in (State.SENDING, State.FAILED):
            # SENDING: a worker died mid-send. FAILED: the last attempt's outcome may be unknown (a timeout or
            # a reply lost after the peer accepted). Either way the item may have arrived: ask before resending.
            try:
                ref = sender.already_delivered(item)
            except TransportError as exc:
                _record_failure(ledger, report, item, sender, "reconcile", exc)
                continue
            if ref is not None:
                if per_item_marks:
                    ledger.mark_sent(item.item_id, checksum=item.checksum, transport_ref=ref)
                else:
                    found.append((item.item_id, item.checksum, ref))
                report.already_sent.append(item.item_id)
                log.info("reconciled: item=%s was delivered (%s)", item.item_id, sender.channel)
                continue
        ready.append(item)
    return ready, found


_SKIPPED = object()   # a worker stopped before this item: it stays ``sending`` for the next attempt


def _send_one(sender: Sender, item: Outbound, ledger: Ledger | None, stop: threading.Event) -> object:
    """One send on a worker thread. With ``ledger`` (senders that cannot be asked), ``sent`` is recorded
    here, immediately after the send returns; else the caller records the chunk's sends together."""
    if stop.is_set():
        return _SKIPPED
    try:
        ref = sender.send(item)
    except TransportError as exc:
        if ledger is not None:
            ledger.mark_failed(item.item_id, str(exc))
        return exc
    except BaseException:
        stop.set()          # anything else is a crash: no further item leaves (as if the sends were inline)
        raise
    if ledger is not None:
        ledger.mark_sent(item.item_id, checksum=item.checksum, transport_ref=ref)
    return ref


def _settle(chunk: _Chunk, sender: Sender, ledger: Ledger, report: ReleaseReport, reconcilable: bool) -> None:
    """Wait for one chunk's sends; record them (one transaction when reconcilable); re-raise a worker's crash."""
    sent: list[tuple[str, str, str | None]] = list(chunk.reconciled)
    crash: BaseException | None = None
    for item, fut in zip(chunk.items, chunk.futures, strict=True):
        try:
            out = fut.result()
        except CancelledError:
            continue
        except BaseException as exc:   # not a TransportError: a bug or an injected fault; stop after recording
            crash = crash or exc
            continue
        if out is _SKIPPED:
            continue
        if isinstance(out, TransportError):
            if reconcilable:
                ledger.mark_failed(item.item_id, str(out))
            _note_failure(report, item, out)
            log.warning("send failed: item=%s channel=%s error=%s", item.item_id, sender.channel, out)
            continue
        if reconcilable:
            sent.append((item.item_id, item.checksum, out if isinstance(out, str) else None))  # the transport ref
        report.sent.append(item.item_id)
    if reconcilable:
        ledger.mark_sent_many(sent)
    if crash is not None:
        raise crash


def _record_failure(ledger: Ledger, report: ReleaseReport, item: Outbound, sender: Sender, step: str,
                    exc: TransportError) -> None:
    """A transport error leaves the item ``failed`` (retried by the next attempt) and in the run's report."""
    ledger.mark_failed(item.item_id, str(exc))
    _note_failure(report, item, exc)
    log.warning("%s failed: item=%s channel=%s error=%s", step, item.item_id, sender.channel, exc)


def _note_failure(report: ReleaseReport, item: Outbound, exc: TransportError) -> None:
    """The failure in the report; ``final`` when the transport says retrying cannot help (a changed host key,
    a 5xx reply), so the caller can fail its task at once instead of letting Airflow retry for nothing."""
    report.failed[item.item_id] = str(exc)
    if not exc.retryable:
        report.final.add(item.item_id)
