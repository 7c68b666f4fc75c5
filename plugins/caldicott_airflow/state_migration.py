"""The deployment step that migrates Caldicott's state database: ``python -m caldicott_airflow.state_migration``.

Runs :func:`caldicott.state.migrate.migrate` on the database of the ``caldicott_state`` connection (id:
``CALDICOTT_STATE_CONN_ID``), found the way tasks find it — environment (``AIRFLOW_CONN_*``), the secrets backend,
or the metadata database — so a deployment names the database once. The compose deployment's ``airflow-init``
runs it after ``airflow db migrate`` and before any scheduler or worker starts; tasks only verify
(:func:`caldicott.state.migrate.verify`). ``--check`` verifies without changing anything (exit 1 when a migration
is due). Concurrent runs take turns (the migration serialises itself), so two init containers are safe.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Migrate (or with ``--check``, verify) the state database named by the ``caldicott_state`` connection."""
    from caldicott.db import make_engine
    from caldicott.state import migrate as state_migrate

    from caldicott_airflow.connections import STATE_CONN_ID, state_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify; exit 1 if a migration is due")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = make_engine(state_url())
    if args.check:
        missing = state_migrate.pending(engine)
        for what in missing:
            log.error("pending: %s", what)
        log.info("state database (connection %s) %s", STATE_CONN_ID, "needs migrating" if missing else "is current")
        return 1 if missing else 0
    applied = state_migrate.migrate(engine)
    log.info("state database (connection %s) up to date%s", STATE_CONN_ID, f" (applied {applied})" if applied else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
