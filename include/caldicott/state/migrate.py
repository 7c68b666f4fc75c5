"""Create or upgrade Caldicott's state database: ``python -m caldicott.state.migrate --url URL``.

Migrating is a **deployment step**, run once per release before the new code's tasks (``make migrate`` locally;
the compose deployment's ``airflow-init``, through ``python -m caldicott_airflow.state_migration``, which takes the
URL from the ``caldicott_state`` connection). Tasks never migrate: each process only **verifies**
(:func:`verify`: two or three cheap queries, once per process) and fails with :class:`SchemaNotCurrent`, which
says what is missing and which command to run. A task that migrated would run DDL under every worker, on every
first use, racing the others and holding locks a running flow needs; a release whose migration was forgotten
would also be half-applied by whichever task came first. ``--check`` runs the same verification from a shell.

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


#: Width of ``quarantine.record_type``: the longest national table name is 31 characters
#: (``IDS606CodedScoreAssessmentRefer``), with room to spare.
RECORD_TYPE_WIDTH = 40


def _quarantine_record_type_narrow(conn: Connection) -> bool:
    insp = inspect(conn)
    if not insp.has_table("quarantine"):
        return False
    col = {c["name"]: c for c in insp.get_columns("quarantine")}.get("record_type")
    length = getattr(col["type"], "length", None) if col else None
    return length is not None and length < RECORD_TYPE_WIDTH


def _quarantine_record_type_wide(conn: Connection) -> None:
    """Quarantine: ``record_type`` from 30 to 40 characters, as the monthly data set quarantines records of every
    national table by its name (``IDS606CodedScoreAssessmentRefer`` is 31). PostgreSQL widens the column in place
    (no rewrite; the unique constraint stays); SQLite does not enforce a VARCHAR length, so there is nothing to
    alter there. Widening to the same width again changes nothing (idempotent)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"ALTER TABLE quarantine ALTER COLUMN record_type TYPE VARCHAR({RECORD_TYPE_WIDTH})"))


#: (version, description, step). Append only.
STEPS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "create every declared table that is missing", _create_all),
    (2, "ndop: drop the unsalted opt-out cache and the plain request files", _ndop_keyed_cache),
    (3, "dataset_submission: one row per reporting period and kind (primary / refresh)", _dataset_submission_kind),
    (4, "quarantine: record_type 40 characters (national table names)", _quarantine_record_type_wide),
]

#: version -> whether this database has what the step repairs (absent: the step neither runs nor is recorded).
ONLY_WHERE: dict[int, Callable[[Connection], bool]] = {
    2: _has_legacy_ndop_request,
    3: _dataset_submission_unkinded,
    4: _quarantine_record_type_narrow,
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


#: What on-call is told to run when a task finds the schema behind the code (also in docs/runbook.md).
HOW_TO_MIGRATE = ("run the state database migration for this release, then clear the task: `make migrate` "
                  "(local), `docker compose run --rm airflow-init` (compose), or "
                  "`python -m caldicott_airflow.state_migration` on a host with the deployment's Airflow "
                  "configuration (or `python -m caldicott.state.migrate --url URL`)")


class SchemaNotCurrent(RuntimeError):
    """The state database is not at the schema this code needs; the message says what is missing and what to run.

    Names tables, columns and step numbers only (never data): it reaches on-call through the task's failure.
    """


def pending(engine: Engine) -> list[str]:
    """What :func:`migrate` would still do to this database, in words (empty: it is current).

    A table or column the code declares and the database lacks; a numbered step not recorded whose repair the
    database needs (:data:`ONLY_WHERE`; a step without such a test is needed when not recorded). Read-only: the
    table and column lists come from one inspector (one query per kind on PostgreSQL).
    """
    load_table_modules()
    missing: list[str] = []
    with engine.connect() as conn:
        insp = inspect(conn)
        present = set(insp.get_table_names())
        wanted = {name: table for name, table in metadata.tables.items() if table.schema is None}
        absent = sorted(set(wanted) - present)
        missing += [f"table {name}" for name in absent]
        have = [name for name in wanted if name in present]
        if have:
            columns = insp.get_multi_columns(filter_names=have)
            for (_schema, name), cols in sorted(columns.items()):
                got = {c["name"] for c in cols}
                missing += [f"column {name}.{c.name}" for c in wanted[name].columns if c.name not in got]
        if schema_version.name in absent:
            return missing
        done = set(conn.execute(select(schema_version.c.version)).scalars())
        for version, description, _step in STEPS:
            if version in done:
                continue
            if version in ONLY_WHERE and not ONLY_WHERE[version](conn):
                continue
            missing.append(f"step {version} ({description})")
    return missing


def verify(engine: Engine) -> None:
    """Raise :class:`SchemaNotCurrent` unless the database is at this code's schema. Changes nothing."""
    missing = pending(engine)
    if missing:
        shown = "; ".join(missing[:8]) + (f"; and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise SchemaNotCurrent(f"the Caldicott state database is not at this release's schema (missing: {shown}). "
                               f"Tasks do not migrate it: {HOW_TO_MIGRATE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create or upgrade Caldicott's state database")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the state database")
    parser.add_argument("--check", action="store_true",
                        help="only verify: exit 1 (saying what is missing) if a migration is due; change nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = make_engine(args.url)
    if args.check:
        missing = pending(engine)
        for what in missing:
            log.error("pending: %s", what)
        log.info("state database %s", "needs migrating" if missing else "is current")
        return 1 if missing else 0
    applied = migrate(engine)
    log.info("state database up to date%s", f" (applied {applied})" if applied else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
