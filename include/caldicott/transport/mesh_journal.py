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
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update

from caldicott.db import utcnow
from caldicott.transport.state_tables import mesh_outbox

POSTING, ACCEPTED = "posting", "accepted"


@dataclass(frozen=True)
class JournalEntry:
    state: str
    message_id: str | None
    chunks: int
    updated_at: dt.datetime | None = None   # when the row reached ``state`` (naive UTC)


class MeshJournal:
    """Journal rows in Caldicott's state database (one short transaction per step)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def posting(self, item_id: str, chunks: int) -> None:
        """About to send the first request for ``item_id`` (replaces any earlier attempt's row)."""
        with self.engine.begin() as conn:
            conn.execute(delete(mesh_outbox).where(mesh_outbox.c.item_id == item_id))
            conn.execute(insert(mesh_outbox).values(item_id=item_id, state=POSTING, message_id=None, chunks=chunks,
                                                    updated_at=utcnow()))

    def accepted(self, item_id: str, message_id: str) -> None:
        """MESH answered the first request with ``message_id``."""
        with self.engine.begin() as conn:
            conn.execute(update(mesh_outbox).where(mesh_outbox.c.item_id == item_id)
                         .values(state=ACCEPTED, message_id=message_id, updated_at=utcnow()))

    def not_created(self, item_id: str) -> None:
        """MESH certainly did not create a message for this attempt (refused connection, error reply)."""
        with self.engine.begin() as conn:
            conn.execute(delete(mesh_outbox).where(mesh_outbox.c.item_id == item_id,
                                                   mesh_outbox.c.state == POSTING))

    def lookup(self, item_id: str) -> JournalEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(mesh_outbox.c.state, mesh_outbox.c.message_id, mesh_outbox.c.chunks,
                                      mesh_outbox.c.updated_at).where(mesh_outbox.c.item_id == item_id)).first()
        return JournalEntry(*row) if row else None

    def resolve(self, item_id: str, message_id: str | None) -> None:
        """A person's answer to "outcome unknown": the MESH message id found for the item, or None (not in MESH)."""
        if message_id is None:
            with self.engine.begin() as conn:
                conn.execute(delete(mesh_outbox).where(mesh_outbox.c.item_id == item_id))
            return
        with self.engine.begin() as conn:
            conn.execute(delete(mesh_outbox).where(mesh_outbox.c.item_id == item_id))
            conn.execute(insert(mesh_outbox).values(item_id=item_id, state=ACCEPTED, message_id=message_id, chunks=1,
                                                    updated_at=utcnow()))


__all__ = ["ACCEPTED", "POSTING", "JournalEntry", "MeshJournal"]
