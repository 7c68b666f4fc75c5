"""State of the monthly data set: one row per reporting month's submission.

``dataset_submission`` records what was built and where the encrypted archive is, when it was staged for
the named submitter, and the SDCS portal's submission reference they entered at the human step. Opaque
ids and counts only: the archive itself is encrypted on disk, never in the database. (The national data opt-out
check's tables are in :mod:`caldicott.policy.state_tables`.)
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Engine, Integer, String, Table, select, update

from caldicott.db import insert_ignore, utcnow
from caldicott.state.schema import metadata

dataset_submission = Table(
    "dataset_submission",
    metadata,
    Column("run_key", String(20), primary_key=True, comment="reporting month, YYYY-MM"),
    Column("version", String(5), nullable=False),
    Column("state", String(20), nullable=False, comment="written, staged, submitted"),
    Column("archive_path", String(500), nullable=False),
    Column("sha256", String(64), nullable=False, comment="of the encrypted archive"),
    Column("size_bytes", Integer, nullable=False),
    Column("row_counts", JSON, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("item_id", String(80), comment="delivery ledger item of the staging"),
    Column("submission_reference", String(100), comment="SDCS Cloud portal reference, entered by the submitter"),
    Column("submitted_by", String(100)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("staged_at", DateTime),
    Column("submitted_at", DateTime),
)

WRITTEN, STAGED, SUBMITTED = "written", "staged", "submitted"


def get(engine: Engine, run_key: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(dataset_submission).where(dataset_submission.c.run_key == run_key)).mappings().first()
    return dict(row) if row else None


def register(engine: Engine, run_key: str, *, version: str, archive_path: str, sha256: str, size_bytes: int,
             row_counts: dict, quarantined: int) -> dict:
    """Record a written archive; a month already staged or submitted is left as it is (returned)."""
    now = utcnow()
    values = {"version": version, "archive_path": archive_path, "sha256": sha256, "size_bytes": size_bytes,
              "row_counts": row_counts, "quarantined": quarantined, "updated_at": now}
    with engine.begin() as conn:
        conn.execute(insert_ignore(conn, dataset_submission), [{"run_key": run_key, "state": WRITTEN,
                                                                 "created_at": now, **values}])
        conn.execute(update(dataset_submission).where(dataset_submission.c.run_key == run_key,
                                                      dataset_submission.c.state == WRITTEN).values(**values))
    return get(engine, run_key)


def mark_staged(engine: Engine, run_key: str, item_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(dataset_submission).where(dataset_submission.c.run_key == run_key,
                                                      dataset_submission.c.state == WRITTEN)
                     .values(state=STAGED, item_id=item_id, staged_at=utcnow(), updated_at=utcnow()))


def mark_submitted(engine: Engine, run_key: str, reference: str, by: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(update(dataset_submission).where(dataset_submission.c.run_key == run_key)
                     .values(state=SUBMITTED, submission_reference=reference, submitted_by=by,
                             submitted_at=utcnow(), updated_at=utcnow()))
