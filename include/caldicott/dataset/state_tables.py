"""State of the monthly data set: one row per reporting period and kind of submission (primary, refresh).

NHS England takes every month twice (:mod:`caldicott.dataset.calendar`): a **primary** submission in the window
after the month and a **refresh** in the next window. Each is its own submission, so ``dataset_submission`` is
keyed by ``(run_key, kind)``: what was built and where its encrypted archive is, when it was staged or sent, the
window it belongs to, and the reference that confirms it went (the SDCS portal's, entered by the submitter, or the
transport's on an automatic route). The report's national measures are kept here too (``facts``), so that the next
months' reports can show the trend without the archives.

A confirmation is immutable: :func:`mark_submitted` records the first reference and refuses another one
(:class:`ConfirmationConflict`); the same reference again changes nothing (not even ``submitted_at``).

Opaque ids, counts and measures only: the archive itself is encrypted on disk, never in the database. (The
national data opt-out check's tables are in :mod:`caldicott.policy.state_tables`.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column, ColumnElement, Date, DateTime, Engine, Integer, String, Table, and_, select, update

from caldicott.dataset.calendar import Kind
from caldicott.db import insert_ignore, utcnow
from caldicott.state.schema import metadata

dataset_submission = Table(
    "dataset_submission",
    metadata,
    Column("run_key", String(20), primary_key=True, comment="reporting period, YYYY-MM"),
    Column("kind", String(10), primary_key=True, comment="primary or refresh (calendar.Kind)"),
    Column("version", String(5), nullable=False),
    Column("state", String(20), nullable=False, comment="written, staged, submitted, missed"),
    Column("archive_path", String(500), nullable=False),
    Column("sha256", String(64), nullable=False, comment="of the encrypted archive"),
    Column("size_bytes", Integer, nullable=False),
    Column("row_counts", JSON, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("window_closes", Date, comment="the published close day of the window that takes this submission"),
    Column("facts", JSON, comment="report figures: national measures, rule failures, quarantine by rule (counts)"),
    Column("item_id", String(80), comment="delivery ledger item of the submission"),
    Column("submission_reference", String(100), comment="SDCS Cloud portal reference, or the transport's"),
    Column("submitted_by", String(100)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("staged_at", DateTime),
    Column("submitted_at", DateTime),
)

WRITTEN, STAGED, SUBMITTED, MISSED = "written", "staged", "submitted", "missed"


class ConfirmationConflict(RuntimeError):
    """A second, different reference for a submission already confirmed: the first one stands."""


def _key(run_key: str, kind: Kind | str) -> ColumnElement[bool]:
    return and_(dataset_submission.c.run_key == run_key, dataset_submission.c.kind == Kind(kind).value)


def get(engine: Engine, run_key: str, kind: Kind | str = Kind.PRIMARY) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(dataset_submission).where(_key(run_key, kind))).mappings().first()
    return dict(row) if row else None


def register(engine: Engine, run_key: str, *, version: str, archive_path: str, sha256: str, size_bytes: int,
             row_counts: dict[str, Any], quarantined: int, kind: Kind | str = Kind.PRIMARY,
             window_closes: dt.date | None = None, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a written archive; a submission already staged, submitted or missed is left as it is (returned)."""
    now = utcnow()
    values = {"version": version, "archive_path": archive_path, "sha256": sha256, "size_bytes": size_bytes,
              "row_counts": row_counts, "quarantined": quarantined, "window_closes": window_closes,
              "facts": facts, "updated_at": now}
    with engine.begin() as conn:
        conn.execute(insert_ignore(conn, dataset_submission),
                     [{"run_key": run_key, "kind": Kind(kind).value, "state": WRITTEN, "created_at": now, **values}])
        conn.execute(update(dataset_submission).where(_key(run_key, kind), dataset_submission.c.state == WRITTEN)
                     .values(**values))
    row = get(engine, run_key, kind)
    assert row is not None  # inserted or already there, in the transaction above
    return row


def set_facts(engine: Engine, run_key: str, kind: Kind | str, facts: dict[str, Any]) -> None:
    """Replace the report figures (e.g. once the opt-out check has answered)."""
    with engine.begin() as conn:
        conn.execute(update(dataset_submission).where(_key(run_key, kind)).values(facts=facts, updated_at=utcnow()))


def mark_staged(engine: Engine, run_key: str, item_id: str, kind: Kind | str = Kind.PRIMARY) -> None:
    with engine.begin() as conn:
        conn.execute(update(dataset_submission).where(_key(run_key, kind), dataset_submission.c.state == WRITTEN)
                     .values(state=STAGED, item_id=item_id, staged_at=utcnow(), updated_at=utcnow()))


def mark_missed(engine: Engine, run_key: str, kind: Kind | str = Kind.PRIMARY) -> None:
    """The window closed before this submission left or was confirmed (never overrides ``submitted``)."""
    with engine.begin() as conn:
        conn.execute(update(dataset_submission).where(_key(run_key, kind), dataset_submission.c.state != SUBMITTED)
                     .values(state=MISSED, updated_at=utcnow()))


def mark_submitted(engine: Engine, run_key: str, reference: str, by: str | None,
                   kind: Kind | str = Kind.PRIMARY) -> dict[str, Any]:
    """Record the confirming reference, once. Returns the row.

    The update only matches a row with no reference yet, so two answers racing cannot both win; afterwards the
    same reference is a no-op and another one raises :class:`ConfirmationConflict`.
    """
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(update(dataset_submission)
                     .where(_key(run_key, kind), dataset_submission.c.submission_reference.is_(None))
                     .values(state=SUBMITTED, submission_reference=reference, submitted_by=by, submitted_at=now,
                             updated_at=now))
    row = get(engine, run_key, kind)
    if row is None:
        raise RuntimeError(f"no data set written for {run_key} ({Kind(kind).value})")
    if row["submission_reference"] != reference:
        raise ConfirmationConflict(
            f"{run_key} {Kind(kind).value} was confirmed on {row['submitted_at']:%Y-%m-%d %H:%M} UTC with another "
            "reference; a confirmation cannot be changed (the first one stands)")
    return row


def history(engine: Engine, first: str, last: str) -> list[dict[str, Any]]:
    """Rows with periods in ``[first, last]`` (``YYYY-MM``), oldest first: run_key, kind, state, facts."""
    c = dataset_submission.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.run_key, c.kind, c.state, c.facts, c.row_counts)
                            .where(c.run_key >= first, c.run_key <= last)
                            .order_by(c.run_key, c.kind)).mappings().all()
    return [dict(r) for r in rows]
