"""Connections from a secrets backend, with no code change: Airflow's LocalFilesystemBackend reading a
connections file (the docker-compose deployment's default; a vault backend is configured the same way).

``airflow dags test records_quality`` runs in a fresh Airflow home with NO ``AIRFLOW_CONN_*`` variable
and nothing in the metadata database; the task finds ``caldicott_records`` and ``caldicott_state`` only
in the file, and its findings land in the state database the file names.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from caldicott.db import make_engine, sqlite_url
from caldicott.state.quarantine import counts_by_reason

from devtools.airflow_env import airflow_env
from devtools.paths import venv_bin
from tests.dagtest import without_deadlines

pytestmark = pytest.mark.slow


def test_records_quality_reads_its_connections_from_a_secrets_backend(tmp_path, synth_source):
    records_db = synth_source.url.removeprefix("sqlite:///")
    state_db = tmp_path / "state.db"
    conn_file = tmp_path / "secrets" / "connections.json"
    conn_file.parent.mkdir(mode=0o700)
    conn_file.write_text(json.dumps({
        "caldicott_records": {"conn_type": "sqlite", "host": records_db},
        "caldicott_state": {"conn_type": "sqlite", "host": str(state_db)},
    }))
    os.chmod(conn_file, 0o600)

    env = airflow_env(tmp_path / "airflow", api_port=8080, extra={
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(conn_file)}),
    })
    env = without_deadlines(env)   # `dags test` crashes on a successful run of a DAG with a deadline (3.3.2)
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
    assert not any(k.startswith("AIRFLOW_CONN_") for k in env)

    migrate = subprocess.run([venv_bin("airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    # the deployment step that migrates the state database, through the same secrets backend (tasks only verify)
    state = subprocess.run([venv_bin("python"), "-m", "caldicott_airflow.state_migration"], env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert state.returncode == 0, state.stderr[-2000:]
    # `airflow dags test` ignores SIGTERM once a task ran: stop it with SIGINT if it ever hangs
    res = subprocess.run(["timeout", "-s", "INT", "540", venv_bin("airflow"), "dags", "test", "records_quality",
                          "2026-11-02T00:00:00+00:00"], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    runs = subprocess.run([venv_bin("airflow"), "dags", "list-runs", "records_quality", "-o", "json"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    listed = runs.stdout[runs.stdout.index("[{"):] if "[{" in runs.stdout else "[]"
    assert [r["state"] for r in json.loads(listed)] == ["success"], runs.stdout[-2000:] + runs.stderr[-2000:]

    counts = counts_by_reason(make_engine(sqlite_url(state_db)), "records_quality", "2026-11-01")
    assert sum(counts.values()) > 0, "the task did not write to the state database named in the connections file"
    assert set(counts) >= {"invalid_nhs_number", "invalid_postcode"}
