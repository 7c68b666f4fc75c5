"""The delivery ledger: intent, send and acknowledgement of every outbound item (invariant 3).

A flow records *intent* for every item it means to send, with a deterministic id (same referral,
event and recipient → same id), before anything leaves. The release gateway then moves each item
``intended → sending → sent`` (and later ``acked``), so:

* a re-run of the interval finds the items already ``sent`` and sends nothing twice;
* a crash between ``sending`` and ``sent`` leaves a ``sending`` row the next attempt reconciles with the
  transport (MESH tracking, SFTP checksum) before it would send again;
* an item whose intent was recorded is never forgotten: it is ``intended``, ``failed`` or ``held`` until
  someone sees it.

Each transition exists per item (:meth:`Ledger.begin_send`, :meth:`Ledger.mark_sent`) and per chunk of items
(:meth:`Ledger.claim`, :meth:`Ledger.mark_sent_many`): one transaction for many items, the same conditional
updates. The gateway uses the chunked form (see :func:`caldicott.gateway.release` for when it may).

The ledger holds opaque ids only: item id, recipient id (ODS code, contract id, requester id) and the
checksum of what left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Integer, String, Table, Text, bindparam, func, select, update

from caldicott.db import insert_ignore, utcnow
from caldicott.state.schema import metadata


class State(StrEnum):
    INTENDED = "intended"
    SENDING = "sending"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"      # last attempt failed; will be retried by the next run
    HELD = "held"          # not sent on purpose (e.g. no certificate): needs a person
    ACK_OVERDUE = "ack_overdue"  # sent, but no acknowledgement in time: an alert was raised
    UNDELIVERABLE = "undeliverable"  # sent, but the transport reported it never reached the recipient
    #                                  (a MESH non-delivery report): not resent by itself; a person decides


DONE = frozenset({State.SENT, State.ACKED, State.ACK_OVERDUE})

ledger = Table(
    "delivery_ledger",
    metadata,
    Column("item_id", String(80), primary_key=True, comment="deterministic id of the outbound item"),
    Column("flow", String(50), nullable=False),
    Column("purpose", String(30), nullable=False),
    Column("run_key", String(100), nullable=False, comment="data interval / batch that planned it"),
    Column("recipient", String(100), nullable=False, comment="opaque recipient id"),
    Column("channel", String(30), nullable=False),
    Column("batch_id", String(100)),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("checksum", String(64), comment="sha256 of the bytes that left"),
    Column("transport_ref", String(200), comment="MESH message id, remote path, SMTP Message-ID"),
    Column("detail", Text, comment="last error or hold reason, free of patient data"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("sent_at", DateTime),
    Column("acked_at", DateTime),
)


def item_id(*parts: object) -> str:
    """A deterministic, opaque id for an outbound item from its natural key (e.g. referral, event, recipient).

    Hashed so the id carries no patient identifier even when a part is one; prefixed with the first
    part (the flow) so people can tell ids apart.
    """
    text = "\x1f".join(str(p) for p in parts)
    return f"{parts[0]}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


@dataclass(frozen=True)
class Intent:
    item_id: str
    flow: str
    purpose: str
    run_key: str
    recipient: str
    channel: str
    batch_id: str | None = None


@dataclass(frozen=True)
class Entry:
    item_id: str
    state: State
    attempts: int
    checksum: str | None
    transport_ref: str | None
    recipient: str
    channel: str
    batch_id: str | None


class Ledger:
    """Operations on the ``delivery_ledger`` table; every state change is a conditional UPDATE."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_intent(self, intents: Iterable[Intent]) -> int:
        """Record intent for each item not already known; returns how many were new."""
        now = utcnow()
        rows = [{**i.__dict__, "state": State.INTENDED.value, "attempts": 0, "created_at": now, "updated_at": now}
                for i in intents]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            before = conn.execute(select(func.count()).select_from(ledger)).scalar_one()
            conn.execute(insert_ignore(conn, ledger), rows)
            after = conn.execute(select(func.count()).select_from(ledger)).scalar_one()
        return after - before

    def get(self, item_id: str) -> Entry | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_ENTRY_COLS).where(ledger.c.item_id == item_id)).first()
        return _entry(row) if row else None

    def entries(self, item_ids: Sequence[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        with self.engine.connect() as conn:
            for chunk_start in range(0, len(item_ids), 500):
                chunk = list(item_ids[chunk_start:chunk_start + 500])
                for row in conn.execute(select(*_ENTRY_COLS).where(ledger.c.item_id.in_(chunk))):
                    out[row[0]] = _entry(row)
        return out

    def pending(self, flow: str, run_key: str | None = None, batch_id: str | None = None) -> list[Entry]:
        """Items planned but not yet delivered (intended, sending or failed), oldest first."""
        q = select(*_ENTRY_COLS).where(
            ledger.c.flow == flow,
            ledger.c.state.in_([State.INTENDED.value, State.SENDING.value, State.FAILED.value]),
        )
        if run_key is not None:
            q = q.where(ledger.c.run_key == run_key)
        if batch_id is not None:
            q = q.where(ledger.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q.order_by(ledger.c.created_at, ledger.c.item_id))]

    def begin_send(self, item_id: str) -> State | None:
        """Claim an item for sending. Returns the state it was in, or None if it is not claimable.

        ``SENDING`` returned means an earlier attempt crashed mid-send: the caller must reconcile with
        the transport before sending again.
        """
        with self.engine.begin() as conn:
            prev = conn.execute(select(ledger.c.state).where(ledger.c.item_id == item_id)).scalar_one_or_none()
            if prev is None or State(prev) not in (State.INTENDED, State.SENDING, State.FAILED):
                return None
            res = conn.execute(
                update(ledger)
                .where(ledger.c.item_id == item_id, ledger.c.state == prev)
                .values(state=State.SENDING.value, attempts=ledger.c.attempts + 1, updated_at=utcnow())
            )
            return State(prev) if res.rowcount == 1 else None

    def claim(self, item_ids: Sequence[str]) -> dict[str, State]:
        """Claim many items for sending in ONE transaction: ``{item id: the state it was in}`` for each one claimed.

        Same rule as :meth:`begin_send` per item (``intended``, ``sending`` or ``failed`` → ``sending``,
        ``attempts + 1``); items missing, held or already sent are left out. One conditional ``UPDATE …
        RETURNING`` per previous state, ``sending`` first (the later updates move rows *into* ``sending``), so the
        returned previous state is exact even when another worker races for the same rows.
        """
        out: dict[str, State] = {}
        if not item_ids:
            return out
        now = utcnow()
        with self.engine.begin() as conn:
            for prev in (State.SENDING, State.FAILED, State.INTENDED):
                for start in range(0, len(item_ids), 500):
                    chunk = list(item_ids[start:start + 500])
                    rows = conn.execute(
                        update(ledger)
                        .where(ledger.c.item_id.in_(chunk), ledger.c.state == prev.value)
                        .values(state=State.SENDING.value, attempts=ledger.c.attempts + 1, updated_at=now)
                        .returning(ledger.c.item_id)
                    ).all()
                    out.update((r[0], prev) for r in rows)
        return out

    def mark_sent_many(self, sent: Sequence[tuple[str, str, str | None]]) -> int:
        """Record many items as ``sent`` in ONE transaction: ``(item id, checksum, transport ref)`` each.

        Only rows still ``sending`` change (as :meth:`mark_sent`); returns how many did.
        """
        if not sent:
            return 0
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(_MARK_SENT, [{"b_item": i, "b_checksum": c, "b_ref": r, "b_now": now}
                                            for i, c, r in sent])
        return res.rowcount

    def _set(self, item_id: str, state: State, *, expect: Iterable[State] | None = None,
             **values: str | dt.datetime | None) -> bool:
        q = update(ledger).where(ledger.c.item_id == item_id)
        if expect is not None:
            q = q.where(ledger.c.state.in_([s.value for s in expect]))
        with self.engine.begin() as conn:
            return conn.execute(q.values(state=state.value, updated_at=utcnow(), **values)).rowcount == 1

    def mark_sent(self, item_id: str, *, checksum: str, transport_ref: str | None) -> bool:
        """Record one item ``sent`` (only if it is still ``sending``), in a transaction of its own.

        The one-item form is what a sender that cannot be asked what arrived (SMTP) needs: its ``sent`` must be
        committed before the next item leaves, so a crash after the peer's acceptance leaves at most that one
        item to be sent again. It runs once per letter on the sending thread, so the UPDATE is built once
        (:data:`_MARK_SENT`, the statement :meth:`mark_sent_many` runs for a chunk) rather than per call:
        constructing it cost three times what executing it does."""
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(_MARK_SENT, {"b_item": item_id, "b_checksum": checksum, "b_ref": transport_ref,
                                            "b_now": now})
        return res.rowcount == 1

    def mark_failed(self, item_id: str, detail: str) -> bool:
        return self._set(item_id, State.FAILED, expect=[State.SENDING], detail=detail[:500])

    def hold(self, item_id: str, reason: str) -> bool:
        """Keep an item back on purpose (e.g. the practice has no certificate); a person must act."""
        return self._set(item_id, State.HELD, expect=[State.INTENDED, State.FAILED, State.HELD], detail=reason)

    def release_hold(self, item_id: str) -> bool:
        return self._set(item_id, State.INTENDED, expect=[State.HELD], detail=None)

    def mark_acked(self, item_id: str, detail: str | None = None) -> bool:
        return self._set(item_id, State.ACKED, expect=[State.SENT, State.ACK_OVERDUE], acked_at=utcnow(),
                         detail=detail)

    def mark_ack_overdue(self, item_id: str) -> bool:
        return self._set(item_id, State.ACK_OVERDUE, expect=[State.SENT], detail="no acknowledgement in time")

    def mark_undeliverable(self, item_id: str, detail: str) -> bool:
        """The transport reported the sent item never reached its recipient (``detail``: codes, no patient data)."""
        return self._set(item_id, State.UNDELIVERABLE, expect=[State.SENT, State.ACK_OVERDUE], detail=detail)

    def counts(self, flow: str, run_key: str | None = None) -> dict[str, int]:
        q = select(ledger.c.state, func.count()).where(ledger.c.flow == flow)
        if run_key is not None:
            q = q.where(ledger.c.run_key == run_key)
        with self.engine.connect() as conn:
            return dict(conn.execute(q.group_by(ledger.c.state)).all())


#: ``sending`` -> ``sent`` for one item (parameters ``b_item``, ``b_checksum``, ``b_ref``, ``b_now``): a conditional
#: UPDATE, so an item another attempt already moved on is left as it is
_MARK_SENT = (update(ledger)
              .where(ledger.c.item_id == bindparam("b_item"), ledger.c.state == State.SENDING.value)
              .values(state=State.SENT.value, checksum=bindparam("b_checksum"), transport_ref=bindparam("b_ref"),
                      sent_at=bindparam("b_now"), updated_at=bindparam("b_now"), detail=None))

_ENTRY_COLS = (ledger.c.item_id, ledger.c.state, ledger.c.attempts, ledger.c.checksum, ledger.c.transport_ref,
               ledger.c.recipient, ledger.c.channel, ledger.c.batch_id)


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(row[0], State(row[1]), *row[2:])
