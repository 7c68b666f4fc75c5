"""Several processes migrating one fresh state database at once all succeed.

Tasks migrate the state database on first use in each process (``caldicott_airflow.connections``), so on
a new PostgreSQL deployment several Celery workers do it at the same moment. Without serialisation two
``CREATE TABLE`` of one name race and one task fails (``pg_type_typname_nsp_index`` duplicate key).
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
from caldicott.db import make_engine, sqlite_url
from sqlalchemy import func, select

PROCESSES = 6


def _migrate_after(barrier, url: str, results) -> None:
    from caldicott.state.migrate import migrate

    engine = make_engine(url)
    barrier.wait(timeout=120)  # all processes start their migration together
    try:
        results.put(("ok", migrate(engine)))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    finally:
        engine.dispose()


def _migrate_concurrently(url: str) -> list[tuple[str, object]]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_migrate_after, args=(barrier, url, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return got


def _check(url: str) -> None:
    from caldicott.state.schema import schema_version

    got = _migrate_concurrently(url)
    assert [r for r in got if r[0] == "error"] == [], got
    assert sorted(r[1] for r in got) == [[]] * (PROCESSES - 1) + [[1]], "exactly one process applies step 1"
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema_version)).scalar() == 1
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_first_migrations_on_postgresql(pg_url):
    _check(pg_url)


@pytest.mark.slow
def test_concurrent_first_migrations_on_sqlite(tmp_path):
    _check(sqlite_url(tmp_path / "state.db"))
