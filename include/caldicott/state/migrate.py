"""Create or upgrade Caldicott's state database: ``python -m caldicott.state.migrate --url URL``.

Steps are additive and idempotent (create what is missing; drop only in a numbered step that says why), recorded in
``caldicott_schema_version``. Every module named ``state_tables`` under the ``caldicott`` package is
imported first so its tables join the shared metadata. A change that alters an existing column must
add a numbered step to :data:`STEPS` with the DDL for both SQLite and PostgreSQL. A step that repairs
what earlier code left behind names, in :data:`ONLY_WHERE`, how to tell a database that has it: a database
without it (e.g. one created fresh at the current shape) does not run or record that step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import pkgutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, inspect, select, text

import caldicott
from caldicott.db import make_engine
from caldicott.state.schema import metadata, schema_version

log = logging.getLogger(__name__)


def load_table_modules() -> list[str]:
    """Import every ``caldicott.*.state_tables`` module (and the ledger) so all tables are declared."""
    names = ["caldicott.transport.ledger"]
    for mod in pkgutil.walk_packages(caldicott.__path__, prefix="caldicott."):
        if mod.name.endswith(".state_tables"):
            names.append(mod.name)
    for name in names:
        importlib.import_module(name)
    return names


def _create_all(conn: Connection) -> None:
    metadata.create_all(conn)


#: Key of the PostgreSQL advisory lock that serialises migrations ("CALDMIGR" as a 64-bit integer).
MIGRATION_LOCK_KEY = int.from_bytes(b"CALDMIGR", "big") - 2**63


def _serialise(conn: Connection) -> None:
    """Make concurrent migrations of one database take turns.

    Tasks migrate on first use in each process, so on a fresh PostgreSQL state database several Celery
    workers migrate at once; two ``CREATE TABLE`` of one name then fail one of them (duplicate
    ``pg_type`` entry). A transaction-scoped advisory lock makes the others wait and then find every
    table made. On SQLite the driver runs DDL outside a transaction, so the same race ends in "table
    already exists"; ``BEGIN IMMEDIATE`` takes the write lock before anything is looked at (others wait
    up to the busy timeout).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _has_legacy_ndop_request(conn: Connection) -> bool:
    return inspect(conn).has_table("ndop_request")


def _ndop_keyed_cache(conn: Connection) -> None:
    """National data opt-out: drop what the unsalted cache and the plain request files left behind.

    The cache used to be keyed by a plain SHA-256 of the NHS number (reversible by trying every number), and an
    outstanding request waited as a plain ``.dat`` file on disk, its path in ``ndop_request.numbers_file``. Now
    answers are keyed with HMAC under ``caldicott_ndop_cache_key`` and requests are sealed in
    ``ndop_request_file``. This step deletes every cached answer (their keys cannot be converted without the
    numbers; they are simply asked again by the next check), deletes the plain request files the old table
    points to that this host can see (others: see the runbook), and drops the old table.
    """
    paths = [r[0] for r in conn.execute(text("SELECT numbers_file FROM ndop_request WHERE numbers_file IS NOT NULL"))]
    removed = 0
    for raw in paths:
        path = Path(raw)
        if path.suffix == ".dat" and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    conn.execute(text("DELETE FROM ndop_cache"))
    conn.execute(text("DROP TABLE ndop_request"))
    log.info("ndop: unsalted cache emptied; %d of %d plain request file(s) removed", removed, len(paths))


def _dataset_submission_unkinded(conn: Connection) -> bool:
    insp = inspect(conn)
    return insp.has_table("dataset_submission") and "kind" not in {
        c["name"] for c in insp.get_columns("dataset_submission")}


def _dataset_submission_kind(conn: Connection) -> None:
    """Monthly data set: one row per reporting period AND kind (primary, refresh), with the window and figures.

    The key changes from ``run_key`` to ``(run_key, kind)``, which SQLite can only do by rebuilding the table: the
    old one is renamed (on PostgreSQL its primary-key constraint too, whose name the new table needs), the new one
    created from the declaration in :mod:`caldicott.dataset.state_tables`, every row copied as ``primary`` (all
    earlier submissions were primary ones), and the old table dropped.
    """
    from caldicott.dataset.state_tables import dataset_submission

    conn.execute(text("ALTER TABLE dataset_submission RENAME TO dataset_submission_pre3"))
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE dataset_submission_pre3 RENAME CONSTRAINT dataset_submission_pkey "
                          "TO dataset_submission_pre3_pkey"))
    dataset_submission.create(conn)
    old = ", ".join(c["name"] for c in inspect(conn).get_columns("dataset_submission_pre3"))
    conn.execute(text(f"INSERT INTO dataset_submission ({old}, kind) SELECT {old}, 'primary' "
                      "FROM dataset_submission_pre3"))
    conn.execute(text("DROP TABLE dataset_submission_pre3"))


#: (version, description, step). Append only.
STEPS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "create every declared table that is missing", _create_all),
    (2, "ndop: drop the unsalted opt-out cache and the plain request files", _ndop_keyed_cache),
    (3, "dataset_submission: one row per reporting period and kind (primary / refresh)", _dataset_submission_kind),
]

#: version -> whether this database has what the step repairs (absent: the step neither runs nor is recorded).
ONLY_WHERE: dict[int, Callable[[Connection], bool]] = {
    2: _has_legacy_ndop_request,
    3: _dataset_submission_unkinded,
}


def migrate(engine: Engine) -> list[int]:
    """Bring the state database up to date; return the versions applied by this call.

    Tables declared after version 1 was applied are still created (``create_all`` runs every time;
    it only creates what is missing), so adding a new table needs no new step.
    """
    load_table_modules()
    applied: list[int] = []
    with engine.begin() as conn:
        _serialise(conn)
        metadata.create_all(conn)
        done = set(conn.execute(select(schema_version.c.version)).scalars())
        for version, description, step in STEPS:
            if version in done:
                continue
            if version in ONLY_WHERE and not ONLY_WHERE[version](conn):
                continue
            step(conn)
            conn.execute(insert(schema_version).values(
                version=version, description=description, applied_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
            applied.append(version)
    return applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create or upgrade Caldicott's state database")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the state database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    applied = migrate(make_engine(args.url))
    log.info("state database up to date%s", f" (applied {applied})" if applied else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
