"""Fixtures shared by the unit tests of the state database and the release gateway."""

from __future__ import annotations

import pytest
from caldicott.db import make_engine
from caldicott.state.migrate import migrate


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A freshly migrated state database: SQLite, and PostgreSQL where it is reachable (else skipped)."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        eng = make_engine(request.getfixturevalue("pg_url"))
    assert migrate(eng) == [1]
    assert migrate(eng) == []          # idempotent
    yield eng
    eng.dispose()
