"""Shared fixtures: synthetic records, fresh state databases, PostgreSQL when reachable, a real Airflow.

Tiers (README, "Tests"): ``tests/unit`` (the domain, no Airflow), ``tests/dags`` (DagBag integrity and
parse time), ``tests/e2e`` (DAGs through a real scheduler with real stand-in peers). Tests needing
PostgreSQL skip with a reason when it is not reachable; CI has it, so there they run.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.records import synth
from caldicott.state.migrate import migrate
from sqlalchemy import Engine, create_engine, text

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# The disclosure DAG refuses to load without approvers (no default in production): the demo's, for tests.
os.environ.setdefault("CALDICOTT_APPROVERS", "manager1,manager2")

PG_HOST, PG_PORT = "127.0.0.1", 5432
TEST_PATIENTS, TEST_SEED = 600, 11


@dataclass(frozen=True)
class SynthSource:
    """A seeded records database: its URL, engine, the generator's result and the peers' key folder."""

    url: str
    engine: Engine
    result: synth.SynthResult
    keys_dir: Path
    manifest: dict


@pytest.fixture(scope="session")
def synth_source(tmp_path_factory) -> SynthSource:
    """600 synthetic patients (seed 11), with practice and patient certificates; read-only for tests."""
    root = tmp_path_factory.mktemp("records")
    keys = root / "peer-keys"
    result = synth.generate(TEST_PATIENTS, TEST_SEED, keys_dir=keys)
    url = sqlite_url(root / "records.db")
    synth.write(result, make_engine(url), manifest_path=root / "manifest.json")
    return SynthSource(url, make_engine(url, readonly=True), result, keys,
                       json.loads((root / "manifest.json").read_text()))


@pytest.fixture(scope="session")
def service():
    """The demo's synthetic sending service (``devtools.demo_service``): production reads its own from the Airflow
    Variable ``caldicott_service`` and has no default."""
    from devtools.demo_service import demo_service

    return demo_service()


@pytest.fixture
def state_engine(tmp_path) -> Engine:
    """A fresh, migrated SQLite state database for one test."""
    engine = make_engine(sqlite_url(tmp_path / "state.db"))
    migrate(engine)
    return engine


def postgres_available() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL database (dropped afterwards); skips with a reason when PostgreSQL is absent."""
    if not postgres_available():
        pytest.skip(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} (CI runs these)")
    admin = create_engine(f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/postgres",
                          isolation_level="AUTOCOMMIT")
    name = f"caldicott_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a server that refuses us is as good as absent, but say why
        pytest.skip(f"PostgreSQL refused to create a test database: {type(exc).__name__}")
    try:
        yield f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
