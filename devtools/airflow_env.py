"""The environment a local Airflow runs in: SQLite + LocalExecutor, loopback only, no examples.

One function builds it, so ``make demo``, ``make up`` and the end-to-end tests run Airflow the same way.
Secrets (Fernet key, JWT secret, UI passwords) are generated once per Airflow home into files readable by
the owner only (``airflow standalone`` writes its password file world-readable; we do not use it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from devtools import demo_service
from devtools.paths import DAGS, PLUGINS, ROOT

#: Users of the simple auth manager: name -> role. Service managers approve held disclosures.
USERS = {"admin": "admin", "manager1": "op", "manager2": "op", "viewer1": "viewer", "clerk1": "user"}
DEMO_APPROVERS = "manager1,manager2"
#: The demo's FHIR namespace for referrers' fhir-r4-v1 files (``CALDICOTT_FHIR_NAMESPACE``; no production default).
DEMO_FHIR_NAMESPACE = "https://fhir.caldicott.invalid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_json(path: Path, make) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    data = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data


def home_secrets(home: Path) -> dict:
    """Fernet key and JWT secret of this Airflow home (made on first use, mode 0600)."""
    from cryptography.fernet import Fernet

    return _private_json(home / "secrets.json", lambda: {
        "fernet_key": Fernet.generate_key().decode(), "jwt_secret": secrets.token_urlsafe(32)})


def passwords(home: Path) -> dict[str, str]:
    """UI passwords of this Airflow home's users (made on first use, mode 0600; a user added later gets one)."""
    path = home / "passwords.json"
    known = _private_json(path, lambda: {u: secrets.token_urlsafe(12) for u in USERS})
    if set(USERS) - set(known):
        known = {**{u: secrets.token_urlsafe(12) for u in USERS}, **known}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(known, fh)
        tmp.replace(path)
    return known


def sqlite_conn(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path.resolve())})


def airflow_env(
    home: Path,
    *,
    records_db: Path | None = None,
    state_url: str | None = None,
    state_db: Path | None = None,
    output_dir: Path | None = None,
    api_port: int = 8080,
    metadata_url: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables for every Airflow process of one local deployment."""
    home = home.resolve()
    sec = home_secrets(home)
    passwords(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{home / 'airflow.db'}",
        # Demo and tests trigger runs themselves; the scheduler must not invent runs for "today".
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(PLUGINS), str(ROOT)]),
        # The demo's service managers answer held disclosures; production has no default (fail closed).
        "CALDICOTT_APPROVERS": DEMO_APPROVERS,
        # The stand-in peers' connections a demo disclosure may use (the referrers' SFTP stand-in doubles as a
        # requester's server); production lists its own, or none.
        "CALDICOTT_DISCLOSURE_CONNECTIONS": "caldicott_sftp_referrer,caldicott_smtp",
        # The demo's FHIR namespace for referrers' fhir-r4-v1 files (also set in this process, which checks the
        # files); production sets its own, there is no default (fail closed).
        "CALDICOTT_FHIR_NAMESPACE": os.environ.setdefault("CALDICOTT_FHIR_NAMESPACE", DEMO_FHIR_NAMESPACE),
        # The demo's sending service (synthetic name, ODS code, clinician) as the Variable caldicott_service;
        # production sets its own, there is no default (fail closed: gp_letters' send_batch fails naming it).
        **demo_service.airflow_env(),
    })
    if records_db is not None:
        env["AIRFLOW_CONN_CALDICOTT_RECORDS"] = sqlite_conn(records_db)
    if state_url is not None:
        env["AIRFLOW_CONN_CALDICOTT_STATE"] = json.dumps(
            {"conn_type": "sqlite", "extra": {"sqlalchemy_url": state_url}})
    elif state_db is not None:
        env["AIRFLOW_CONN_CALDICOTT_STATE"] = sqlite_conn(state_db)
    if output_dir is not None:
        env["CALDICOTT_OUTPUT_DIR"] = str(output_dir.resolve())
    env.update(extra or {})
    return env
