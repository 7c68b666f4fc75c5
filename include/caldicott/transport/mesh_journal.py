"""The MESH outbox journal: which MESH message carries which outbound item, recorded as MESH accepts it.

Why: after a crash between MESH accepting a message and the ledger recording ``sent``, the item is ``sending``
and must be reconciled with MESH before anything is resent (invariant 3). MESH's current tracking endpoint
answers by message id only, so :class:`MeshJournal` keeps, per item:

* ``posting`` — the first request is on its way and MESH has not answered (a crash here leaves the outcome
  unknown: MESH may or may not hold the message);
* ``accepted`` with the message id — MESH answered; ``GET outbox/tracking?messageID=`` tells the rest
  (:meth:`caldicott.transport.mesh.MeshSender.already_delivered`).

A sender that learns for certain that MESH did not create the message (connection refused, an error reply)
removes the row. :meth:`MeshJournal.resolve` is for a person who looked the message up in MESH (MOLES) after an
"outcome unknown" alert: record the message id found, or ``None`` if it is not there (the next run sends it).

**Crash safety, and what each write costs (issue 13).** Two writes per item, each its own committed transaction,
in this order around the first request: ``posting`` *before* the request leaves, ``accepted`` *after* MESH's reply.
Why both stay, one commit each:

* ``posting`` must be durable before a byte of the request leaves. Without it, a crash after MESH accepted the
  message but before anything was recorded would leave no trace: reconciliation would find no row, read "never
  sent", and send the letter a second time. Writing it earlier (say, for a whole chunk at claim time) would mark
  items whose request never left as "outcome unknown" after a crash, for a person to look up, instead of being
  sent; so it is one write per item, just before its request.
* ``accepted`` cannot be derived later without losing automatic recovery: the message id exists only in MESH's
  reply, and the ledger records it (``transport_ref``) only when the gateway commits the chunk's ``sent`` marks.
  Deferring or batching it would be safe (a lost mark leaves ``posting``: "outcome unknown", held for a person,
  never a second copy and never a lost letter) but would widen that manual window from one reply to a whole
  chunk; it is written at once.

What was cut is the cost of each write, not its order or its durability: ``posting`` is one upsert statement
instead of a delete and an insert, every statement is built once (building a SQLAlchemy statement per call cost
more CPU than running it, as the ledger found for ``sent``), and on SQLite the journal writes of one process take
a lock of their own first. SQLite has one writer at a time: four sender threads committing at once met
``SQLITE_BUSY`` and slept in SQLite's busy handler (1, 2, 5 ms …; about one write in four in a four-thread
journalling loop) though the lock was free again within a fraction of a millisecond; they now queue on a Python
lock and go the moment it is released (no such sleep left). Each commit is as durable as every other state write:
WAL with ``synchronous=NORMAL`` on SQLite (a commit survives the process being killed,
:func:`caldicott.db.make_engine`), a normal commit on PostgreSQL (row locks there, so no process lock: writers of
different items do not wait for each other).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Executable, bindparam, delete, insert, select, update

from caldicott.db import conflict_insert, utcnow
from caldicott.transport.state_tables import mesh_outbox

POSTING, ACCEPTED = "posting", "accepted"


@dataclass(frozen=True)
class JournalEntry:
    state: str
    message_id: str | None
    chunks: int
    updated_at: dt.datetime | None = None   # when the row reached ``state`` (naive UTC)


#: ``accepted`` with the message id MESH returned (parameters ``b_item``, ``b_mid``, ``b_now``)
_ACCEPTED = (update(mesh_outbox).where(mesh_outbox.c.item_id == bindparam("b_item"))
             .values(state=ACCEPTED, message_id=bindparam("b_mid"), updated_at=bindparam("b_now")))
#: the certain "no message was created": only a row still ``posting`` goes (parameter ``b_item``)
_NOT_CREATED = delete(mesh_outbox).where(mesh_outbox.c.item_id == bindparam("b_item"),
                                         mesh_outbox.c.state == POSTING)
_DELETE = delete(mesh_outbox).where(mesh_outbox.c.item_id == bindparam("b_item"))
_LOOKUP = select(mesh_outbox.c.state, mesh_outbox.c.message_id, mesh_outbox.c.chunks,
                 mesh_outbox.c.updated_at).where(mesh_outbox.c.item_id == bindparam("b_item"))


def _posting_upsert(dialect: str) -> Executable:
    """``posting`` for one item (parameters ``b_item``, ``b_chunks``, ``b_now``), replacing any earlier attempt's row
    in the same statement (``INSERT … ON CONFLICT (item_id) DO UPDATE``)."""
    ins = conflict_insert(dialect, mesh_outbox).values(
        {"item_id": bindparam("b_item"), "state": POSTING, "message_id": None, "chunks": bindparam("b_chunks"),
         "updated_at": bindparam("b_now")})
    return ins.on_conflict_do_update(index_elements=[mesh_outbox.c.item_id], set_=_replace(ins.excluded))


def _replace(excluded: Any) -> dict[str, Any]:
    """The columns a new ``posting`` sets on an earlier attempt's row (``excluded``: the row that was refused)."""
    return {"state": POSTING, "message_id": None, "chunks": excluded.chunks, "updated_at": excluded.updated_at}


class MeshJournal:
    """Journal rows in Caldicott's state database (one short transaction per step)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._posting = _posting_upsert(engine.dialect.name)
        # SQLite: one writer at a time; queue this process's journal writers here rather than in SQLite's busy
        # handler (see the module docstring). PostgreSQL locks rows: no lock needed.
        self._writer: contextlib.AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext())

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer, self.engine.begin() as conn:
            yield conn

    def posting(self, item_id: str, chunks: int) -> None:
        """About to send the first request for ``item_id`` (replaces any earlier attempt's row). Committed before
        it returns: the caller sends only after this."""
        with self._write() as conn:
            conn.execute(self._posting, {"b_item": item_id, "b_chunks": chunks, "b_now": utcnow()})

    def accepted(self, item_id: str, message_id: str) -> None:
        """MESH answered the first request with ``message_id``."""
        with self._write() as conn:
            conn.execute(_ACCEPTED, {"b_item": item_id, "b_mid": message_id, "b_now": utcnow()})

    def not_created(self, item_id: str) -> None:
        """MESH certainly did not create a message for this attempt (refused connection, error reply)."""
        with self._write() as conn:
            conn.execute(_NOT_CREATED, {"b_item": item_id})

    def lookup(self, item_id: str) -> JournalEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(_LOOKUP, {"b_item": item_id}).first()
        return JournalEntry(*row) if row else None

    def resolve(self, item_id: str, message_id: str | None) -> None:
        """A person's answer to "outcome unknown": the MESH message id found for the item, or None (not in MESH)."""
        with self._write() as conn:
            conn.execute(_DELETE, {"b_item": item_id})
            if message_id is not None:
                conn.execute(insert(mesh_outbox).values(item_id=item_id, state=ACCEPTED, message_id=message_id,
                                                        chunks=1, updated_at=utcnow()))


__all__ = ["ACCEPTED", "POSTING", "JournalEntry", "MeshJournal"]
